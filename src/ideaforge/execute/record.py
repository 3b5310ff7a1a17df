"""The typed trial record: what a worker writes to `record.json` and the store ingests.

The JSON layout is the worker's (flat keys, see `worker.run_trial`); this class is the
one place that reads it. Keys this version does not know (a newer worker's) are kept
in `extra` and written back unchanged, so a record survives a round trip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ideaforge.outcomes import OUTCOMES, Outcome

__all__ = ["OUTCOMES", "Outcome", "TrialRecord"]


@dataclass
class TrialRecord:
    outcome: Outcome
    trial_id: int | None = None
    metric: float | None = None                  # the environment's metric; set only when evaluated
    metrics: dict[str, float] = field(default_factory=dict)
    curve: list = field(default_factory=list)    # [[step, {key: value}], ...] from METRIC lines
    reason: str | None = None                    # why it did not evaluate (log tail included)
    exit_code: int | None = None                 # training's exit code (negative: killed by signal)
    train_s: float | None = None                 # seconds of training, as measured by the harness
    eval_s: float | None = None                  # seconds of evaluation
    started_at: float | None = None              # unix time
    ended_at: float | None = None                # unix time
    node: str | None = None                      # host that ran it (Ray)
    retried: int = 0                             # runs lost with their worker and re-run (Ray)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown trial outcome {self.outcome!r}; the outcomes are {', '.join(OUTCOMES)}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrialRecord":
        """Raises ValueError on a missing or unknown outcome."""
        known = {f.name for f in fields(cls)} - {"extra"}
        kw = {k: v for k, v in d.items() if k in known and v is not None}
        if "outcome" not in kw:
            raise ValueError("trial record without an outcome")
        kw["extra"] = {k: v for k, v in d.items() if k not in known}
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """The worker's JSON layout: flat, without empty optional keys."""
        d: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name != "extra" and v is not None and not (f.name == "retried" and v == 0):
                d[f.name] = v
        return d | self.extra

    @classmethod
    def read(cls, trial_dir: Path) -> "TrialRecord | None":
        """The record a worker left in `trial_dir`; None when there is none (yet) or it is unreadable.

        A record with an unknown outcome is a worker bug, not a result: it becomes `failed`
        with the reason, so the trial ends instead of being re-run forever.
        """
        try:
            d = json.loads((Path(trial_dir) / "record.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(d, dict):
            return None
        try:
            return cls.from_dict(d)
        except (ValueError, TypeError) as e:
            return cls(outcome="failed", trial_id=d.get("trial_id"), ended_at=d.get("ended_at"),
                       reason=f"the worker wrote an unreadable record ({e}): {json.dumps(d)[:500]}")
