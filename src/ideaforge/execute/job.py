"""The job description a worker runs (the outcomes it ends with: `ideaforge.outcomes`)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Job:
    trial_id: int
    run_command: str
    evaluate_command: str
    budget_s: float              # training budget the code must respect, seconds
    timeout_s: float             # hard kill of the training process tree, seconds
    evaluate_timeout_s: float    # hard kill of the evaluator, seconds
    seed: int
    cpus: int                    # threads pinned for the trial
    gpus: int                    # GPUs the trial needs; ids are leased at launch
    metric: str
    hidden_src: str              # campaign snapshot directory holding the pristine hidden files
    hidden: dict[str, str] = field(default_factory=dict)  # rel path -> sha256
    data: dict[str, str] = field(default_factory=dict)    # rel path -> absolute path
    prepared: str | None = None  # cached [prepare] output, if any
    memory_gb: float | None = None
    role: str = "candidate"
    evaluate_serve: str | None = None  # split evaluator: the untrusted model server's command (envs/protocol.py)
    evaluate_jailed: bool = True  # False: a trusted evaluator that runs no workspace code, with host paths
    env: dict[str, str] = field(default_factory=dict)  # the environment profile's variables
    budget_clock: str = "wall"   # what budget_s counts: "wall" or the training tree's "cpu" seconds
    network: bool = False        # the jail keeps the host network

    @classmethod
    def load(cls, trial_dir: Path) -> "Job":
        return cls(**json.loads((trial_dir / "job.json").read_text()))


def write_job(trial_dir: Path, job: Job) -> None:
    # Not fsynced: after a crash before the worker starts, the trial is prepared afresh.
    atomic_write_json(trial_dir / "job.json", asdict(job), durable=False)


def atomic_write_json(path: Path, obj, durable: bool = True) -> None:
    """Write-then-rename, so readers see the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
