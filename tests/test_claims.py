"""One controller per campaign, atomic claims, capped re-queues, and smoke runs inside --slots.

Real processes throughout: controllers started as `ideaforge` commands, workers killed
with SIGKILL, smoke runs that are real subprocesses. Waits are on conditions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from fakes.toyenv import make_toy_env
from ideaforge.envs import load_env
from ideaforge.errors import StoreError
from ideaforge.execute.local import LocalExecutor
from ideaforge.report.data import load_campaign
from ideaforge.report.text import status_lines
from ideaforge.search.campaign import Campaign, TrialRunner
from ideaforge.store import Store


def wait_for(cond, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (got := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return got


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- one controller per campaign ------------------------------------------------------------------
def test_a_second_controller_is_refused_naming_the_holder(tmp_path):
    camp = Campaign.create(tmp_path / "camp", load_env(make_toy_env(tmp_path / "env")))
    camp.lock()
    other = Campaign.open(camp.root)
    with pytest.raises(StoreError, match=rf"another controller \(pid {os.getpid()}\)"):
        other.lock()
    with pytest.raises(StoreError, match="another controller"):
        with LocalExecutor(slots=1) as ex:
            TrialRunner(other, ex)
    camp.close()  # the lock goes with its holder ...
    other.lock()  # ... and the next controller gets it
    other.close()


def test_the_claim_is_atomic(tmp_path):
    store = Store.create_or_open(tmp_path / "s")
    tid = store.add_trial("baseline", seed=0, budget_s=1)
    assert store.claim(tid)
    assert not store.claim(tid)  # already running: a second controller may not take it
    store.requeue(tid)
    assert store.claim(tid)


SLOW = """
import json, os, time
time.sleep(1.0)
json.dump({"score": 1.0 + int(os.environ["IDEAFORGE_SEED"])}, open(os.path.join(os.environ["IDEAFORGE_OUT"], "ckpt.json"), "w"))
"""


@pytest.mark.slow
def test_two_controllers_started_at_once_one_is_refused(tmp_path):
    """Two `resume`s of one campaign at the same moment: one runs it, the other is refused
    with the holder's pid, and every trial runs exactly once."""
    env = make_toy_env(tmp_path / "env", SLOW)
    camp = tmp_path / "camp"
    made = subprocess.run([sys.executable, "-m", "ideaforge.cli", "baseline", str(env), "--seeds", "4",
                           "--slots", "1", "--dir", str(camp)], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    store = Store.create_or_open(camp)
    with store.tx():  # back to queued, as if never run
        store.conn.execute("UPDATE trials SET status='queued', outcome=NULL, metric=NULL")
    store.close()
    cmd = [sys.executable, "-m", "ideaforge.cli", "baseline", "--resume", str(camp), "--slots", "2"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    refused = outs[[p.returncode for p in procs].index(2)]
    winner = procs[[p.returncode for p in procs].index(0)]
    assert f"another controller (pid {winner.pid})" in refused, refused
    trials = Store.open_readonly(camp).trials()
    assert all(t["status"] == "done" and t["outcome"] == "evaluated" for t in trials), trials
    assert all(t["attempt"] == 0 and t["requeues"] == 0 for t in trials), trials


# -- re-queues: a live controller notices a dead worker, and the cap ends the loop ------------------
LINGER = """
import os, time
parent = os.getppid()
for _ in range(200):   # at most 10 s; ends early when the worker above it is gone
    if os.getppid() != parent:
        break
    time.sleep(0.05)
"""


def test_a_trial_whose_worker_dies_every_time_ends_failed_after_the_cap(tmp_path):
    camp = Campaign.create(tmp_path / "camp", load_env(make_toy_env(tmp_path / "env", LINGER, timeout_s=60)))
    tid = camp.store.add_trial("candidate", seed=0, budget_s=camp.spec.budget_s)
    tdir = camp.store.trial_dir(tid)
    events: list[tuple[str, dict]] = []
    killed: list[int] = []

    def killer():  # SIGKILL every worker that takes the trial, as soon as it has taken it
        while camp.store.trial(tid)["status"] != "done":
            try:
                pid = json.loads((tdir / "worker.json").read_text())["pid"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.02)
                continue
            if pid not in killed and _alive(pid):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.02)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    with LocalExecutor(slots=1) as ex:
        TrialRunner(camp, ex, lambda k, i: events.append((k, i)), max_requeues=2).drain()
    t.join(timeout=30)
    trial = camp.store.trial(tid)
    assert trial["outcome"] == "failed", trial
    assert trial["reason"] == "re-queued 2 times: the worker died each time"
    assert trial["requeues"] == 2 and len(killed) == 3
    assert [i["requeues"] for k, i in events if k == "requeued"] == [1, 2]
    # Shown where a reader looks: `status` and the report.
    lines = "\n".join(status_lines(camp.store))
    assert f"trial {tid}: re-queued 2 times" in lines, lines
    data = load_campaign(camp.root)
    assert data["summary"]["requeues"] == 2 and data["state"]["requeues"] == 2
    from ideaforge.report import write_report

    html = write_report(camp.root).read_text()
    assert "2 re-queued (worker died)" in html  # (per trial, "re-queued ×N" in its idea's table)


def test_a_controller_killed_before_the_worker_started_does_not_count_against_the_cap(tmp_path):
    camp = Campaign.create(tmp_path / "camp", load_env(make_toy_env(tmp_path / "env")))
    tid = camp.store.add_trial("candidate", seed=0, budget_s=camp.spec.budget_s)
    assert camp.store.claim(tid)  # claimed, then the controller "died" before any worker took it
    with LocalExecutor(slots=1) as ex:
        TrialRunner(camp, ex, max_requeues=0).drain()
    trial = camp.store.trial(tid)
    assert trial["outcome"] == "evaluated" and trial["requeues"] == 0 and trial["attempt"] == 1


# -- smoke runs take slots like trials ---------------------------------------------------------------
def _max_overlap(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    now = best = 0
    for _, d in edges:
        now += d
        best = max(best, now)
    return best


@pytest.mark.slow
def test_smoke_runs_never_exceed_slots_beside_trials(tmp_path):
    """A search's smoke check runs in a leased slot: smoke runs plus trials stay within --slots."""
    from ideaforge.search.loop import Search, SearchConfig

    env = make_toy_env(tmp_path / "env", SLOW)
    camp = Campaign.create(tmp_path / "camp", load_env(env))
    smoke_spans: list[tuple[float, float]] = []

    def smoke(changes):  # a real process, as the real smoke check runs
        t0 = time.time()
        subprocess.run([sys.executable, "-c", "import time; time.sleep(0.5)"], check=True)
        smoke_spans.append((t0, time.time()))
        return None

    slots = 2
    with LocalExecutor(slots=slots) as ex:
        search = Search(camp, ex, ideator=None, config=SearchConfig(model="none", smoke=True), smoke=smoke)
        with camp.store.tx():
            for seed in range(6):
                camp.store.add_trial("baseline", seed=seed, budget_s=camp.spec.budget_s)
        checks = [threading.Thread(target=search.implementer.smoke, args=({},)) for _ in range(6)]
        for c in checks:
            c.start()
        search.drain()
        for c in checks:
            c.join(timeout=120)
    assert len(smoke_spans) == 6
    trial_spans = []
    for t in camp.store.trials():
        d = camp.store.trial_dir(t["id"])
        w = json.loads((d / "worker.json").read_text())
        trial_spans.append((w["started_at"], json.loads((d / "record.json").read_text())["ended_at"]))
    assert _max_overlap(trial_spans + smoke_spans) <= slots
    assert _max_overlap(trial_spans + smoke_spans) == slots  # and the slots were used


def test_a_lease_waits_for_a_slot_and_goes_before_queued_trials(tmp_path):
    with LocalExecutor(slots=1, gpus=["0"]) as ex:
        woken = threading.Event()
        threading.Thread(target=lambda: (ex.wait(), woken.set()), daemon=True).start()  # the controller
        with ex.lease(gpus=1) as ids:
            assert ids == ["0"] and not ex.can_start(0)
            got, held = [], ex.lease()  # held: a dropped context manager would release its slot
            waiter = threading.Thread(target=lambda: got.append(held.__enter__()))
            waiter.start()
            wait_for(lambda: ex._lease_waiting == 1, what="the second lease to wait")
            assert not got and not woken.is_set()
        waiter.join(timeout=10)
        assert got == [[]]
        wait_for(woken.is_set, what="the release to wake the controller")
        assert not ex.can_start(0)  # the waiting lease took the slot before any trial could
        held.__exit__(None, None, None)
        assert ex.can_start(0)


# -- the last trial's event is never left unread --------------------------------------------------
class _EndsAtOnce(LocalExecutor):
    """A backend whose trials have ended, event queued and slot back, before the controller looks:
    the moment the 500-trial overhead benchmark hit, when it spun forever on a trial 'running'."""

    def start(self, trial_id, trial_dir, gpus=0):
        from ideaforge.execute.events import Finished
        from ideaforge.execute.record import TrialRecord

        self._events.put(Finished(trial_id, TrialRecord("failed", reason="ended at once"), []))
        return os.getpid()


def test_a_trial_that_ended_before_the_controller_looked_is_collected(tmp_path):
    camp = Campaign.create(tmp_path / "camp", load_env(make_toy_env(tmp_path / "env")))
    tid = camp.store.add_trial("baseline", seed=0, budget_s=camp.spec.budget_s)
    with _EndsAtOnce(slots=1) as ex:
        runner = TrialRunner(camp, ex)
        done = threading.Event()
        t = threading.Thread(target=lambda: (runner.drain(), done.set()), daemon=True)
        t.start()
        assert done.wait(30), "drain() spun on a trial whose end was already queued"
    assert camp.store.trial(tid)["status"] == "done"
    camp.close()
