"""Execution: a trial's job -> a trusted result record.

Backends share one contract: a prepared trial directory (workspace + job.json) goes
in, `record.json` written by the worker comes out. See `worker.py` for what a trial
sees and `local.py` for the local slot pool.
"""

from ideaforge.execute.job import Job, OUTCOMES, write_job
from ideaforge.execute.local import LocalExecutor

__all__ = ["Job", "LocalExecutor", "OUTCOMES", "write_job"]
