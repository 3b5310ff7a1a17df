"""The seams between worker, executor and store: one typed record, one outcome vocabulary,
one executor protocol. Real processes, no mocks of the process layer."""

from __future__ import annotations

import json

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
    camp.store.mark_running(tid)
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
