"""evolve against evolve-async at equal candidate trials: slot utilisation, wall time, best-so-far.

    nice -n 10 python benchmarks/async_vs_sync.py          # quadratic landscape, trials of 0.3-2.7 s; ~3 min
    python benchmarks/async_vs_sync.py --epochs 5 --ideas 8 --slots 4 --seeds 5

Evolve ideates once per epoch and waits for the epoch's slowest trial before the next
ideation; evolve-async asks for ideas whenever a slot frees. With trials of varying length
(the quadratic environment's `varied` profile: 0.2-1.8 x 1.5 s per idea and seed), the
epoch barrier leaves slots idle. Both modes get the same offline ideator, the same
epochs x ideas candidate trials, the same baseline re-runs (one per later epoch or
generation) and no confirmation; search seed s of both shares its ideator seed, and
the two run in alternating order (neither always on a fresh executor).

Measured per campaign:
- slot utilisation = busy slot-seconds / (slots x wall), busy = the sum over trials of
  claimed -> record written (what holds a slot), wall = the search's whole run;
- best-so-far after k candidate trials, counting trials in the order they finished, at
  k = ideas, 2 x ideas, ..., epochs x ideas: the feedback each mode gets per trial spent.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ideaforge.envs import load_env
from ideaforge.execute.local import LocalExecutor
from ideaforge.ideate import offline_ideator
from ideaforge.search.campaign import Campaign
from ideaforge.search.loop import Search, SearchConfig

HERE = Path(__file__).parent
MODES = {"sync": "evolve", "async": "evolve-async"}


def measure(camp: Campaign, slots: int, wall_s: float, goal: str) -> dict:
    trials = [t for t in camp.store.trials() if t["status"] == "done" and t["started"] and t["ended"]]
    busy = sum(t["ended"] - t["started"] for t in trials)
    candidates = sorted((t for t in trials if t["role"] == "candidate"), key=lambda t: t["ended"])
    curve, best = [], None
    for t in candidates:
        v = t["metric"] if t["outcome"] == "evaluated" else None
        if v is not None and (best is None or (v < best if goal == "min" else v > best)):
            best = v
        curve.append(best)
    return {"util": busy / (slots * wall_s), "wall": wall_s, "curve": curve, "n": len(candidates)}


def mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default=str(HERE / "envs" / "quadratic"))
    ap.add_argument("--profile", default="varied", help="the environment's profile (its trials must vary in length)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--ideas", type=int, default=6)
    ap.add_argument("--slots", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=3, help="search seeds per mode (>= 3)")
    args = ap.parse_args()
    spec = load_env(args.env, profile=args.profile)
    goal = spec.goal
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp, LocalExecutor(slots=args.slots) as executor:
        for seed in range(args.seeds):
            order = list(MODES.items()) if seed % 2 == 0 else list(MODES.items())[::-1]  # neither always first
            for label, mode in order:
                cfg = SearchConfig(mode=mode, epochs=args.epochs, ideas=args.ideas, baseline_seeds=2,
                                   baseline_every_epoch=1, confirm_top=0, seed=seed)
                camp = Campaign.create(Path(tmp) / f"{label}-{seed}", spec, {"command": "benchmark", "search": vars(cfg)})
                t0 = time.time()
                Search(camp, executor, offline_ideator(spec), cfg).run()
                r = measure(camp, args.slots, time.time() - t0, goal)
                runs[label].append(r)
                print(f"seed {seed} {label:5s} {r['n']:3d} candidate trials, util {100 * r['util']:5.1f}%, "
                      f"wall {r['wall']:5.1f} s, best {r['curve'][-1] if r['curve'] else float('nan'):.3f}", flush=True)
                camp.close()

    counts = {label: [r["n"] for r in rs] for label, rs in runs.items()}
    equal = counts["sync"] == counts["async"]
    print()
    print(f"{spec.name} ({args.profile}): {spec.metric} ({'lower' if goal == 'min' else 'higher'} is better), "
          f"{args.epochs} x {args.ideas} candidate trials on {args.slots} slots, {args.seeds} seeds")
    print(f"candidate trials per seed: sync {counts['sync']}, async {counts['async']}" + ("" if equal else "  UNEQUAL"))
    print(f"{'trials':>6}  {'sync best so far':>18}  {'async best so far':>18}")
    n = min(min(counts["sync"]), min(counts["async"]))
    for k in list(range(args.ideas, n + 1, args.ideas)) or [n]:
        row = [mean_sd([r["curve"][k - 1] for r in runs[label]]) for label in MODES]
        print(f"{k:>6}  {row[0]:>18}  {row[1]:>18}")
    summary = {label: (statistics.fmean(r["util"] for r in rs), statistics.fmean(r["wall"] for r in rs),
                       statistics.fmean(r["curve"][n - 1] for r in rs if r["curve"][n - 1] is not None))
               for label, rs in runs.items()}
    for label, (util, wall, best) in summary.items():
        print(f"{label:5s}: slot utilisation {100 * util:.1f}% (per seed: "
              + ", ".join(f"{100 * r['util']:.1f}" for r in runs[label]) + f"), wall {wall:.1f} s")
    (su, sw, sb), (au, aw, ab) = summary["sync"], summary["async"]
    print(f"RESULT equal_trials={equal} sync: util={100 * su:.1f}% wall={sw:.1f}s best={sb:.3f}  "
          f"async: util={100 * au:.1f}% wall={aw:.1f}s best={ab:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
