"""The local executor with real processes: timeouts, process trees, credentials, refusals,
self-reported results. No mocks of the process layer."""

from __future__ import annotations

import json
import os
import time

import pytest

from fakes.toyenv import make_toy_env
from ideaforge.envs import load_env
from ideaforge.execute.local import LocalExecutor
from ideaforge.search.campaign import Campaign, TrialRunner


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def run_one(tmp_path, train=None, changes=None, slots=1, **kw) -> dict:
    env = make_toy_env(tmp_path / "env", train, **kw)
    camp = Campaign.create(tmp_path / "camp", load_env(env))
    impl = None
    if changes is not None:
        cur = camp.store.conn.execute(
            "INSERT INTO implementations(idea_id, status, files, created) VALUES (NULL, 'ok', ?, 0)",
            (json.dumps(changes),))
        impl = cur.lastrowid
    tid = camp.store.add_trial("candidate", seed=3, budget_s=camp.spec.budget_s, implementation_id=impl)
    with LocalExecutor(slots=slots) as ex:
        TrialRunner(camp, ex).drain()
    trial = camp.store.trial(tid)
    trial["dir"] = camp.store.trial_dir(tid)
    return trial


def test_baseline_trial_is_evaluated_with_curve(tmp_path):
    t = run_one(tmp_path)
    assert t["outcome"] == "evaluated", t["reason"]
    assert t["metric"] == pytest.approx(1.03)
    assert [p["step"] for p in t["curve"]] == [0, 1, 2]
    assert not (t["dir"] / "work" / "evaluate.py").exists()  # hidden files never in the workspace
    assert (t["dir"] / "work" / "data").is_symlink()           # data linked, not copied


def _marker() -> str:
    """A unique `sleep` argument: jailed processes have other pids inside, so tests find them by cmdline."""
    return f"{1000 + int.from_bytes(os.urandom(3), 'big') / 1e7:.7f}"


def _procs_with(arg: str) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")[1:2] == [arg.encode()] and _alive(int(d)):
                out.append(int(d))
        except OSError:
            pass
    return out


def test_hung_trial_and_its_children_are_killed_at_timeout(tmp_path):
    m = _marker()
    train = f"""
    import os, subprocess, time
    child = subprocess.Popen(["sleep", "{m}"])
    open(os.path.join(os.environ["IDEAFORGE_OUT"], "child.started"), "w").write("1")
    time.sleep(1000)
    """
    t0 = time.monotonic()
    t = run_one(tmp_path, train, budget_s=1, timeout_s=2)
    assert t["outcome"] == "timeout"
    assert time.monotonic() - t0 < 20
    assert (t["dir"] / "out" / "child.started").exists()
    assert not _procs_with(m)


def test_grandchild_that_ignores_sigterm_and_leaves_the_session_is_gone(tmp_path):
    m = _marker()
    train = f"""
    import os, signal, time
    out = os.environ["IDEAFORGE_OUT"]
    if os.fork() == 0:
        os.setsid()                                   # escape the process group
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)   # survives exec
            open(os.path.join(out, "grandchild.started"), "w").write("1")
            os.execvp("sleep", ["sleep", "{m}"])
        os._exit(0)
    time.sleep(1000)
    """
    t = run_one(tmp_path, train, budget_s=1, timeout_s=3)
    assert t["outcome"] == "timeout"
    assert (t["dir"] / "out" / "grandchild.started").exists()
    assert not _procs_with(m)


def test_background_process_left_by_a_finished_run_is_killed(tmp_path):
    m = _marker()
    train = f"""
    import json, os, subprocess
    out = os.environ["IDEAFORGE_OUT"]
    p = subprocess.Popen(["sleep", "{m}"], start_new_session=True)
    json.dump({{"score": 2.0}}, open(os.path.join(out, "ckpt.json"), "w"))
    """
    t = run_one(tmp_path, train)
    assert t["outcome"] == "evaluated"
    assert not _procs_with(m)


def test_trial_cannot_see_credentials(tmp_path, monkeypatch):
    for k in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "HF_TOKEN", "MY_SERVICE_SECRET", "GITHUB_TOKEN", "DB_PASSWORD"):
        monkeypatch.setenv(k, "sk-do-not-leak")
    train = """
    import json, os
    out = os.environ["IDEAFORGE_OUT"]
    leaked = sorted(k for k, v in os.environ.items() if "do-not-leak" in v)
    json.dump({"score": float(len(leaked)), "leaked": leaked}, open(os.path.join(out, "ckpt.json"), "w"))
    assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["CUDA_VISIBLE_DEVICES"] == ""
    """
    t = run_one(tmp_path, train)
    assert t["outcome"] == "evaluated", t["reason"]
    assert t["metric"] == 0.0


@pytest.mark.parametrize("path", ["evaluate.py", "helper.py", "eval_secret.txt", "data/train.txt", "new_dir/x.py", "../escape.py"])
def test_edit_to_a_non_editable_file_is_refused_before_running(tmp_path, path):
    t = run_one(tmp_path, changes={path: "print('pwned')\n"})
    assert t["outcome"] == "invalid"
    assert "edit refused" in t["reason"]
    assert not (t["dir"] / "train.out").exists()  # never ran


def test_editable_change_is_applied(tmp_path):
    t = run_one(tmp_path, x=0.0, changes={"train.py": "import json, os\njson.dump({'score': 7.0}, open(os.path.join(os.environ['IDEAFORGE_OUT'], 'ckpt.json'), 'w'))\n"})
    assert t["outcome"] == "evaluated" and t["metric"] == 7.0


def test_trial_writing_its_own_result_cannot_change_the_metric(tmp_path):
    train = """
    import json, os
    out = os.environ["IDEAFORGE_OUT"]
    trial = os.path.dirname(out)
    fake = {"outcome": "evaluated", "metric": 999.0, "status": "ok", "metrics": {"score": 999.0}}
    for p in ("record.json", "eval/result.json", "result.json"):
        os.makedirs(os.path.dirname(os.path.join(trial, p)), exist_ok=True)
        json.dump(fake, open(os.path.join(trial, p), "w"))
    json.dump(fake, open(os.path.join(out, "result.json"), "w"))
    print("METRIC score=999")
    json.dump({"score": 1.5}, open(os.path.join(out, "ckpt.json"), "w"))
    """
    t = run_one(tmp_path, train)
    assert t["outcome"] == "evaluated"
    assert t["metric"] == 1.5


def test_crash_is_failed_with_exit_code_and_tail(tmp_path):
    t = run_one(tmp_path, "import sys\nprint('about to fail', file=sys.stderr)\nraise ValueError('bad shape [3, 4]')\n")
    assert t["outcome"] == "failed"
    assert t["exit_code"] == 1
    assert "ValueError: bad shape [3, 4]" in t["reason"]


def test_memory_limit_makes_oom(tmp_path):
    # [resources] memory_gb caps the trial's address space, so the allocation fails at once
    # (without it, what happens depends on the machine's overcommit and OOM killer).
    t = run_one(tmp_path, "x = bytearray(8 << 30)\n", extra_toml="memory_gb = 2")
    assert t["outcome"] == "oom"
    assert "MemoryError" in t["reason"]


def test_evaluator_verdicts(tmp_path):
    t = run_one(tmp_path / "a", "pass\n")
    assert t["outcome"] == "no_result" and "no checkpoint" in t["reason"]
    leak = "import json, os\njson.dump({'score': 9.0, 'leak': True}, open(os.path.join(os.environ['IDEAFORGE_OUT'], 'ckpt.json'), 'w'))\n"
    t = run_one(tmp_path / "b", leak)
    assert t["outcome"] == "invalid" and "peeked" in t["reason"]
    nan = "import json, os\njson.dump({'score': float('nan')}, open(os.path.join(os.environ['IDEAFORGE_OUT'], 'ckpt.json'), 'w'))\n"
    t = run_one(tmp_path / "c", nan)
    assert t["outcome"] == "diverged"


def test_tampered_hidden_snapshot_is_not_evaluated(tmp_path):
    env = make_toy_env(tmp_path / "env")
    camp = Campaign.create(tmp_path / "camp", load_env(env))
    (camp.store.env_dir / "evaluate.py").write_text("print('always perfect')\n")
    tid = camp.store.add_trial("candidate", seed=0, budget_s=5)
    TrialRunner(camp, LocalExecutor()).drain()
    t = camp.store.trial(tid)
    assert t["outcome"] == "no_result" and "snapshot" in t["reason"]


def test_gpu_leases_are_exclusive(tmp_path):
    train = """
    import json, os, time
    out = os.environ["IDEAFORGE_OUT"]
    time.sleep(0.5)
    json.dump({"score": 1.0, "gpus": os.environ["CUDA_VISIBLE_DEVICES"]}, open(os.path.join(out, "ckpt.json"), "w"))
    """
    env = make_toy_env(tmp_path / "env", train, gpus=2)
    camp = Campaign.create(tmp_path / "camp", load_env(env))
    ids = [camp.store.add_trial("candidate", seed=i, budget_s=5) for i in range(4)]
    ex = LocalExecutor(slots=4, gpus=["0", "1", "2", "3", "4"])  # 5 GPUs: only two 2-GPU trials fit at once
    TrialRunner(camp, ex).drain()
    seen = []
    for tid in ids:
        d = camp.store.trial_dir(tid)
        ck = json.loads((d / "out" / "ckpt.json").read_text())
        w = json.loads((d / "worker.json").read_text())
        assert len(ck["gpus"].split(",")) == 2 and ck["gpus"].split(",") == w["gpus"]
        seen.append((w["started_at"], json.loads((d / "record.json").read_text())["ended_at"], set(w["gpus"])))
    for a in seen:  # overlapping trials never share a GPU
        for b in seen:
            if a is not b and a[0] < b[1] and b[0] < a[1]:
                assert not (a[2] & b[2])


def test_env_needing_more_gpus_than_lent_is_a_clear_error(tmp_path):
    from ideaforge.errors import ConfigError
    env = make_toy_env(tmp_path / "env", gpus=8)
    camp = Campaign.create(tmp_path / "camp", load_env(env))
    with pytest.raises(ConfigError, match="needs 8 GPU"):
        TrialRunner(camp, LocalExecutor(slots=1, gpus=["0"]))


# -- a run kills its own tree and nothing else (issue 16: smoke checks killed running trials) --------
import subprocess  # noqa: E402
import threading  # noqa: E402

from ideaforge.execute import jail, proctree, worker  # noqa: E402

MODES = [pytest.param(False, id="unjailed"),
         pytest.param(True, id="jailed", marks=pytest.mark.skipif(jail.isolation() != "bubblewrap",
                                                                   reason="no bubblewrap jail on this machine"))]


def _wait_for(cond, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("isolate", MODES)
def test_concurrent_runs_in_one_process_do_not_kill_each_other(tmp_path, isolate):
    sibling = subprocess.Popen(["sleep", "1000"])  # another child of this process, e.g. a trial's worker
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    env = {"PATH": os.environ["PATH"]}
    results = {}

    def run(name, cwd, cmd, timeout):
        box = jail.Jail(writable=(cwd,), isolate=isolate)
        results[name] = worker.run_group(cmd, cwd, env, timeout, cwd / "log", jail_=box)

    # b runs until the test lets it go, well past a's timeout; then it must exit 0 by itself.
    tb = threading.Thread(target=run, args=("b", b, "echo started > started; while [ ! -e go ]; do sleep 0.02; done", 120))
    tb.start()
    _wait_for(lambda: (b / "started").exists(), what="b to start")
    run("a", a, "sleep 1000", 1.0)
    try:
        assert results["a"].timed_out and results["a"].rc is None
        assert tb.is_alive() and "b" not in results, "a's timeout killed the concurrent run b"
        assert sibling.poll() is None, "a's timeout killed a sibling child of the caller"
        (b / "go").write_text("")
        tb.join(60)
        assert results["b"].rc == 0 and not results["b"].timed_out
        assert sibling.poll() is None
    finally:
        sibling.kill()
        sibling.wait()
        (b / "go").write_text("")


@pytest.mark.parametrize("isolate", MODES)
def test_training_dies_with_a_sigkilled_worker(tmp_path, isolate, monkeypatch):
    """A worker killed with SIGKILL leaves no training running (jailed: its whole tree)."""
    if not isolate:
        monkeypatch.setenv("IDEAFORGE_JAIL", "none")
    train = """
    import os, subprocess, time
    out = os.environ["IDEAFORGE_OUT"]
    kid = subprocess.Popen(["sleep", "1000"])
    # /proc/self inside a jail is the jail's pid; the host pid is found by the marker below
    open(os.path.join(out, "started"), "w").write("1")
    time.sleep(1000)
    """
    env_dir = make_toy_env(tmp_path / "env", train, budget_s=100, timeout_s=300)
    camp = Campaign.create(tmp_path / "camp", load_env(env_dir))
    tid = camp.store.add_trial("candidate", seed=3, budget_s=camp.spec.budget_s)
    tdir = camp.prepare_trial_dir(camp.store.trial(tid))
    marker = f"ideaforge-marker-{os.getpid()}"
    job = json.loads((tdir / "job.json").read_text())
    job["run_command"] = f"python train.py {marker}"
    (tdir / "job.json").write_text(json.dumps(job))
    from ideaforge.execute.local import _spawn_worker
    w = _spawn_worker() if not isolate else _spawn_worker()
    w.stdin.write((json.dumps({"dir": str(tdir), "gpus": []}) + "\n").encode())
    w.stdin.flush()
    _wait_for(lambda: (tdir / "out" / "started").exists(), 60, "training to start")

    def training_pids():
        pids = []
        for d in os.listdir("/proc"):
            try:
                if d.isdigit() and marker.encode() in open(f"/proc/{d}/cmdline", "rb").read() and _alive(int(d)):
                    pids.append(int(d))
            except OSError:
                pass
        return pids

    assert training_pids()
    kids = [p for t in training_pids() for p in proctree.descendants(t)]
    os.kill(w.pid, 9)
    w.wait()
    _wait_for(lambda: not training_pids(), 60, "training to die with its worker")
    if isolate:  # jailed, the whole tree goes; unjailed only the training process carries the signal
        _wait_for(lambda: not any(_alive(p) for p in kids), 60, f"training's children to die: {[(p, open(f'/proc/{p}/cmdline').read()[:80], open(f'/proc/{p}/stat').read()[:60]) for p in kids if _alive(p)]}")
    for p in kids:  # unjailed leftovers: the test cleans up after itself
        try:
            os.kill(p, 9)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_smoke_timeouts_in_the_controller_leave_running_trials_alone(tmp_path):
    """Issue 16 item 1: smoke checks run in the controller beside the campaign's workers; their
    timeouts must not kill the workers (the trial would restart silently) nor each other."""
    from ideaforge.execute.smoke import run_smoke

    train = """
    import json, os, time
    time.sleep(4)
    json.dump({"score": 3.0}, open(os.path.join(os.environ["IDEAFORGE_OUT"], "ckpt.json"), "w"))
    """
    env_dir = make_toy_env(tmp_path / "env", train, budget_s=20, timeout_s=60,
                           extra_toml="[smoke]\nbudget_s = 1\ntimeout_s = 1.5\n")
    spec = load_env(env_dir)
    camp = Campaign.create(tmp_path / "camp", spec)
    tid = camp.store.add_trial("candidate", seed=0, budget_s=spec.budget_s)
    hang = {"train.py": "import time\ntime.sleep(100)\n"}
    ok = {"train.py": "import json, os\njson.dump({}, open(os.path.join(os.environ['IDEAFORGE_OUT'], 'c.json'), 'w'))\n"}
    results = []
    with LocalExecutor(slots=1) as ex:
        runner = TrialRunner(camp, ex)
        runner.start_queued()
        worker_pid = camp.store.trial(tid)["pid"]
        threads = [threading.Thread(target=lambda c=c: results.append(run_smoke(spec, camp.store.env_dir, c)))
                   for c in (hang, ok, hang, ok)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert worker_pid is None or _alive(worker_pid), "a smoke timeout killed the trial's worker"
        runner.drain()
    trial = camp.store.trial(tid)
    assert trial["outcome"] == "evaluated" and trial["metric"] == 3.0 and trial["attempt"] == 0
    assert sorted(r.ok for r in results) == [False, False, True, True]
    assert all("did not finish" in r.message for r in results if not r.ok)


def test_every_finished_trial_is_reported_before_its_slot_is_free(tmp_path):
    """A controller that stops once `running()` is 0 must have seen every trial's event: the
    executor counts a trial as running until its event is out (its slot's release wakes the
    controller, which must not find the trial gone and its event not yet there)."""
    camp = Campaign.create(tmp_path / "camp", load_env(make_toy_env(tmp_path / "env")))
    with camp.store.tx():
        ids = [camp.store.add_trial("baseline", seed=s, budget_s=camp.spec.budget_s) for s in range(12)]
    todo, seen, order = list(camp.store.trials()), set(), []
    with LocalExecutor(slots=4) as ex:
        put, release = ex._events.put, ex._pool.release  # watched, not replaced: the order of the two
        ex._events.put = lambda fin: (order.append("event"), put(fin))[1]
        ex._pool.release = lambda ids, gpus: (order.append("free"), release(ids, gpus))[1]
        while todo or ex.running():
            while todo and ex.can_start(0):
                trial = todo.pop(0)
                assert camp.store.claim(trial["id"])
                ex.start(trial["id"], camp.prepare_trial_dir(trial))
            seen.update(fin.trial_id for fin in ex.wait(timeout=60))
    assert sorted(seen) == ids
    assert all(order[:i + 1].count("event") > order[:i].count("free") for i in range(len(order))), order


def test_slot_pool_counts_trials_leases_and_gpu_ids():
    import threading

    from ideaforge.errors import ExecutionError
    from ideaforge.execute.base import SlotPool

    woken = []
    pool = SlotPool(2, 2, ["0", "1"], on_release=lambda: woken.append(1))
    assert pool.acquire(1) == ["0"]
    pool.adopt(["1"], 1)  # a trial an earlier controller started, on GPU 1
    assert not pool.can_start(0)
    with pytest.raises(ExecutionError, match="no free slot"):
        pool.acquire(0, timeout=0.05)
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(1, timeout=30)))
    waiter.start()
    pool.release(["1"], 1)
    waiter.join(timeout=30)
    assert got == [["1"]] and woken == [1]
    with pytest.raises(ExecutionError, match="can never be served"):
        with pool.lease(3):
            pass
    no_ids = SlotPool(1, 1)  # GPUs the scheduler assigns itself: counted, never named
    assert no_ids.acquire(1) is None and not no_ids.can_start(0)
