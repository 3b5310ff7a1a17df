"""The seams between worker, executor and store: one typed record, one outcome vocabulary,
one executor protocol. Real processes, no mocks of the process layer."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from fakes.toyenv import make_toy_env
from ideaforge.envs import load_env
from ideaforge.errors import StoreError
from ideaforge.execute.local import LocalExecutor
from ideaforge.execute.record import OUTCOMES, TrialRecord
from ideaforge.search.campaign import Campaign, TrialRunner


def _campaign(tmp_path, train=None, **kw) -> Campaign:
    return Campaign.create(tmp_path / "camp", load_env(make_toy_env(tmp_path / "env", train, **kw)))


# -- 15.2: one typed record, one vocabulary -------------------------------------------------
def test_record_round_trips_the_workers_json_and_keeps_unknown_keys():
    d = {"trial_id": 4, "outcome": "evaluated", "metric": 1.5, "metrics": {"acc": 0.5}, "curve": [[0, {"l": 1}]],
         "exit_code": 0, "train_s": 1.0, "eval_s": 0.5, "started_at": 1.0, "ended_at": 2.0, "isolation": "bwrap"}
    rec = TrialRecord.from_dict(d)
    assert rec.metric == 1.5 and rec.extra == {"isolation": "bwrap"}
    assert rec.to_dict() == d


def test_unknown_outcomes_are_refused_everywhere(tmp_path):
    assert "crash" not in OUTCOMES
    with pytest.raises(ValueError, match="unknown trial outcome 'crash'"):
        TrialRecord.from_dict({"outcome": "crash"})
    camp = _campaign(tmp_path)
    tid = camp.store.add_trial("baseline", seed=0, budget_s=1)
    assert camp.store.claim(tid)
    with pytest.raises(StoreError, match="unknown outcome 'crash'"):
        camp.store.finish_trial(tid, {"outcome": "crash"})
    assert camp.store.trial(tid)["status"] == "running"


def test_a_record_with_an_unknown_outcome_ends_the_trial_failed(tmp_path):
    """A worker bug (a record nobody can read) ends the trial with the reason; it is not re-run forever."""
    d = tmp_path / "t"
    d.mkdir()
    (d / "record.json").write_text(json.dumps({"trial_id": 1, "outcome": "exploded"}))
    rec = TrialRecord.read(d)
    assert rec.outcome == "failed" and "exploded" in rec.reason
    assert TrialRecord.read(tmp_path / "nowhere") is None


def test_runner_ingests_typed_records_from_a_real_worker(tmp_path):
    camp = _campaign(tmp_path)
    tid = camp.store.add_trial("baseline", seed=0, budget_s=camp.spec.budget_s)
    seen = []
    with LocalExecutor(slots=1) as ex:
        TrialRunner(camp, ex, lambda kind, info: seen.append((kind, info))).drain()
    t = camp.store.trial(tid)
    assert t["outcome"] == "evaluated" and t["metric"] is not None
    finished = [info for kind, info in seen if kind == "finished"]
    assert finished and finished[0]["trial"] == tid and finished[0]["outcome"] == "evaluated"


# -- 15.3: one executor interface, a registry, the choice saved in the campaign ----------------
def test_a_backend_is_one_registration(tmp_path):
    from ideaforge.errors import ConfigError
    from ideaforge.execute import base

    built = []

    def factory(**kw):
        built.append(kw)
        return LocalExecutor(slots=kw["slots"] or 1)

    base.register("test-backend", factory)
    try:
        with base.make_executor("test-backend", slots=3, cpus_per_trial=2) as ex:
            assert ex.slots == 3
        assert built == [{"slots": 3, "gpus": None, "address": None, "cpus_per_trial": 2, "gpus_per_trial": 0}]
        assert "test-backend" in base.backends() and "local" in base.backends() and "ray" in base.backends()
    finally:
        base._REGISTRY.pop("test-backend")
    with pytest.raises(ConfigError, match="unknown executor 'slurm'"):
        base.make_executor("slurm")
    with pytest.raises(ConfigError, match="slots must be at least 1"):
        base.make_executor("local", slots=0)


def test_executor_choice_is_saved_so_resume_needs_no_flags(tmp_path):
    camp = _campaign(tmp_path)
    with camp.make_executor(slots=3, gpus=["7"]) as ex:
        assert ex.slots == 3 and ex.total_gpus == 1
    again = Campaign.open(camp.root)
    with again.make_executor() as ex:  # `ideaforge resume DIR`: no flags
        assert ex.slots == 3 and ex.total_gpus == 1
    assert again.store.get_meta("executor") == {"name": "local", "slots": 3, "gpus": ["7"]}
    with again.make_executor(slots=2) as ex:  # a flag given on resume wins, and is saved
        assert ex.slots == 2
    assert Campaign.open(camp.root).store.get_meta("executor")["slots"] == 2
    facts = again.store.get_meta("env")
    assert facts["metric"] == camp.spec.metric and facts["goal"] == camp.spec.goal
    assert facts["budget_s"] == camp.spec.budget_s


def wait_for(cond, timeout=60.0, what="condition"):
    """Poll `cond` until true (a condition, not a fixed sleep); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


GATED = """
import os, time
gate = os.path.join(os.environ["IDEAFORGE_DATA"], "gate")  # data is visible even in a jail
while not os.path.exists(gate):
    time.sleep(0.05)
"""


def test_attach_finds_the_worker_an_earlier_executor_started(tmp_path):
    """One `attach(trial_id, trial_dir)` for every backend: the local one finds its worker by pid file + cwd."""
    camp = _campaign(tmp_path, GATED)
    tid = camp.store.add_trial("baseline", seed=0, budget_s=camp.spec.budget_s)
    tdir = camp.prepare_trial_dir(camp.store.trial(tid))
    # The first controller: starts the worker, then dies with SIGKILL (its pipe to the worker closes).
    code = ("import sys; from pathlib import Path; from ideaforge.execute.local import LocalExecutor; "
            "ex = LocalExecutor(slots=1); ex.start(int(sys.argv[1]), Path(sys.argv[2])); "
            "print('started', flush=True); sys.stdin.read()")
    first = subprocess.Popen([sys.executable, "-c", code, str(tid), str(tdir)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "started"
        wait_for(lambda: (tdir / "worker.json").exists(), what="the worker to start")
    finally:
        first.kill()
        first.wait()
    with LocalExecutor(slots=1) as second:
        assert second.attach(tid, tdir)
        assert second.running() == 1 and not second.can_start()
        assert not second.attach(tid + 1, camp.store.trial_dir(tid + 1))  # no worker there
        (tmp_path / "env" / "data" / "gate").touch()
        got = []
        wait_for(lambda: got.extend(second.wait(1.0)) or got, what="the attached trial to finish")
    assert got[0].trial_id == tid and got[0].record is not None
