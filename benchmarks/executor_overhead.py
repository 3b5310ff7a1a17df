"""Slot utilisation and per-trial overhead of an executor on trivial trials.

    python benchmarks/executor_overhead.py --trials 64 --slots 8 --seconds 1

Each trial's training is `sleep SECONDS`; its evaluator is one shell `printf`. The
figures include everything ideaforge adds around a trial: laying out the workspace,
writing the job, starting the detached worker, running the evaluator, reading the
record and writing it to the campaign database.

utilisation = busy slot-seconds / (slots x wall seconds), where busy = training time
overhead     = (slots x wall - busy) / trials
"""

from __future__ import annotations

import argparse
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
command = "sh train.sh"
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
        (env / "train.sh").write_text(f"sleep {args.seconds}\n")
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
        with executor:
            t0 = time.monotonic()
            TrialRunner(camp, executor).drain()
            wall = time.monotonic() - t0
        trials = camp.store.trials()
        bad = [t for t in trials if t["outcome"] != "evaluated"]
        if bad:
            print(f"{len(bad)} trials did not evaluate: {bad[0]['outcome']}: {bad[0]['reason']}", file=sys.stderr)
            return 1
        busy = sum(t["train_s"] for t in trials)
        util = busy / (args.slots * wall)
        overhead_ms = 1000 * (args.slots * wall - busy) / args.trials
        print(f"executor={args.executor} trials={args.trials} slots={args.slots} trial_seconds={args.seconds}")
        print(f"wall {wall:.2f} s, busy {busy:.2f} slot-s")
        print(f"utilisation {100 * util:.1f}%   overhead {overhead_ms:.0f} ms/trial")
    return 0


if __name__ == "__main__":
    sys.exit(main())
