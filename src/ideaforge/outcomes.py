"""The closed vocabulary of trial outcomes, declared once, at the bottom of the module map.

Every layer that names an outcome imports it from here: the worker that classifies a
trial (execute/), the store that refuses anything else, the search that reads them,
the report that draws them. Outcomes are classified where they arise (the worker),
never by matching messages afterwards.
"""

from __future__ import annotations

from typing import Literal, get_args

Outcome = Literal[
    "evaluated",  # trained, evaluated, metric recorded
    "failed",     # training exited non-zero (exit code and log tail in the reason), or could not run
    "timeout",    # killed at the hard timeout, with its whole process tree
    "oom",        # died of memory exhaustion (MemoryError, CUDA OOM, or the kernel's OOM kill)
    "diverged",   # the evaluator measured a non-finite metric
    "no_result",  # trained, but the evaluator found nothing to score or could not finish
    "invalid",    # a rule break: a refused edit, a leak the evaluator caught, an over-budget run
]
OUTCOMES: tuple[str, ...] = get_args(Outcome)

# Where an idea (not a trial) can end besides a trial outcome: it never got a working
# edit, or its trials have not finished. Views order ideas by IDEA_OUTCOMES.
IDEA_OUTCOMES: tuple[str, ...] = ("evaluated", "implement_failed") + OUTCOMES[1:] + ("pending",)
