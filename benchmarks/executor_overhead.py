"""Slot utilisation and per-trial overhead of an executor on trivial trials.

    python benchmarks/executor_overhead.py --trials 500 --seconds 0.5 --slots 16
    python benchmarks/executor_overhead.py --executor ray --trials 100 --seconds 1 --slots 8

Each trial's command is a bash script whose first and last acts print the epoch time
(`$EPOCHREALTIME`, no process started for it) around `sleep SECONDS`; its evaluator is one
shell `printf`. A slot counts as busy only between those two stamps, read back from the
trial's train.out: the shell's start-up, the jail, the worker, the evaluator and the
controller's bookkeeping all count as overhead. The wall time is the campaign's, from
the first trial handed out to the last result written to the database.

utilisation = sum of command intervals / (slots x wall seconds)
overhead    = (slots x wall - sum of command intervals) / trials
lost        = trials not evaluated, or without exactly one recorded command run
duplicated  = trials started more than once, or whose command ran more than once
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
import time
from pathlib import Path

from ideaforge.envs import load_env
from ideaforge.execute.local import LocalExecutor
from ideaforge.search.campaign import Campaign, TrialRunner

TOML = """
[env]
name = "sleep"
description = "A trial that sleeps; measures the executor, not training."
[files]
editable = ["train.sh"]
hidden = ["evaluate.sh"]
[run]
command = "bash train.sh"
budget_s = {seconds}
[evaluate]
command = "sh evaluate.sh"
[metric]
name = "score"
goal = "max"
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=1.0, help="training time per trial")
    ap.add_argument("--executor", choices=["local", "ray"], default="local")
    ap.add_argument("--ray-address", help="an existing Ray cluster (default: start a local one with SLOTS CPUs)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        env = Path(tmp) / "env"
        env.mkdir()
        (env / "ideaforge.toml").write_text(TOML.format(seconds=args.seconds))
        (env / "train.sh").write_text(f'echo "T0 $EPOCHREALTIME"\nsleep {args.seconds}\necho "T1 $EPOCHREALTIME"\n')
        (env / "evaluate.sh").write_text("printf '{\"status\":\"ok\",\"metrics\":{\"score\":1}}' > \"$IDEAFORGE_RESULT\"\n")
        camp = Campaign.create(Path(tmp) / "camp", load_env(env))
        with camp.store.tx():
            for i in range(args.trials):
                camp.store.add_trial("baseline", seed=i, budget_s=args.seconds)
        if args.executor == "ray":
            from ideaforge.execute.ray import RayExecutor

            init = {} if args.ray_address else {"num_cpus": args.slots}
            executor = RayExecutor(args.ray_address, slots=args.slots, init_kwargs=init)
        else:
            executor = LocalExecutor(slots=args.slots)
        starts: collections.Counter = collections.Counter()

        def count(kind: str, info: dict) -> None:
            if kind == "started":
                starts[info["trial"]] += 1

        with executor:
            t0 = time.monotonic()
            TrialRunner(camp, executor, count).drain()
            wall = time.monotonic() - t0
        trials = camp.store.trials()
        busy, lost, duplicated = 0.0, args.trials - len(trials), 0
        for t in trials:
            out = camp.store.trial_dir(t["id"]) / "train.out"
            text = out.read_text() if out.exists() else ""
            t0s = [float(x) for x in re.findall(r"^T0 ([0-9.]+)$", text, re.M)]
            t1s = [float(x) for x in re.findall(r"^T1 ([0-9.]+)$", text, re.M)]
            if t["outcome"] != "evaluated" or not t0s or len(t0s) != len(t1s):
                lost += 1
                print(f"trial {t['id']}: {t['outcome']}: {t['reason']}", file=sys.stderr)
                continue
            duplicated += starts[t["id"]] > 1 or len(t0s) > 1
            busy += sum(b - a for a, b in zip(t0s, t1s))
        util = busy / (args.slots * wall)
        overhead_ms = 1000 * (args.slots * wall - busy) / args.trials
        print(f"executor={args.executor} trials={args.trials} slots={args.slots} trial_seconds={args.seconds}")
        print(f"wall {wall:.2f} s, busy {busy:.2f} slot-s (between the command's own first and last acts)")
        print(f"utilisation {100 * util:.1f}%   overhead {overhead_ms:.0f} ms/trial   lost {lost}   "
              f"duplicated {duplicated}")
    return 0 if not (lost or duplicated) else 1


if __name__ == "__main__":
    sys.exit(main())
