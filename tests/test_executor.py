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


def test_hung_trial_and_its_children_are_killed_at_timeout(tmp_path):
    train = """
    import os, subprocess, time
    child = subprocess.Popen(["sleep", "1000"])
    open(os.path.join(os.environ["IDEAFORGE_OUT"], "child.pid"), "w").write(str(child.pid))
    time.sleep(1000)
    """
    t0 = time.monotonic()
    t = run_one(tmp_path, train, budget_s=1, timeout_s=2)
    assert t["outcome"] == "timeout"
    assert time.monotonic() - t0 < 20
    child = int((t["dir"] / "out" / "child.pid").read_text())
    assert not _alive(child)


def test_grandchild_that_ignores_sigterm_and_leaves_the_session_is_gone(tmp_path):
    train = """
    import os, signal, time
    out = os.environ["IDEAFORGE_OUT"]
    if os.fork() == 0:
        os.setsid()                                   # escape the process group
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            open(os.path.join(out, "grandchild.pid"), "w").write(str(os.getpid()))
            while True:
                time.sleep(1)
        os._exit(0)
    time.sleep(1000)
    """
    t = run_one(tmp_path, train, budget_s=1, timeout_s=3)
    assert t["outcome"] == "timeout"
    pid = int((t["dir"] / "out" / "grandchild.pid").read_text())
    assert not _alive(pid)


def test_background_process_left_by_a_finished_run_is_killed(tmp_path):
    train = """
    import json, os, subprocess
    out = os.environ["IDEAFORGE_OUT"]
    p = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    open(os.path.join(out, "bg.pid"), "w").write(str(p.pid))
    json.dump({"score": 2.0}, open(os.path.join(out, "ckpt.json"), "w"))
    """
    t = run_one(tmp_path, train)
    assert t["outcome"] == "evaluated"
    assert not _alive(int((t["dir"] / "out" / "bg.pid").read_text()))


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
