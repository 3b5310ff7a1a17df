"""Leaderboard statistics: results judged against the baseline measured in this campaign, with its noise.

A bottom layer beside the store (it reads only the store's rows): the search, the
report and the CLI all judge with it.

Never a constant threshold: the baseline is run with several seeds at the start, and
an idea "beats the baseline" only when its mean is better by more than twice the
standard error of the difference (about a one-sided 98% z-test). A single-seed idea
during the search is assumed to have the baseline's seed-to-seed noise.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

Z = 2.0  # standard errors an improvement must clear to count as beyond noise


@dataclass(frozen=True)
class Stats:
    mean: float
    std: float  # sample std (0 for a single value)
    n: int

    @classmethod
    def of(cls, values: list[float]) -> "Stats | None":
        if not values:
            return None
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))

    def fmt(self, digits: int = 4) -> str:
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f} (n={self.n})" if self.n > 1 else f"{self.mean:.{digits}f} (n=1)"


def noise_floor(baseline: Stats) -> float:
    """The seed-to-seed std assumed for one run; a floor keeps two identical seeds from giving 0."""
    return max(baseline.std, 1e-4 * max(abs(baseline.mean), 1.0))


def z_score(idea: Stats, baseline: Stats, goal: str) -> float:
    """Improvement over the baseline in standard errors (positive = better)."""
    sigma_b = noise_floor(baseline)
    sigma_i = idea.std if idea.n > 1 else sigma_b
    se = math.sqrt(sigma_i ** 2 / idea.n + sigma_b ** 2 / baseline.n)
    diff = (baseline.mean - idea.mean) if goal == "min" else (idea.mean - baseline.mean)
    return diff / se


def beats(idea: Stats | None, baseline: Stats | None, goal: str) -> bool:
    if idea is None or baseline is None:
        return False
    return z_score(idea, baseline, goal) > Z


def leaderboard(store: Any, goal: str) -> tuple[Stats | None, list[dict]]:
    """(baseline stats, one row per implemented idea, best first)."""
    trials = store.trial_outcomes()  # no curves, diffs or files: a leaderboard stays cheap at any size
    base = Stats.of([t["metric"] for t in trials if t["role"] == "baseline" and t["outcome"] == "evaluated"])
    impl_to_idea = {r["id"]: r["idea_id"] for r in store.implementation_heads()}
    by_idea: dict[int, list[dict]] = {}
    for t in trials:
        if t["implementation_id"] is not None and t["role"] in ("candidate", "confirm"):
            by_idea.setdefault(impl_to_idea.get(t["implementation_id"]), []).append(t)
    ideas = {i["id"]: i for i in store.idea_heads()}
    rows = []
    for idea_id, ts in by_idea.items():
        idea = ideas.get(idea_id)
        if idea is None:
            continue
        done = [t for t in ts if t["status"] == "done"]
        values = [t["metric"] for t in done if t["outcome"] == "evaluated"]
        st = Stats.of(values)
        outcome = "evaluated" if values else (done[-1]["outcome"] if done else "pending")
        rows.append({
            "idea_id": idea_id, "title": idea["title"], "epoch": idea["epoch"], "kind": idea["kind"],
            "parents": idea["parents"], "stats": st, "outcome": outcome, "trials": len(done),
            "beats": beats(st, base, goal), "z": z_score(st, base, goal) if st and base else None,
        })
    sign = 1 if goal == "min" else -1
    rows.sort(key=lambda r: (r["stats"] is None, sign * r["stats"].mean if r["stats"] else 0.0, r["idea_id"]))
    return base, rows
