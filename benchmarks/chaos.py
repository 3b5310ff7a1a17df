"""A campaign under faults against its uninterrupted twin: nothing lost, nothing run twice.

    python benchmarks/chaos.py                 # 10 controller kills, seed 0
    python benchmarks/chaos.py --kills 14 --seed 3 --keep /tmp/chaos
    python benchmarks/chaos.py --kills 10 --seed 2 --executor ray   # on a local 2-CPU Ray cluster

Runs a small offline campaign on a toy environment (a noisy quadratic; a trial trains
for ~0.75 s) twice: once uninterrupted (the twin), once while the controller is SIGKILLed
at random moments and resumed with `ideaforge resume`. The faulted run also gets:
  - a kill as soon as the confirmation phase has started, and one while its first
    confirm trial runs,
  - two kills in quick succession (the second a fraction of a second after the resume),
  - a worker SIGKILLed in the middle of a trial,
  - two controllers resumed at the same moment.
Then it resumes once more to the end and compares the two databases:

  lost        trials of the twin (idea title, role, seed) missing here, or never done
  duplicated  the same (idea, role, seed) trial, the same idea or implementation recorded twice, or
              a trial whose training ran to its end twice (where a jail lets the toy log it)
  stuck       trials not done, ideas left new/implementing, or a campaign not finished
  orphans     processes still running in the campaign directory after the last controller left
              (with Ray: also processes in the campaign's node scratch, and worker actors left)
  leaderboard each idea's mean (and n) and the confirmed set, compared with the twin's

and prints `lost 0, duplicated 0, stuck 0, orphans 0, same leaderboard` when all is well,
then the faulted run's wall time over the twin's.

With `--executor ray` both campaigns run on a local Ray cluster this script starts (2 CPUs,
its own process, stopped at the end); `resume` is given no executor flag (the campaign saved
its choice), and the worker killed mid-trial is the Ray actor process running a trial.
Exit status: 0 when all is well, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
TRAIN = """
import json, math, os, random, time
LR = 0.1  # learning rate
WIDTH = 8  # channels
DEPTH = 2  # layers
seed = int(os.environ["IDEAFORGE_SEED"])
for step in range(5):
    time.sleep(0.15)
    print(f"METRIC step={step} loss={1 / (step + 1)}", flush=True)
noise = random.Random(seed).gauss(0, 0.05)
score = -math.log2(LR / 0.4) ** 2 - math.log2(WIDTH / 32) ** 2 - (DEPTH - 4) ** 2 + noise
json.dump({"score": score}, open(os.path.join(os.environ["IDEAFORGE_OUT"], "ckpt.json"), "w"))
try:  # one line per finished training, named by its trial directory (impossible, and skipped, in a jail)
    with open(RUNS_LOG, "a") as f:
        f.write(os.path.basename(os.path.dirname(os.getcwd())) + "\\n")
except OSError:
    pass
"""
EVALUATE = """
import json, os
ck = json.load(open(os.path.join(os.environ["IDEAFORGE_OUT"], "ckpt.json")))
json.dump({"status": "ok", "metrics": {"score": ck["score"]}}, open(os.environ["IDEAFORGE_RESULT"], "w"))
"""
TOML = """
[env]
name = "chaos-quadratic"
description = "Maximise a noisy quadratic score of three settings."
[files]
editable = ["train.py"]
hidden = ["evaluate.py"]
[run]
command = "python train.py"
budget_s = 20
timeout_s = 60
[evaluate]
command = "python evaluate.py"
[metric]
name = "score"
goal = "max"
"""
RUN_ARGS = ["--epochs", "4", "--ideas", "4", "--baseline-seeds", "2", "--confirm-top", "2", "--confirm-seeds", "3",
            "--slots", "2", "--offline"]
RAY_SCRATCH = "/tmp/ideaforge-ray"  # the Ray executor's default node-local scratch
RAY_HOLDER = """
import sys, ray
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
ray.shutdown()
"""
EXECUTOR: list[str] = []  # `run`'s executor flags (set by main for --executor ray)


def make_env(root: Path, runs_log: Path) -> Path:
    root.mkdir(parents=True)
    (root / "train.py").write_text(textwrap.dedent(TRAIN).replace("RUNS_LOG", repr(str(runs_log))))
    (root / "evaluate.py").write_text(textwrap.dedent(EVALUATE))
    (root / "ideaforge.toml").write_text(TOML)
    return root


def controller(args: list[str]) -> subprocess.Popen:
    """`ideaforge ARGS` as its own process (the one the faults kill)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "ideaforge.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def resume(camp: Path) -> subprocess.Popen:
    """What an operator does after a crash: resume, or start again if the campaign was never recorded
    (a controller killed while it created the campaign)."""
    if not query(camp, "SELECT 1 FROM meta WHERE key='created'"):
        return controller(["run", "--env", str(camp.parent / "env"), "--dir", str(camp), *RUN_ARGS, *EXECUTOR])
    return controller(["resume", str(camp), "--slots", "2"])


def query(camp: Path, sql: str, args: tuple = ()) -> list[tuple]:
    db = camp / "campaign.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # not migrated yet
        return []
    finally:
        conn.close()


def wait_for(proc: subprocess.Popen, camp: Path, sql: str, timeout: float = 120) -> bool:
    """Poll until `sql` returns a row; False if the controller ended first."""
    deadline = time.monotonic() + timeout
    while not query(camp, sql):
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.02)  # the polling interval of a condition
    return True


def kill(proc: subprocess.Popen) -> bool:
    """SIGKILL a controller still running; True when it was."""
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def faulted_run(camp: Path, kills: int, rng: random.Random, log) -> int:
    """The campaign under faults; returns how many times a controller was SIGKILLed."""
    proc = resume(camp)  # nothing recorded yet: `run`
    done, confirm_hit = 0, False
    events = {2: "quick succession", 4: "worker killed mid-trial", 6: "two controllers at once"}
    while done < kills and proc.poll() is None:
        if not confirm_hit and query(camp, "SELECT 1 FROM trials WHERE role='confirm'"):
            proc, n = confirmation_kills(proc, camp, log, done)
            done, confirm_hit = done + n, True
            continue
        try:
            proc.wait(timeout=rng.uniform(0.3, 1.5))
            break
        except subprocess.TimeoutExpired:
            pass
        done += kill(proc)
        log(f"kill {done}: controller SIGKILLed at a random moment")
        event = events.get(done)
        if event == "quick succession":
            proc = resume(camp)
            time.sleep(rng.uniform(0.05, 0.3))
            done += kill(proc)
            log(f"kill {done}: again, {event}")
        elif event == "worker killed mid-trial":
            proc = resume(camp)
            sql = "SELECT pid FROM trials WHERE status='running' AND pid IS NOT NULL"
            pid = None
            if EXECUTOR:  # Ray: the actor process whose trial trains in the node scratch
                deadline = time.monotonic() + 120
                while pid is None and proc.poll() is None and time.monotonic() < deadline:
                    pid = ray_actor_training()
                    time.sleep(0.02)  # the polling interval of a condition
            elif wait_for(proc, camp, sql):
                pid = query(camp, sql)[0][0]
            if pid:  # never 0: os.kill(0) would signal this script's own process group
                try:
                    os.kill(pid, signal.SIGKILL)
                    log(f"worker {pid} SIGKILLed mid-trial")
                except ProcessLookupError:
                    log("the running trial's worker had already ended")
            continue
        elif event == "two controllers at once":
            other = resume(camp)
            proc = resume(camp)
            log("two controllers resumed at once")
            try:
                other.wait(timeout=rng.uniform(1.0, 3.0))
            except subprocess.TimeoutExpired:
                done += kill(other)
                log(f"kill {done}: one of the two controllers")
            continue
        proc = resume(camp)
    if not confirm_hit:
        proc, n = confirmation_kills(proc if proc.poll() is None else resume(camp), camp, log, done)
        done += n
    if proc.wait(timeout=600) != 0 or not query(camp, "SELECT 1 FROM meta WHERE key='finished' AND value='true'"):
        proc = resume(camp)  # a resume refused beside another controller ends at once: one more, alone
        proc.wait(timeout=600)
    log(f"{done} controller kills in all")
    return done


def confirmation_kills(proc: subprocess.Popen, camp: Path, log, done: int) -> tuple[subprocess.Popen, int]:
    """Kill as soon as the confirmation phase starts, and again while a confirm trial runs."""
    n = 0
    for sql, what in (("SELECT 1 FROM trials WHERE role='confirm'", "the confirmation phase started"),
                      ("SELECT 1 FROM trials WHERE role='confirm' AND status='running'", "a confirm trial runs")):
        if wait_for(proc, camp, sql) and kill(proc):
            n += 1
            log(f"kill {done + n}: {what}")
        proc = resume(camp)
    return proc, n


def ray_scratch_procs(camp: Path) -> list[int]:
    """Processes working in this campaign's trials in the Ray node scratch."""
    sys.path.insert(0, str(SRC))
    from ideaforge.execute.ray.packing import campaign_key

    prefix = os.path.join(RAY_SCRATCH, f"ideaforge-trial-{campaign_key(camp / 'trials' / '00000')}-")
    found = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and os.readlink(p / "cwd").startswith(prefix):
                found.append(int(p.name))
        except OSError:
            continue
    return found


def ray_actor_training() -> int | None:
    """The pid of a Ray worker actor process (`ray::TrialActor`) with a trial running under it
    (found by its children: a jailed trial's working directory is not visible from here)."""
    actors, parents = set(), set()
    for p in Path("/proc").iterdir():
        try:
            if not p.name.isdigit():
                continue
            if (p / "cmdline").read_bytes().startswith(b"ray::TrialActor"):
                actors.add(int(p.name))
            parents.add(int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]))
        except (OSError, ValueError):
            continue
    return min(actors & parents, default=None)


def ray_leftovers(address: str, camps: list[Path]) -> list[str]:
    """Worker actors still alive on the cluster, and processes in the campaigns' node scratch,
    once the last controller left (actor kills are asynchronous: wait a little for them)."""
    import ray

    ray.init(address=address, namespace="ideaforge", log_to_driver=False)
    try:
        deadline = time.monotonic() + 20
        while True:
            left = [f"actor {a['name']}" for a in ray.util.list_named_actors(all_namespaces=True)
                    if a["namespace"] == "ideaforge"]
            left += [f"{pid}: in the Ray scratch" for camp in camps for pid in ray_scratch_procs(camp)]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)  # the polling interval of a condition
    finally:
        ray.shutdown()


def leaderboard(camp: Path) -> tuple[list, list]:
    sys.path.insert(0, str(SRC))
    from ideaforge.stats import leaderboard as board
    from ideaforge.store import Store

    store = Store.open_readonly(camp)
    try:
        _, rows = board(store, "max")
        confirmed = sorted(t for (t,) in store.execute(
            "SELECT DISTINCT i.title FROM trials t JOIN implementations m ON t.implementation_id = m.id "
            "JOIN ideas i ON m.idea_id = i.id WHERE t.role = 'confirm'").fetchall())
        return [(r["title"], round(r["stats"].mean, 9) if r["stats"] else None, r["stats"].n if r["stats"] else 0)
                for r in rows], confirmed
    finally:
        store.close()


def trial_keys(camp: Path) -> list[tuple]:
    return query(camp, "SELECT COALESCE(i.title, '(baseline)'), t.role, t.seed, t.status FROM trials t "
                       "LEFT JOIN implementations m ON t.implementation_id = m.id LEFT JOIN ideas i ON m.idea_id = i.id")


def orphans(camp: Path) -> list[str]:
    """Processes whose working directory or command line is inside the campaign directory."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(p / "cwd")
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(str(camp)) or str(camp) in cmd:
            found.append(f"{p.name}: {cmd.strip()[:120]}")
    return found


def trained_twice(camp: Path, runs_log: Path) -> int | None:
    """Trials of `camp` whose training ran to its end more than once; None when not observable."""
    if not runs_log.exists():
        return None
    names = [line.split()[0] for line in runs_log.read_text().splitlines() if line.strip()]
    ours = {f"{tid:05d}" for (tid,) in query(camp, "SELECT id FROM trials")}
    return sum(n - 1 for name in set(names) if name in ours for n in [names.count(name)])


def compare(twin: Path, camp: Path, runs_log: Path) -> dict:
    want, got = trial_keys(twin), trial_keys(camp)
    keys = [k[:3] for k in got]
    lost = len({k[:3] for k in want} - set(keys)) + sum(k[3] != "done" for k in got)
    twice = trained_twice(camp, runs_log)
    duplicated = (len(keys) - len(set(keys)) + (twice or 0)
                  + sum(n - 1 for (n,) in query(camp, "SELECT COUNT(*) FROM ideas GROUP BY title"))
                  + sum(n - 1 for (n,) in query(camp, "SELECT COUNT(*) FROM implementations GROUP BY idea_id")))
    stuck = (sum(k[3] != "done" for k in got)
             + query(camp, "SELECT COUNT(*) FROM ideas WHERE status IN ('new', 'implementing')")[0][0]
             + (0 if query(camp, "SELECT 1 FROM meta WHERE key='finished' AND value='true'") else 1))
    integrity = query(camp, "PRAGMA integrity_check")
    return {"lost": lost, "duplicated": duplicated, "stuck": stuck, "orphans": orphans(camp),
            "same": leaderboard(twin) == leaderboard(camp), "integrity": integrity == [("ok",)],
            "trials": (len(want), len(got)), "trained_twice": twice}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=10, help="controller kills at random moments (the confirmation "
                                                          "phase adds two more)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill schedule")
    ap.add_argument("--keep", help="work here and keep the campaigns (default: a temporary directory)")
    ap.add_argument("--epochs", type=int, default=4, help="search epochs of both campaigns (more: more moments to kill)")
    ap.add_argument("--executor", choices=["local", "ray"], default="local",
                    help="ray: both campaigns run on a local 2-CPU Ray cluster started here")
    args = ap.parse_args()
    RUN_ARGS[RUN_ARGS.index("--epochs") + 1] = str(args.epochs)
    holder = None
    if args.executor == "ray":
        # Ray >= 2.5x turns token authentication on for new local clusters; clients send ~/.ray/auth_token.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        holder = subprocess.Popen([sys.executable, "-c", RAY_HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        address = holder.stdout.readline().strip()
        if not address:
            print("the local Ray cluster did not start", file=sys.stderr)
            return 1
        EXECUTOR.extend(["--executor", "ray", "--ray-address", address])
        print(f"Ray cluster at {address} (2 CPUs)")
    try:
        return chaos(args, holder and address)
    finally:
        if holder is not None:
            holder.stdin.close()
            try:
                holder.wait(timeout=60)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()


def chaos(args, ray_address: str | None) -> int:
    with tempfile.TemporaryDirectory(prefix="ideaforge-chaos-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        runs_log = work / "runs.log"
        env = make_env(work / "env", runs_log)
        t0 = time.monotonic()
        twin = controller(["run", "--env", str(env), "--dir", str(work / "twin"), *RUN_ARGS, *EXECUTOR])
        assert twin.wait(timeout=900) == 0, "the uninterrupted twin failed"
        twin_s = time.monotonic() - t0
        print(f"twin: {twin_s:.0f} s uninterrupted")
        runs_log.unlink(missing_ok=True)  # count the faulted run's trainings only
        t0 = time.monotonic()
        kills = faulted_run(work / "chaos", args.kills, random.Random(args.seed), lambda m: print("  " + m))
        faulted_s = time.monotonic() - t0
        print(f"faulted: {faulted_s:.0f} s")
        r = compare(work / "twin", work / "chaos", runs_log)
        if ray_address:
            r["orphans"] += ray_leftovers(ray_address, [work / "twin", work / "chaos"])
        for o in r["orphans"]:
            print(f"  orphan: {o}")
        twice = ("not observable (trials are jailed)" if r["trained_twice"] is None
                 else f"{r['trained_twice']} trial(s) trained to the end twice")
        print(f"trials: twin {r['trials'][0]}, faulted {r['trials'][1]}; integrity_check "
              f"{'ok' if r['integrity'] else 'FAILED'}; {twice}")
        print(f"lost {r['lost']}, duplicated {r['duplicated']}, stuck {r['stuck']}, orphans {len(r['orphans'])}, "
              f"{'same leaderboard' if r['same'] else 'different leaderboard'}")
        ok = r["same"] and r["integrity"] and not (r["lost"] or r["duplicated"] or r["stuck"] or r["orphans"])
        if kills < args.kills:
            print(f"note: the campaign finished after {kills} of {args.kills} kills; use a longer one")
        print(f"executor {args.executor}: faulted wall / twin wall = {faulted_s / twin_s:.2f} "
              f"({faulted_s:.0f} s / {twin_s:.0f} s, {kills} controller kills)")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
