"""Evolutionary search against best-of-N at equal trial budgets, with the offline ideators.

    python benchmarks/search_vs_bestofn.py                        # synthetic landscape, seconds
    python benchmarks/search_vs_bestofn.py --env nanogpt-cpu --budget 20 --epochs 3 --ideas 6 --seeds 2

Both modes get the same number of ideas per epoch and epochs (so the same number of
candidate trials), the same baseline seeds, no confirmation runs. Printed: the best
metric found so far after each epoch, mean ± std over the search seeds, per mode.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from ideaforge.envs import load_env
from ideaforge.execute.local import LocalExecutor
from ideaforge.ideate import offline_ideator
from ideaforge.search.campaign import Campaign
from ideaforge.search.loop import Search, SearchConfig

HERE = Path(__file__).parent


def best_so_far(campaign: Campaign, epochs: int) -> list[float | None]:
    goal = campaign.spec.goal
    impl_epoch = {}
    ideas = {i["id"]: i for i in campaign.store.ideas()}
    for impl in campaign.store.implementations():
        impl_epoch[impl["id"]] = ideas[impl["idea_id"]]["epoch"]
    curve, best = [], None
    for e in range(epochs):
        for t in campaign.store.trials(role="candidate"):
            if t["outcome"] == "evaluated" and impl_epoch.get(t["implementation_id"]) == e:
                if best is None or campaign.spec.better(t["metric"], best):
                    best = t["metric"]
        curve.append(best)
    return curve


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default=str(HERE / "envs" / "quadratic"))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--ideas", type=int, default=6)
    ap.add_argument("--seeds", type=int, default=5, help="search seeds per mode")
    ap.add_argument("--budget", type=float, help="training seconds per trial (default: the environment's)")
    ap.add_argument("--slots", type=int, default=2)
    args = ap.parse_args()
    spec = load_env(args.env)

    curves: dict[str, list[list[float | None]]] = {"evolve": [], "best-of-n": []}
    baselines = []
    with tempfile.TemporaryDirectory() as tmp, LocalExecutor(slots=args.slots) as executor:
        for seed in range(args.seeds):
            for mode in curves:
                cfg = SearchConfig(mode=mode, epochs=args.epochs, ideas=args.ideas, budget_s=args.budget,
                                   baseline_seeds=2, confirm_top=0, seed=seed)
                camp = Campaign.create(Path(tmp) / f"{mode}-{seed}", spec, {"command": "benchmark", "search": vars(cfg)})
                Search(camp, executor, offline_ideator(spec), cfg).run()
                curves[mode].append(best_so_far(camp, args.epochs))
                baselines += [t["metric"] for t in camp.store.trials(role="baseline") if t["outcome"] == "evaluated"]
                print(f"seed {seed} {mode:9s} best so far: "
                      + " ".join("-" if v is None else f"{v:.4f}" for v in curves[mode][-1]), flush=True)

    print()
    print(f"{spec.name}: {spec.metric} ({'lower' if spec.goal == 'min' else 'higher'} is better), "
          f"{args.epochs} epochs x {args.ideas} ideas, {args.seeds} seeds per mode")
    print(f"baseline: {statistics.fmean(baselines):.4f} ± {statistics.stdev(baselines):.4f} (n={len(baselines)})")
    print(f"{'epoch':>5}  {'evolve':>18}  {'best-of-n':>18}")
    for e in range(args.epochs):
        row = []
        for mode in curves:
            vals = [c[e] for c in curves[mode] if c[e] is not None]
            row.append(f"{statistics.fmean(vals):.4f} ± {statistics.stdev(vals) if len(vals) > 1 else 0:.4f}"
                       if vals else "-")
        print(f"{e + 1:>5}  {row[0]:>18}  {row[1]:>18}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
