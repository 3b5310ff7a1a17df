"""The time the jail adds per run: jailed vs unjailed through the real `run_group`, side by side.

    python benchmarks/jail_overhead.py [--n 40]

Each round runs the same trivial command once unjailed and once jailed (bubblewrap), in
alternating order, so machine load hits both alike; prints the median of each and the median
of the per-round differences (target: under 100 ms per trial). Commands: `true` (the jail's
own cost) and `python -c pass` (a trial's interpreter start inside the jail, with the
read-only binds of the Python installation).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ideaforge.execute import jail, worker


def one(cmd: str, cwd: Path, isolate: bool) -> float:
    box = jail.Jail(writable=(cwd,), isolate=isolate)
    t0 = time.perf_counter()
    run = worker.run_group(cmd, cwd, {"PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin"}, 60,
                           cwd / "log", jail_=box)
    dt = time.perf_counter() - t0
    assert run.rc == 0, (cmd, isolate, (cwd / "log.err").read_text())
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="rounds per command")
    args = ap.parse_args()
    if jail.isolation() != "bubblewrap":
        print(f"no jail on this machine: {jail.why_unisolated()}")
        return 1
    print(f"{'command':<16} {'unjailed ms':>12} {'jailed ms':>10} {'added ms (median of pairs)':>28}")
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        for cmd in ("true", "python -c pass"):
            bare, boxed, diff = [], [], []
            for i in range(args.n):
                order = (False, True) if i % 2 == 0 else (True, False)
                got = {iso: one(cmd, cwd, iso) for iso in order}
                bare.append(got[False])
                boxed.append(got[True])
                diff.append(got[True] - got[False])
            print(f"{cmd:<16} {statistics.median(bare) * 1e3:>12.1f} {statistics.median(boxed) * 1e3:>10.1f} "
                  f"{statistics.median(diff) * 1e3:>28.1f}")
    print(f"rounds: {args.n} per command, interleaved; target: under 100 ms added per trial")
    return 0


if __name__ == "__main__":
    sys.exit(main())
