"""Evolutionary search against best-of-N: equal candidate trials, the same ideator capability, a p-value.

    python benchmarks/search_vs_bestofn.py                          # synthetic landscape, a few CPU-minutes
    python benchmarks/search_vs_bestofn.py --env nanogpt-cpu --budget 20 --epochs 3 --ideas 6 --seeds 5

Fair by construction, and checked:
- equal candidate trials: both modes get the same epochs x ideas, no confirmation runs and
  no baseline re-runs; the candidate trials each campaign actually ran are counted and printed
  (a mode whose ideator ran dry would show fewer, marked UNEQUAL);
- the same ideator capability: both draw from the offline ideator's moves (catalogue entries
  and numeric steps). Evolve combines them guided by results (exploit) and explores; best-of-N
  (`BlindCombinations`) gets the same single moves *and* random combinations of 2-3 of them,
  chosen without any result, so the comparison measures feedback, not what either can express;
- >= 5 search seeds, paired: seed s of both modes shares its ideator seed. The figure is the
  best candidate metric found (one seed per idea), its paired difference per search seed, a
  one-sided paired t-test and an exact sign-flip permutation test over the seeds.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import tempfile
from pathlib import Path

from ideaforge.envs import load_env
from ideaforge.execute.local import LocalExecutor
from ideaforge.ideate import blocks as B
from ideaforge.ideate import offline_ideator
from ideaforge.ideate.types import Context, Idea, ScoredIdea
from ideaforge.search.campaign import Campaign
from ideaforge.search.loop import Search, SearchConfig
from ideaforge.stats import t_sf

HERE = Path(__file__).parent


class BlindCombinations:
    """Best-of-N with the offline ideator's full capability: its single moves, and random
    combinations of 2-3 of them, picked with no feedback (the control for evolve's exploit)."""

    name = "offline+blind-combinations"

    def __init__(self, spec):
        self.base = offline_ideator(spec)

    def _singles(self, ctx: Context) -> list[tuple[Idea, tuple[B.Block, ...]]]:
        numeric = self.base.numeric
        return self.base.catalogue.candidates(ctx, "best_of_n") + numeric._spread(ctx, numeric.moves(ctx), "best_of_n")

    def initial(self, ctx: Context, n: int) -> list[Idea]:
        singles = self._singles(ctx)
        rng = B.rng(ctx, "blind-combinations")
        combos = []
        for _ in range(30 * n if len(singles) > 1 else 0):
            pick = rng.sample(singles, min(rng.choice((2, 3)), len(singles)))
            blocks = B.merge(*(b for _, b in pick))
            if blocks is None or any(set(blocks) <= set(b) for _, b in pick):
                continue  # two moves of one setting, or one move contains the others
            combos.append((Idea(
                title=B.join_titles(*(i.title for i, _ in pick)),
                description="Combine: " + " ".join(f"{i.title}: {i.description}" for i, _ in pick),
                code_changes=B.describe(blocks), kind="best_of_n",
                origin={"ideator": self.name, "prompt": "best_of_n", "move": "blind-combine"}), blocks))
        return B.Picker(ctx).fill(B.round_robin(combos, singles), n)

    def explore(self, ctx: Context, history: list[ScoredIdea], n: int) -> list[Idea]:
        raise AssertionError("best-of-N never explores")

    exploit = explore


def candidate_values(campaign: Campaign) -> list[tuple[int, float | None]]:
    """(epoch, metric or None when not evaluated) of every candidate trial that ran."""
    ideas = {i["id"]: i for i in campaign.store.idea_heads()}
    epoch_of = {impl["id"]: ideas[impl["idea_id"]]["epoch"] for impl in campaign.store.implementation_heads()}
    return [(epoch_of[t["implementation_id"]], t["metric"] if t["outcome"] == "evaluated" else None)
            for t in campaign.store.trial_outcomes() if t["role"] == "candidate" and t["status"] == "done"]


def best_so_far(values: list[tuple[int, float | None]], epochs: int, goal: str) -> list[float | None]:
    curve, best = [], None
    for e in range(epochs):
        for ep, v in values:
            if ep == e and v is not None and (best is None or (v < best if goal == "min" else v > best)):
                best = v
        curve.append(best)
    return curve


def paired_tests(diffs: list[float]) -> tuple[float, float]:
    """One-sided p-values that the mean paired difference is > 0: (paired t, exact sign-flip permutation)."""
    n = len(diffs)
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    p_t = t_sf(mean / (sd / math.sqrt(n)), n - 1) if sd > 0 else (0.0 if mean > 0 else 1.0)
    flips = [statistics.fmean(s * d for s, d in zip(signs, diffs)) for signs in itertools.product((1, -1), repeat=n)]
    p_perm = sum(f >= mean - 1e-12 for f in flips) / len(flips)
    return p_t, p_perm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default=str(HERE / "envs" / "quadratic"))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--ideas", type=int, default=6)
    ap.add_argument("--seeds", type=int, default=6, help="search seeds per mode (>= 5 for a p-value worth quoting)")
    ap.add_argument("--budget", type=float, help="training seconds per trial (default: the environment's)")
    ap.add_argument("--slots", type=int, default=2)
    args = ap.parse_args()
    spec = load_env(args.env)
    goal, sign = spec.goal, (-1 if spec.goal == "min" else 1)

    finals: dict[str, list[float]] = {"evolve": [], "best-of-n": []}
    counts: dict[str, list[int]] = {"evolve": [], "best-of-n": []}
    curves: dict[str, list[list[float | None]]] = {"evolve": [], "best-of-n": []}
    with tempfile.TemporaryDirectory() as tmp, LocalExecutor(slots=args.slots) as executor:
        for seed in range(args.seeds):
            for mode in finals:
                cfg = SearchConfig(mode=mode, epochs=args.epochs, ideas=args.ideas, budget_s=args.budget,
                                   baseline_seeds=2, baseline_every_epoch=0, confirm_top=0, seed=seed)
                camp = Campaign.create(Path(tmp) / f"{mode}-{seed}", spec, {"command": "benchmark", "search": vars(cfg)})
                ideator = offline_ideator(spec) if mode == "evolve" else BlindCombinations(spec)
                Search(camp, executor, ideator, cfg).run()
                values = candidate_values(camp)
                curve = best_so_far(values, args.epochs, goal)
                counts[mode].append(len(values))
                curves[mode].append(curve)
                finals[mode].append(curve[-1] if curve and curve[-1] is not None else math.nan)
                print(f"seed {seed} {mode:9s} {len(values):3d} candidate trials, best so far: "
                      + " ".join("-" if v is None else f"{v:.4f}" for v in curve), flush=True)
                camp.close()

    print()
    equal = counts["evolve"] == counts["best-of-n"]
    print(f"{spec.name}: {spec.metric} ({'lower' if goal == 'min' else 'higher'} is better), "
          f"{args.epochs} epochs x {args.ideas} ideas, {args.seeds} paired seeds")
    print(f"candidate trials per seed: evolve {counts['evolve']}, best-of-n {counts['best-of-n']}"
          + ("" if equal else "  UNEQUAL"))
    print(f"{'epoch':>5}  {'evolve':>18}  {'best-of-n':>18}")
    for e in range(args.epochs):
        row = []
        for mode in finals:
            vals = [c[e] for c in curves[mode] if c[e] is not None]
            row.append(f"{statistics.fmean(vals):.4f} ± {statistics.stdev(vals) if len(vals) > 1 else 0:.4f}"
                       if vals else "-")
        print(f"{e + 1:>5}  {row[0]:>18}  {row[1]:>18}")
    diffs = [sign * (a - b) for a, b in zip(finals["evolve"], finals["best-of-n"])]
    if len(diffs) >= 2 and not any(math.isnan(d) for d in diffs):
        p_t, p_perm = paired_tests(diffs)
        print(f"evolve - best-of-n (improvement, per seed): {' '.join(f'{d:+.3f}' for d in diffs)}")
        print(f"RESULT equal_trials={equal} seeds={len(diffs)} mean_improvement={statistics.fmean(diffs):+.4f} "
              f"paired_t_p={p_t:.3g} sign_flip_p={p_perm:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
