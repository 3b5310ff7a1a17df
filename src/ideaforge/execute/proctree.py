"""Reading and controlling process trees through /proc (Linux): who descends from whom, how
much CPU a tree used, which processes carry a run's token; subreaper and parent-death signals.

Lower than the worker and the jail: no ideaforge imports.
"""

from __future__ import annotations

import os
import signal

RUN_TOKEN = "IDEAFORGE_RUN_TOKEN"  # unjailed runs are marked in their environment, to find their daemons
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc/<pid>/stat time unit, per second


def become_subreaper() -> None:
    """Orphaned descendants (even ones that setsid away) get re-parented to us, so we can kill them."""
    import ctypes  # here, not at the top: every worker start pays for top-level imports

    try:
        PR_SET_CHILD_SUBREAPER = 36
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: process-group kill still applies


def proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, CPU ticks: own user+system plus that of its reaped children) of every process."""
    table = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            table[int(entry)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
        except (OSError, IndexError, ValueError):
            continue
    return table


def descendants(root: int, table: dict[int, tuple[int, int]] | None = None) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in (table if table is not None else proc_table()).items():
        children.setdefault(ppid, []).append(pid)
    out, stack = [], [root]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user+system) of a live process tree, its reaped members included."""
    table = proc_table()
    return sum(table[p][1] for p in [root, *descendants(root, table)] if p in table) / _TICK


def carrying(token: str) -> set[int]:
    """Processes whose environment carries this run's token: its daemons, even re-parented to init."""
    needle = f"{RUN_TOKEN}={token}".encode()
    out = set()
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        try:
            if entry.isdigit() and needle in open(f"/proc/{entry}/environ", "rb").read():
                out.add(int(entry))
        except OSError:
            continue
    return out


def die_with_parent() -> None:
    """SIGKILL this (forked) process when the thread that started it dies: a killed worker leaves no run."""
    import ctypes

    try:
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
