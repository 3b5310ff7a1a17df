"""What every command shares: the typer apps, printing, option checks, and the executor options.

A new command is one function in one module of this package, decorated with `@app.command()`
(or `@env_app.command()`); `ideaforge.cli` imports every module here, so nothing else changes.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console


app = typer.Typer(
    name="ideaforge", help="Execution-grounded automated AI research: ideas -> code edits -> trusted "
    "measured trials -> evolutionary search.", no_args_is_help=True, add_completion=False,
    pretty_exceptions_enable=False, rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})
env_app = typer.Typer(help="List, show and check research environments.", no_args_is_help=True,
                      rich_markup_mode=None)
app.add_typer(env_app, name="env")

# One console for everything the commands print. markup/emoji off: diffs and model text
# contain "[...]" and ":name:" that rich would otherwise eat.
console = Console(highlight=False, markup=False, emoji=False, soft_wrap=True)


def say(msg: str = "") -> None:
    console.print(msg, markup=False, highlight=False, emoji=False, soft_wrap=True)


def fail(msg: str, code: int = 2) -> typer.Exit:
    """Print an error to stderr; `raise fail(...)` ends the command with `code`."""
    Console(stderr=True, highlight=False, markup=False, soft_wrap=True).print(f"error: {msg}")
    return typer.Exit(code)


# -- value checks: a bad value exits 2 with the reason, before anything is written -----------
def bound(lo: float, *, open_: bool = False, unit: str = ""):
    """A typer callback refusing values below `lo` (or equal to it when `open_`)."""
    def check(value):
        if value is None:
            return value
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v < lo or (open_ and v == lo):
                need = f"{'>' if open_ else '>='} {lo:g}" + (f" {unit}" if unit else "")
                raise typer.BadParameter(f"{v:g} is not allowed: it must be {need}")
        return value
    return check


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h|hr)?\s*$", re.IGNORECASE)
_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


def minutes_to_seconds(value: Optional[str]) -> Optional[float]:
    """--max-wall: '90' (minutes), '90m', '45s' or '1.5h' -> seconds (> 0)."""
    if value is None:
        return None
    m = _DURATION.match(value)
    if not m:
        raise typer.BadParameter(f"{value!r} is not a duration: give minutes (90), or a number with s, m or h "
                                 "(45s, 90m, 1.5h)")
    seconds = float(m.group(1)) * _SECONDS[(m.group(2) or "m").lower()]
    if seconds <= 0:
        raise typer.BadParameter(f"{value!r} is not allowed: the wall-time limit must be > 0")
    return seconds


def default_dir(kind: str, env: str) -> Path:
    return Path("runs") / f"{env}-{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


DIR_HELP = "campaign directory (created; must not hold a campaign yet) [default: runs/ENV-{kind}-YYYYmmdd-HHMMSS " \
           "under the current directory]"
ENV_HELP = "a built-in environment (see `ideaforge env list`) or a directory holding an ideaforge.toml"
CAMPAIGN_DIR_HELP = "a campaign directory (made by `ideaforge run`, `baseline` or `implement`)"
BUDGET_HELP = "seconds of training per trial (> 0) [default: the environment's budget_s, 60 s for the built-ins]"

# -- the executor options every command that runs trials takes --------------------------------
ProfileOpt = Annotated[Optional[str], typer.Option(
    "--profile", metavar="NAME", help="an environment profile ([profile.NAME] in its ideaforge.toml: the same code at "
    "another scale, e.g. tiny on a CPU, 1gpu) [default: none; on resume, the campaign's]")]
SlotsOpt = Annotated[Optional[int], typer.Option(
    "--slots", callback=bound(1), help="trials at once (>= 1) [default: CPU cores ÷ the environment's cpus, "
    "or lent GPUs ÷ its gpus; on Ray, cluster CPUs ÷ cpus]")]
GpusOpt = Annotated[Optional[str], typer.Option(
    "--gpus", help="comma-separated GPU ids to lend to trials, e.g. 0,1,2,3 [default: every GPU nvidia-smi lists, "
    "for environments that need GPUs]")]
class Backend(str, Enum):
    local = "local"
    ray = "ray"


class Mode(str, Enum):
    evolve = "evolve"
    best_of_n = "best-of-n"
    evolve_async = "evolve-async"


ExecutorOpt = Annotated[Optional[Backend], typer.Option(
    "--executor", help="where trials run: local (this machine) or ray (a Ray cluster; see docs/ray.md) "
    "[default: local; on resume, the campaign's saved choice]")]
RayAddressOpt = Annotated[Optional[str], typer.Option(
    "--ray-address", help="with --executor ray: auto, HOST:6379 or ray://HOST:10001 [default: start a local Ray]")]


@dataclass(frozen=True)
class ExecutorChoice:
    executor: str | None = None  # None: local, or on resume the campaign's saved choice
    slots: int | None = None
    gpus: str | None = None
    ray_address: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "executor", getattr(self.executor, "value", self.executor))
        if self.gpus and not all(g.strip().isdigit() for g in self.gpus.split(",") if g.strip()):
            raise typer.BadParameter(f"--gpus {self.gpus!r}: give GPU ids like 0,1,2,3")

    def gpu_list(self) -> list[str] | None:
        return [g.strip() for g in self.gpus.split(",") if g.strip()] if self.gpus else None


def make_executor(choice: ExecutorChoice, campaign):
    """The campaign's saved executor choice, with the flags given on top; the result is saved for `resume`."""
    return campaign.make_executor(choice.executor, slots=choice.slots, gpus=choice.gpu_list(),
                                  address=choice.ray_address)


def fmt_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
