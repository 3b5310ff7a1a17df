"""The Ray executor on a real local Ray cluster (127.0.0.1, 2 CPUs, 4 fake GPUs).

One cluster serves the whole module; it runs in a holder process (so the controller
tests can SIGKILL a controller and reconnect to the same cluster from another).
No mocks: real actors, real worker processes killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Ray >= 2.5x turns token authentication on for new local clusters; clients (this process,
# read when ray is imported, and the controllers it starts) then send ~/.ray/auth_token.
os.environ.setdefault("RAY_AUTH_MODE", "token")
ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a Ray cluster takes ~10 s to start; the module ~1 min on 2 cores

from fakes.toyenv import make_toy_env  # noqa: E402
from ideaforge.envs import load_env  # noqa: E402
from ideaforge.execute.ray import RayExecutor  # noqa: E402
from ideaforge.search.campaign import Campaign, TrialRunner  # noqa: E402

SECRETS = ("OPENAI_API_KEY", "HF_TOKEN", "MY_SERVICE_SECRET", "DB_PASSWORD")
HOLDER = """
import sys, ray
ray.init(address="local", num_cpus=2, resources={"fake_gpu": 4}, include_dashboard=False, log_to_driver=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
ray.shutdown()
"""


@pytest.fixture(scope="module")
def cluster():
    """The GCS address of a local cluster whose workers inherit (fake) credentials."""
    # These tests watch trial processes by host pid and count runs in files outside the trial,
    # which the jail forbids; the jail itself is tested in test_jail.py and test_attacks.py.
    env = dict(os.environ, IDEAFORGE_JAIL="none", **{k: "sk-do-not-leak" for k in SECRETS})
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=env)
    address = holder.stdout.readline().strip()
    assert address, "the Ray cluster did not start"
    ray.init(address=address, log_to_driver=False)
    try:
        yield address
    finally:
        ray.shutdown()
        holder.stdin.close()
        try:
            holder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _no_actors_left(timeout: float = 10) -> None:
    """Every worker actor is gone (kills are asynchronous: give them a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == "ideaforge"]
        if not names or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not names, f"actors left behind: {names}"


def _campaign(tmp_path, train, n, **kw) -> Campaign:
    camp = Campaign.create(tmp_path / "camp", load_env(make_toy_env(tmp_path / "env", train, **kw)))
    with camp.store.tx():
        for seed in range(n):
            camp.store.add_trial("baseline", seed=seed, budget_s=camp.spec.budget_s)
    return camp


def _wait_lines(path: Path, n: int, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {n} lines")


def test_trials_run_remotely_with_trusted_evaluation_and_no_credentials(cluster, tmp_path):
    train = """
    import json, os
    leaked = sorted(k for k, v in os.environ.items() if "do-not-leak" in v)
    print("FILES", json.dumps(sorted(os.listdir("."))), "LEAKED", json.dumps(leaked))
    print("DATA", open("data/train.txt").read().strip())       # data: a link to the same path, not shipped
    print("METRIC step=0 loss=0.5")
    json.dump({"score": 2.0 + int(os.environ["IDEAFORGE_SEED"])}, open(os.path.join(os.environ["IDEAFORGE_OUT"], "ckpt.json"), "w"))
    """
    camp = _campaign(tmp_path, train, 3)
    with RayExecutor(cluster) as ex:
        TrialRunner(camp, ex).drain()
    # The workers do hold the credentials: only the trial's environment is stripped.
    assert ray.get(ray.remote(lambda: os.environ.get("HF_TOKEN")).remote()) == "sk-do-not-leak"
    shas = set()
    for t in camp.store.trials():
        assert t["outcome"] == "evaluated", t["reason"]
        assert t["metric"] == 2.0 + t["seed"]
        assert t["curve"] == [{"step": 0.0, "loss": 0.5}]
        d = camp.store.trial_dir(t["id"])
        out = (d / "train.out").read_text()  # logs come back into the campaign's trial directory
        files = json.loads(out.split("FILES ")[1].split(" LEAKED")[0])
        assert "evaluate.py" not in files and "eval_secret.txt" not in files
        assert "train.py" in files and "helper.py" in files
        assert json.loads(out.split("LEAKED ")[1].splitlines()[0]) == []
        assert "DATA training data" in out
        record = json.loads((d / "record.json").read_text())
        assert record["outcome"] == "evaluated" and "retried" not in record
        shas.add(json.loads((d / "ray.json").read_text())["workspace_sha256"])
    assert len(shas) == 1  # three seeds of one workspace: one shipped object
    _no_actors_left()


def test_one_and_two_gpu_trials_share_the_queue_without_oversubscription(cluster, tmp_path):
    train = """
    import os, time
    print("GPUS", os.environ["CUDA_VISIBLE_DEVICES"], os.environ["IDEAFORGE_GPUS"])
    time.sleep(0.6)
    open(os.path.join(os.environ["IDEAFORGE_OUT"], "ckpt.json"), "w").write('{"score": 1.0}')
    """
    needs = [2, 1, 1, 2, 1, 2, 1, 1]
    camp = _campaign(tmp_path, train, len(needs), gpus=1)
    trials = camp.store.trials()
    with RayExecutor(cluster, slots=4, cpus_per_trial=0, gpu_resource="fake_gpu") as ex:
        assert ex.total_gpus == 4 and ex.fits_ever(4) and not ex.fits_ever(5)
        todo = list(zip(trials, needs))
        done: dict[int, object] = {}
        while todo or ex.running():
            while todo and ex.can_start(todo[0][1]):
                trial, g = todo.pop(0)
                assert camp.store.claim(trial["id"])
                ex.start(trial["id"], camp.prepare_trial_dir(trial), g)
            for fin in ex.wait(timeout=30):
                done[fin.trial_id] = fin
    spans = []
    for trial, g in zip(trials, needs):
        d = camp.store.trial_dir(trial["id"])
        record = json.loads((d / "record.json").read_text())
        assert record["outcome"] == "evaluated", record.get("reason")
        ids, count = (d / "train.out").read_text().split("GPUS ")[1].split()
        assert len(ids.split(",")) == g == int(count) and ids.split(",") == done[trial["id"]].gpus
        started = json.loads((d / "worker.json").read_text())["started_at"]
        spans.append((started, record["ended_at"], set(ids.split(",")), g))
    most = 0
    for a in spans:  # the busiest moments are trial starts: what ran then fits, on distinct ids
        now = [b for b in spans if b[0] <= a[0] < b[1]]
        assert sum(b[3] for b in now) <= 4
        assert len(set().union(*(b[2] for b in now))) == sum(b[3] for b in now), "two running trials share a GPU"
        most = max(most, len(now))
    assert most >= 2  # it did run trials side by side


def test_killed_ray_worker_is_retried_once_and_recorded(cluster, tmp_path):
    runs = tmp_path / "runs.log"
    train = f"""
    import json, os, time
    chain, pid = [], os.getpid()
    while pid > 1:
        chain.append(pid)
        pid = int(open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[1])
    with open({str(runs)!r}, "a") as f:
        f.write(json.dumps(chain) + "\\n")
    time.sleep(1.5)
    json.dump({{"score": 5.0}}, open(os.path.join(os.environ["IDEAFORGE_OUT"], "ckpt.json"), "w"))
    """
    camp = _campaign(tmp_path, train, 1)
    with RayExecutor(cluster) as ex:
        runner = TrialRunner(camp, ex)
        runner.start_queued()
        first = json.loads(_wait_lines(runs, 1)[0])
        actor_pid = next(p for p in first if Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"ray::"))
        os.kill(actor_pid, signal.SIGKILL)
        while runner.pending() != (0, 0):
            runner.step(timeout=30)
    t = camp.store.trials()[0]
    assert t["outcome"] == "evaluated" and t["metric"] == 5.0, t["reason"]
    record = json.loads((camp.store.trial_dir(t["id"]) / "record.json").read_text())
    assert record["retried"] == 1
    assert len(runs.read_text().splitlines()) == 2
    assert not _alive(first[0]), "the first attempt's training outlived its worker"


def test_stop_all_kills_the_trial_tree_on_the_node(cluster, tmp_path):
    runs = tmp_path / "runs.log"
    train = f"""
    import os, subprocess, time
    child = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    open({str(runs)!r}, "a").write(f"{{os.getpid()}} {{child.pid}}\\n")
    time.sleep(1000)
    """
    camp = _campaign(tmp_path, train, 1, timeout_s=120)
    ex = RayExecutor(cluster)
    runner = TrialRunner(camp, ex)
    runner.start_queued()
    pids = [int(p) for p in _wait_lines(runs, 1)[0].split()]
    runner.stop()
    assert not any(_alive(p) for p in pids)
    assert [t["status"] for t in camp.store.trials()] == ["queued"]
    _no_actors_left()


CONTROLLER = """
import sys
from ideaforge.execute.ray import RayExecutor
from ideaforge.search.campaign import Campaign, TrialRunner
camp = Campaign.open(sys.argv[1])
with RayExecutor(sys.argv[2]) as ex:
    TrialRunner(camp, ex, lambda kind, info: print(kind, info.get("trial"), flush=True)).drain()
"""


def test_killed_controller_reattaches_instead_of_rerunning(cluster, tmp_path):
    runs = tmp_path / "runs.log"
    train = f"""
    import json, os, time
    seed = int(os.environ["IDEAFORGE_SEED"])
    with open({str(runs)!r}, "a") as f:
        f.write(f"{{seed}}\\n")
    time.sleep(0.5 + 3 * seed)   # seed 0 ends while no controller runs; seed 1 outlives the restart
    json.dump({{"score": 1.0 + seed}}, open(os.path.join(os.environ["IDEAFORGE_OUT"], "ckpt.json"), "w"))
    """
    camp = _campaign(tmp_path, train, 2)
    args = [sys.executable, "-c", CONTROLLER, str(camp.root), cluster]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_lines(runs, 2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    time.sleep(1.5)
    second = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "attached 1" in second.stdout and "attached 2" in second.stdout, second.stdout
    assert "started" not in second.stdout
    trials = camp.store.trials()
    assert [(t["outcome"], t["metric"]) for t in trials] == [("evaluated", 1.0), ("evaluated", 2.0)]
    assert sorted(runs.read_text().split()) == ["0", "1"], "a trial ran twice"
    _no_actors_left()


TIMED = """
import sys, time
from ideaforge.execute.ray import RayExecutor
from ideaforge.search.campaign import Campaign, TrialRunner
camp = Campaign.open(sys.argv[1])
slots = int(sys.argv[3]) if len(sys.argv) > 3 else None
with RayExecutor(sys.argv[2], slots=slots) as ex:
    print("OWNER", ex.owner, flush=True)
    t0 = time.monotonic()
    TrialRunner(camp, ex, lambda kind, info: print(kind, info.get("trial"), round(time.monotonic() - t0, 2),
                                                   flush=True)).drain()
    print("drained", round(time.monotonic() - t0, 2), flush=True)
    if len(sys.argv) > 4:
        sys.stdin.read()  # hold the idle actors until killed
"""


def _owner_line(proc) -> str:
    while not (line := proc.stdout.readline()).startswith("OWNER "):
        assert line, "the controller ended before it said who it is"
    return line.split()[1]


def _actors_of(owner: str) -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == "ideaforge" and a["name"].endswith("@" + owner)]


def _wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_resume_after_a_controller_sigkill_reclaims_its_actors_and_reattaches_its_trials(cluster, tmp_path):
    """Controller A holds 3 slots on a 2-CPU cluster: two trials run, the third waits in an actor
    Ray cannot place. A is SIGKILLed; B resumes: it re-attaches (never re-runs) the two running
    trials, kills the unplaceable actor at once instead of waiting on it, and leaves no actor of A."""
    runs = tmp_path / "runs.log"
    train = f"""
    import json, os, time
    seed = int(os.environ["IDEAFORGE_SEED"])
    with open({str(runs)!r}, "a") as f:
        f.write(f"{{seed}}\\n")
    time.sleep(3.0 if seed < 2 else 0.2)
    json.dump({{"score": 1.0 + seed}}, open(os.path.join(os.environ["IDEAFORGE_OUT"], "ckpt.json"), "w"))
    """
    camp = _campaign(tmp_path, train, 4)
    first = subprocess.Popen([sys.executable, "-c", TIMED, str(camp.root), cluster, "3"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    owner = _owner_line(first)
    _wait_lines(runs, 2)
    _wait_until(lambda: len(camp.store.trials(status="running")) == 3, 30, "A to hand out three trials")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert len(_actors_of(owner)) == 3  # two running trials, one waiting for a CPU
    second = subprocess.run([sys.executable, "-c", TIMED, str(camp.root), cluster], capture_output=True, text=True,
                            timeout=120)
    out = second.stdout
    assert second.returncode == 0, out + second.stderr
    assert "attached 1" in out and "attached 2" in out, out
    requeued = [float(line.split()[2]) for line in out.splitlines() if line.startswith("requeued 3 ")]
    assert requeued and requeued[0] < 10, f"the unplaceable actor was waited on:\n{out}"
    trials = camp.store.trials()
    assert [(t["outcome"], t["metric"]) for t in trials] == [("evaluated", 1.0 + s) for s in range(4)]
    assert sorted(runs.read_text().split()) == ["0", "1", "2", "3"], "a trial ran twice"
    _wait_until(lambda: not _actors_of(owner), 10, "the dead controller's actors to go")
    _no_actors_left()


def test_idle_actors_exit_when_their_controller_dies(cluster, tmp_path):
    camp = _campaign(tmp_path, """
    import json, os
    json.dump({"score": 1.0}, open(os.path.join(os.environ["IDEAFORGE_OUT"], "ckpt.json"), "w"))
    """, 2)
    proc = subprocess.Popen([sys.executable, "-c", TIMED, str(camp.root), cluster, "2", "hold"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        owner = _owner_line(proc)
        while not (line := proc.stdout.readline()).startswith("drained"):
            assert line, "the controller ended early"
        assert _actors_of(owner), "the drained controller keeps its idle actors for reuse"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # No controller resumes: the actors see their owner's process gone and exit by themselves.
        _wait_until(lambda: not _actors_of(owner), 15, "idle actors of a dead controller to exit")
    finally:
        proc.kill()
        proc.wait()


def test_importing_ideaforge_does_not_import_ray():
    code = "import sys, ideaforge.execute.ray, ideaforge.search.campaign; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_ray_choice_is_saved_in_the_campaign_and_leases_take_slots(cluster, tmp_path):
    camp = Campaign.create(tmp_path / "camp", load_env(make_toy_env(tmp_path / "env")))
    with camp.make_executor("ray", address=cluster, slots=1) as ex:
        assert isinstance(ex, RayExecutor) and ex.can_start(0)
        with ex.lease() as ids:
            assert ids == [] and not ex.can_start(0)
        assert ex.can_start(0)
    again = Campaign.open(camp.root)
    assert again.store.get_meta("executor") == {"name": "ray", "slots": 1, "address": cluster}
    with again.make_executor() as ex:  # `ideaforge resume DIR`: no --executor, no --ray-address
        assert isinstance(ex, RayExecutor) and ex.slots == 1
