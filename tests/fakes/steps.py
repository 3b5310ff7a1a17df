"""Load-proof training for tests: stop the built-in nanogpt-cpu run after a fixed number of steps.

Its train.py stops by the wall clock (IDEAFORGE_BUDGET_S), so on a loaded machine a test's
trial trains fewer steps and a loss threshold that holds on a quiet machine fails. Tests that
assert how well training went replace the clock check with a step count, so they assert on
what was trained, not on how fast the machine was; the budget then only bounds the run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CLOCK_STOP = "if elapsed + step_time + SAVE_RESERVE_S >= BUDGET_S:"


def by_steps(train_source: str, steps: int) -> str:
    """nanogpt-cpu's train.py, stopping after `steps` optimizer steps instead of at the budget."""
    assert CLOCK_STOP in train_source, "nanogpt-cpu's stop condition changed: update tests/fakes/steps.py"
    return train_source.replace(CLOCK_STOP, f"if step >= {int(steps)}:  # tests: a fixed number of steps")


def nanogpt_by_steps(dest: Path, steps: int) -> Path:
    """A copy of nanogpt-cpu whose training runs `steps` steps (the trial budget is then only a time limit)."""
    from ideaforge.envs import load_env

    src = load_env("nanogpt-cpu").root
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "train.py").write_text(by_steps((src / "train.py").read_text(), steps))
    return dest
