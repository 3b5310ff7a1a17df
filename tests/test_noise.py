"""Noise handled in the search: baseline trials re-run in every epoch and at the confirmation,
candidates judged against them, and `status` showing the corrected verdict and the drift table."""

from __future__ import annotations

import pytest
from test_search import quadratic_env, run_offline

from ideaforge.report.text import status_lines
from ideaforge.stats import leaderboard, trial_epochs


@pytest.mark.slow
def test_baselines_run_in_every_epoch_and_status_shows_the_corrected_test(tmp_path):
    camp = run_offline(quadratic_env(tmp_path / "env"), tmp_path / "camp", epochs=3, ideas=3, confirm_top=2,
                       confirm_seeds=3, baseline_every_epoch=1)
    store = camp.store
    epochs = trial_epochs(store)
    baselines = store.trials(role="baseline")
    by_epoch = {}
    for t in baselines:
        by_epoch.setdefault(epochs.get(t["id"], 0), []).append(t)
    assert {e: len(ts) for e, ts in by_epoch.items()} == {0: 3, 1: 1, 2: 1, 3: 3}  # 3 = the confirmation
    assert len({t["seed"] for t in baselines}) == len(baselines)  # each a fresh seed
    assert all(epochs[t["id"]] == 3 for t in store.trials(role="confirm"))
    _, rows = leaderboard(store, "max")
    confirmed = [r for r in rows if r["test"] == "welch-holm"]
    assert len(confirmed) == 2 and all(r["stats"].n == 3 for r in confirmed)
    n_compared = sum(r["stats"] is not None for r in rows)
    assert all(r["p_adj"] >= r["welch"].p for r in confirmed)
    best = rows[0]
    assert best["beats"] and best["p_adj"] < 0.05  # the quadratic's best ideas are far beyond its noise
    text = "\n".join(status_lines(store))
    assert "contemporaneous baseline" in text and f"Holm-corrected over the {n_compared} ideas" in text
    assert "beats, beyond noise (p=" in text
    drift_rows = [line.split() for line in text.splitlines() if line.split()[1:2] == ["baseline"]]
    assert [int(r[0]) for r in drift_rows] == [0, 1, 2, 3]
    assert all(r[4] == "1" for r in drift_rows)  # steps: the quadratic reports step=1
    # The report says the same: the same-epoch baseline, p (Holm) and the drift table.
    from ideaforge.report.data import load_campaign
    from ideaforge.report.html import render
    data = load_campaign(camp.root)
    top = data["leaderboard"][0]
    assert top["test"] == "welch-holm" and top["p_adj"] < 0.05 and top["near"]["n"] >= 2
    assert [d["epoch"] for d in data["drift"] if d["side"] == "baseline"] == [0, 1, 2, 3]
    page = render(data)
    assert 'id="drift"' in page and "p (Holm)" in page and f'{top["p"]:.3g} ({top["p_adj"]:.3g})' in page
