"""Execution: a trial's job -> a trusted result record.

Backends share one contract: a prepared trial directory (workspace + job.json) goes
in, `record.json` written by the worker comes out. See `worker.py` for what a trial
sees and `local.py` for the local slot pool. Nothing is imported here, so that a
worker process starts as fast as it can.
"""
