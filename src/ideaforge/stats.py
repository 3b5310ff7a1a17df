"""Leaderboard statistics: results judged against the baseline measured in this campaign, with its noise.

A bottom layer beside the store (it reads only the store's rows): the search, the
report and the CLI all judge with it.

Never a constant threshold, and never only the start-of-campaign baseline: the baseline
is re-run during the campaign (trials of role `baseline`, each with the epoch it ran
in, kept in the meta key `trial_epochs`), and an idea is compared with the baseline
trials *contemporaneous* with its own (epochs within ±1 of its trials'; all baseline
trials when fewer than two are that close). A load change between the start and a
later epoch then moves both sides, not only the candidate.

Two tests:
- during the search (one seed per idea): a z-score against the contemporaneous
  baseline mean, with the seed-to-seed std of all baseline trials (drift only widens
  it), `beats` when z > 2 — cheap, uncorrected, used to pick parents for exploit ideas;
- once an idea has ≥ 2 evaluated seeds (the confirmation): Welch's t-test against its
  contemporaneous baseline trials, one-sided, with Holm's correction over every idea
  compared (ideas without a test count with p = 1). That verdict is the leaderboard's
  "beats, beyond noise".
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from typing import Any

Z = 2.0  # standard errors an improvement must clear to count as beyond noise during the search
ALPHA = 0.05  # family-wise error rate of the corrected test at confirmation
EPOCHS_META = "trial_epochs"  # meta key: {trial id: epoch} for baseline and confirm trials


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


def z_score(idea: Stats, baseline: Stats, goal: str, noise: Stats | None = None) -> float:
    """Improvement over the baseline in standard errors (positive = better).

    `noise` (default: `baseline`) gives the seed-to-seed std: a contemporaneous baseline of
    one or two trials has a mean worth comparing with but no usable spread of its own."""
    sigma_b = noise_floor(noise or baseline)
    sigma_i = idea.std if idea.n > 1 else sigma_b
    se = math.sqrt(sigma_i ** 2 / idea.n + sigma_b ** 2 / baseline.n)
    diff = (baseline.mean - idea.mean) if goal == "min" else (idea.mean - baseline.mean)
    return diff / se


def beats(idea: Stats | None, baseline: Stats | None, goal: str) -> bool:
    if idea is None or baseline is None:
        return False
    return z_score(idea, baseline, goal) > Z


# -- Welch's t-test and Holm's correction -----------------------------------------------------
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln_front) * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` (real, > 0) degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


@dataclass(frozen=True)
class Welch:
    t: float   # improvement over the baseline in standard errors (positive = better)
    df: float  # Welch–Satterthwaite degrees of freedom
    p: float   # one-sided: P(an improvement this large | no true improvement)


def welch(idea: list[float], baseline: list[float], goal: str) -> Welch | None:
    """One-sided Welch t-test that `idea` is better than `baseline`; None with < 2 values on a side."""
    if len(idea) < 2 or len(baseline) < 2:
        return None
    a, b = Stats.of(idea), Stats.of(baseline)
    assert a is not None and b is not None
    va, vb = a.std ** 2 / a.n, b.std ** 2 / b.n
    diff = (b.mean - a.mean) if goal == "min" else (a.mean - b.mean)
    if va + vb == 0.0:  # identical values on both sides: no noise to test against
        return Welch(math.copysign(math.inf, diff) if diff else 0.0, float(a.n + b.n - 2), 0.0 if diff > 0 else 1.0)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
    return Welch(t, df, t_sf(t, df))


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input's order (reject where adjusted < alpha)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


# -- the leaderboard ---------------------------------------------------------------------------
def trial_epochs(store: Any) -> dict[int, int]:
    """Epoch of each baseline and confirm trial, as the search recorded it."""
    return {int(k): int(v) for k, v in (store.get_meta(EPOCHS_META) or {}).items()}


def _epoch_of(t: dict, recorded: dict[int, int], idea_epoch: dict[int, int], impl_to_idea: dict) -> int | None:
    if t["id"] in recorded:
        return recorded[t["id"]]
    if t["role"] == "baseline":
        return 0  # queued with the campaign, run alongside epoch 0's candidates
    if t["role"] == "candidate":
        return idea_epoch.get(impl_to_idea.get(t["implementation_id"]))
    return None


def _near(epochs: set[int], base_by_epoch: list[tuple[int | None, float]]) -> list[float]:
    """Baseline values within ±1 epoch of any of `epochs`; all of them when fewer than two are."""
    near = [v for e, v in base_by_epoch if e is not None and any(abs(e - x) <= 1 for x in epochs)]
    return near if len(near) >= 2 else [v for _, v in base_by_epoch]


def leaderboard(store: Any, goal: str) -> tuple[Stats | None, list[dict]]:
    """(baseline stats over all its trials, one row per implemented idea, best first).

    Each row: stats, z (vs the contemporaneous baseline), `baseline` (the contemporaneous
    baseline's Stats), welch (Welch | None), p_adj (Holm over all rows, None without a test),
    test ("welch-holm" once ≥ 2 seeds, else "z") and `beats` from that test.
    """
    trials = store.trial_outcomes()  # no curves, diffs or files: a leaderboard stays cheap at any size
    impl_to_idea = {r["id"]: r["idea_id"] for r in store.implementation_heads()}
    ideas = {i["id"]: i for i in store.idea_heads()}
    idea_epoch = {i: h["epoch"] for i, h in ideas.items()}
    recorded = trial_epochs(store)
    base_by_epoch = [(_epoch_of(t, recorded, idea_epoch, impl_to_idea), t["metric"]) for t in trials
                     if t["role"] == "baseline" and t["outcome"] == "evaluated"]
    base = Stats.of([v for _, v in base_by_epoch])
    by_idea: dict[int, list[dict]] = {}
    for t in trials:
        if t["implementation_id"] is not None and t["role"] in ("candidate", "confirm"):
            by_idea.setdefault(impl_to_idea.get(t["implementation_id"]), []).append(t)
    rows = []
    for idea_id, ts in by_idea.items():
        idea = ideas.get(idea_id)
        if idea is None:
            continue
        done = [t for t in ts if t["status"] == "done"]
        ok = [t for t in done if t["outcome"] == "evaluated"]
        values = [t["metric"] for t in ok]
        st = Stats.of(values)
        epochs = {e for t in ok if (e := _epoch_of(t, recorded, idea_epoch, impl_to_idea)) is not None}
        near = _near(epochs or {idea["epoch"]}, base_by_epoch)
        contemporaneous = Stats.of(near)
        z = z_score(st, contemporaneous, goal, noise=base) if st and contemporaneous and base else None
        outcome = "evaluated" if values else (done[-1]["outcome"] if done else "pending")
        rows.append({
            "idea_id": idea_id, "title": idea["title"], "epoch": idea["epoch"], "kind": idea["kind"],
            "parents": idea["parents"], "stats": st, "outcome": outcome, "trials": len(done),
            "z": z, "baseline": contemporaneous, "welch": welch(values, near, goal),
        })
    _judge(rows)
    sign = 1 if goal == "min" else -1
    rows.sort(key=lambda r: (r["stats"] is None, sign * r["stats"].mean if r["stats"] else 0.0, r["idea_id"]))
    return base, rows


def _judge(rows: list[dict]) -> None:
    """Holm over every idea with a result (the number compared); `beats` from it where tested."""
    compared = [r for r in rows if r["stats"] is not None]
    adjusted = holm([r["welch"].p if r["welch"] else 1.0 for r in compared])
    for r in rows:
        r["p_adj"], r["test"], r["beats"] = None, "z", r["z"] is not None and r["z"] > Z
    for r, p_adj in zip(compared, adjusted):
        if r["welch"] is not None:
            r["p_adj"], r["test"], r["beats"] = p_adj, "welch-holm", p_adj < ALPHA and r["welch"].t > 0


def verdict(row: dict) -> str:
    """The leaderboard's words for one row: the corrected test once it has one, else the search's z."""
    w = row.get("welch")
    if row.get("test") == "welch-holm" and w is not None:
        label = "beats, beyond noise" if row["beats"] else "within noise" if w.t > 0 else "worse or equal"
        return f"{label} (p={w.p:.3g}, Holm {row['p_adj']:.3g})"
    if row.get("z") is None:
        return "not compared"
    label = "beats (1 seed, z)" if row["beats"] else "within noise" if row["z"] > 0 else "worse or equal"
    return f"{label} (z={row['z']:.1f})"


# -- drift: what each trial got to do, epoch by epoch ------------------------------------------
def trial_work(t: dict) -> dict[str, float | None]:
    """Steps and tokens a trial reported (its learning curve's last point) and its CPU seconds.

    Tokens come from a `tokens` key, else `tokens_per_s` x `elapsed_s`; None where not reported."""
    last = t["curve"][-1] if t.get("curve") else {}
    tokens = last.get("tokens")
    if tokens is None and last.get("tokens_per_s") is not None and last.get("elapsed_s") is not None:
        tokens = float(last["tokens_per_s"]) * float(last["elapsed_s"])
    return {"steps": last.get("step"), "tokens": tokens, "cpu_s": t.get("train_cpu_s")}


def _median(values: list) -> float | None:
    values = [float(v) for v in values if v is not None]
    return statistics.median(values) if values else None


def drift(store: Any) -> list[dict]:
    """Per epoch and side (baseline | candidates): evaluated trials, metric mean and the median
    steps / tokens / CPU seconds — a baseline that trained 6 steps beside candidates that trained
    150 shows here, not as a false "beats"."""
    impl_to_idea = {r["id"]: r["idea_id"] for r in store.implementation_heads()}
    idea_epoch = {i["id"]: i["epoch"] for i in store.idea_heads()}
    recorded = trial_epochs(store)
    groups: dict[tuple[int, str], list[dict]] = {}
    for t in store.trial_work_rows():  # slim rows: the curve's last point only
        if t["role"] not in ("baseline", "candidate", "confirm"):
            continue
        epoch = _epoch_of(t, recorded, idea_epoch, impl_to_idea)
        if epoch is not None:
            groups.setdefault((epoch, "baseline" if t["role"] == "baseline" else "candidates"), []).append(t)
    out = []
    for (epoch, side), ts in sorted(groups.items()):
        ok = [t for t in ts if t["outcome"] == "evaluated"]
        work = [trial_work(t) for t in ts]
        st = Stats.of([t["metric"] for t in ok])
        out.append({"epoch": epoch, "side": side, "trials": len(ts), "evaluated": len(ok),
                    "mean": st.mean if st else None, "std": st.std if st else None,
                    **{k: _median([w[k] for w in work]) for k in ("steps", "tokens", "cpu_s")}})
    return out


# -- similarity of idea texts (the RL analysis and the report's diversity per epoch) ------------
_WORD = re.compile(r"[a-z0-9_.]+")


def tokens(text: str) -> frozenset[str]:
    """Lower-cased words, numbers and dotted names of a text, as a set."""
    return frozenset(_WORD.findall((text or "").lower()))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    both = len(a & b)  # |a ∪ b| from the sizes: one set operation, not two
    return both / (len(a) + len(b) - both)


def mean_pairwise_similarity(texts: list[str]) -> float | None:
    """Mean token-Jaccard similarity over every pair of texts (None for fewer than two): 1 = all alike."""
    toks = [tokens(t) for t in texts]
    n = len(toks)
    if n < 2:
        return None
    total = sum(jaccard(toks[i], toks[j]) for i in range(n) for j in range(i + 1, n))
    return total / (n * (n - 1) / 2)
