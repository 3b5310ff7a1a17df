"""Welch's t-test, the t distribution and Holm's correction against values known in closed form,
and the leaderboard's contemporaneous-baseline comparison on a store with drift."""

from __future__ import annotations

import math

import pytest

from ideaforge.stats import EPOCHS_META, Stats, beats, betainc, holm, leaderboard, t_sf, verdict, welch
from ideaforge.store import Store


def test_regularized_incomplete_beta_closed_forms():
    for x in (0.0, 0.1, 0.5, 0.93, 1.0):
        assert betainc(1.0, 1.0, x) == pytest.approx(x, abs=1e-12)          # I_x(1,1) = x
        assert betainc(3.0, 1.0, x) == pytest.approx(x ** 3, abs=1e-12)     # I_x(a,1) = x^a
        assert betainc(1.0, 2.5, x) == pytest.approx(1 - (1 - x) ** 2.5, abs=1e-12)  # I_x(1,b) = 1-(1-x)^b


def test_t_tail_against_closed_forms_and_tables():
    assert t_sf(1.0, 1) == pytest.approx(0.25, abs=1e-12)   # Cauchy: P(T > 1) = 1/4
    for t in (0.3, 1.5, 4.0):                                # df = 2: P(T > t) = 1/2 - t / (2 sqrt(t^2 + 2))
        assert t_sf(t, 2) == pytest.approx(0.5 - t / (2 * math.sqrt(t * t + 2)), abs=1e-12)
    assert t_sf(-1.5, 2) == pytest.approx(1 - t_sf(1.5, 2), abs=1e-12)
    # Critical values from the standard t table (one-sided tail areas).
    assert t_sf(2.015, 5) == pytest.approx(0.05, abs=2e-5)
    assert t_sf(2.228, 10) == pytest.approx(0.025, abs=2e-5)
    assert t_sf(1.96, 1e7) == pytest.approx(0.025, abs=1e-4)  # large df: the normal


def test_t_tail_with_fractional_df_matches_integrating_the_density():
    df, t = 5.8823529, 1.8973666
    pdf = lambda x: math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi) \
        * (1 + x * x / df) ** (-(df + 1) / 2)
    n, hi = 200000, 400.0  # Simpson on [t, hi]; the tail beyond is ~1e-11
    h = (hi - t) / n
    area = pdf(t) + pdf(hi) + sum((4 if i % 2 else 2) * pdf(t + i * h) for i in range(1, n))
    assert t_sf(t, df) == pytest.approx(area * h / 3, abs=1e-7)


def test_welch_statistic_and_satterthwaite_df():
    # Means 3 and 6, variances 2.5 and 10 over 5 values: t = 3 / sqrt(0.5 + 2), df = 2.5^2 / (0.5^2/4 + 2^2/4).
    w = welch([2, 4, 6, 8, 10], [1, 2, 3, 4, 5], "max")
    assert w.t == pytest.approx(3 / math.sqrt(2.5), abs=1e-12)
    assert w.df == pytest.approx(6.25 / (0.0625 + 1.0), abs=1e-12)
    assert w.p == pytest.approx(t_sf(w.t, w.df))
    lower = welch([2, 4, 6, 8, 10], [1, 2, 3, 4, 5], "min")  # the same data, the other goal: worse
    assert lower.t == pytest.approx(-w.t) and lower.p == pytest.approx(1 - w.p)
    assert welch([1.0], [1.0, 2.0], "max") is None


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5]
    assert holm([0.2, 0.9, 0.6]) == pytest.approx([0.6, 1.0, 1.0])  # monotone and capped at 1


def _drifting_store(root):
    """Baseline 1.0 at the start (a loaded machine, max goal) and 2.0 later; one idea at 2.0."""
    store = Store.create_or_open(root)
    with store.tx():
        epochs = {}
        for seed, value in enumerate([1.00, 1.01, 0.99]):  # epoch 0
            store.finish_trial(store.add_trial("baseline", seed, 5.0), {"outcome": "evaluated", "metric": value})
        for seed, (epoch, value) in enumerate([(3, 2.00), (3, 2.01), (3, 1.99)], start=3):
            tid = store.add_trial("baseline", seed, 5.0)
            epochs[tid] = epoch
            store.finish_trial(tid, {"outcome": "evaluated", "metric": value})
        idea = store.add_idea(2, "initial", "same as the baseline", "")
        impl = store.add_implementation(idea, True, "", {}, [], None)
        store.finish_trial(store.add_trial("candidate", 0, 5.0, impl), {"outcome": "evaluated", "metric": 2.005})
        for seed, value in ((1, 1.995), (2, 2.0)):
            tid = store.add_trial("confirm", seed, 5.0, impl)
            epochs[tid] = 3
            store.finish_trial(tid, {"outcome": "evaluated", "metric": value})
        store.set_meta(EPOCHS_META, epochs)
    return store


def test_an_idea_is_judged_against_the_baseline_of_its_own_epochs(tmp_path):
    store = _drifting_store(tmp_path / "camp")
    base, rows = leaderboard(store, "max")
    assert base.n == 6  # the overall baseline, drift and all, would call this idea a winner ...
    (row,) = rows
    assert row["baseline"].n == 3 and row["baseline"].mean == pytest.approx(2.0)  # ... the epochs 2-3 baseline
    assert row["test"] == "welch-holm" and not row["beats"]
    assert row["welch"].p > 0.05 and not verdict(row).startswith("beats")
    start = Stats.of([1.00, 1.01, 0.99])  # judged against the start-of-campaign baseline, drift made it a winner
    assert beats(row["stats"], start, "max")
    store.close()

