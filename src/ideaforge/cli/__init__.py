"""The `ideaforge` command: parsing and printing only, on typer.

Each module of this package holds commands (`@app.command()` in `common.app`); every
module is imported here, so a new command is one function in one module. This is the
only place that configures process-global state (signal handlers).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import signal
import sys

import typer

from ideaforge.cli.common import app
from ideaforge.errors import IdeaforgeError

__all__ = ["app", "main"]


def _load_commands() -> None:
    for mod in pkgutil.iter_modules(__path__):
        if mod.name not in ("common", "progress") and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


_load_commands()


def _stop_cleanly(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (2: bad usage or a refused value, 130: interrupted)."""
    # Ctrl-C and `kill` stop a campaign cleanly (running trials killed and re-queued). Set
    # explicitly: a shell that starts us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGINT, _stop_cleanly)
    signal.signal(signal.SIGTERM, _stop_cleanly)
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="ideaforge", standalone_mode=False)
    except typer.Abort:
        return 130
    except typer.TyperException as e:  # a bad option or value (typer's click): nothing has been written
        if hasattr(e, "show"):
            e.show()
        else:
            print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except IdeaforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ideaforge show ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return rv if isinstance(rv, int) else 0
