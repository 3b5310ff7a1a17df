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


CATALOGUE = '''
[[idea]]
id = "wide"
title = "Width 32"
description = "Wider."
edit = """
train.py
<<<<<<< SEARCH
WIDTH = 8  # channels
=======
WIDTH = 32  # channels
>>>>>>> REPLACE
"""

[[idea]]
id = "deep"
title = "Depth 4 with bf16"
description = "Deeper, which only pays off with bf16 instructions."
requires = ["avx512_bf16"]
edit = """
train.py
<<<<<<< SEARCH
DEPTH = 2  # layers
=======
DEPTH = 4  # layers
>>>>>>> REPLACE
"""
'''


@pytest.mark.slow
def test_catalogue_ideas_needing_missing_hardware_are_skipped_and_flagged(tmp_path):
    from ideaforge.envs import load_env
    from ideaforge.ideate.catalogue import CatalogueIdeator, machine_features
    from ideaforge.ideate.types import Context

    env = quadratic_env(tmp_path / "env")
    (env / "catalogue").mkdir()
    (env / "catalogue" / "ideas.toml").write_text(CATALOGUE)
    spec = load_env(env)
    ctx = Context(spec=spec, files={"train.py": (env / "train.py").read_text()}, baseline_mean=None,
                  baseline_std=None, proposed=[], epoch=0, seed=0)
    without = CatalogueIdeator(spec, features=["avx2"])
    assert [i.title for i in without.initial(ctx, 5)] == ["Width 32"]
    assert without.skipped == [("deep", "Depth 4 with bf16", ["avx512_bf16"])]
    with_bf16 = CatalogueIdeator(spec, features=["avx2", "avx512_bf16"])
    assert sorted(i.title for i in with_bf16.initial(ctx, 5)) == ["Depth 4 with bf16", "Width 32"]
    assert not with_bf16.skipped
    # This machine's own flags decide in a campaign; status and the report name the machine and any skip.
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Test CPU\nflags\t\t: fpu avx2 avx512f\n")
    probed = machine_features(cpuinfo)
    assert probed["features"][:2] == ["avx2", "avx512f"] and probed["cpu"] == "Test CPU"
    (env / "catalogue" / "ideas.toml").write_text(CATALOGUE.replace('"avx512_bf16"', '"amx_bf16"'))
    has_amx = "amx_bf16" in machine_features()["features"]
    camp = run_offline(env, tmp_path / "camp", epochs=1, ideas=2, confirm_top=0, baseline_seeds=2)
    text = "\n".join(status_lines(camp.store))
    assert "machine: " in text
    assert ("skipped on this machine: catalogue idea deep" in text) != has_amx
    from ideaforge.report.data import load_campaign
    from ideaforge.report.html import render
    page = render(load_campaign(camp.root))
    assert ("skipped: needs amx_bf16" in page) != has_amx


def test_catalogue_requires_is_validated(tmp_path):
    from ideaforge.envs import load_env
    from ideaforge.errors import EnvError
    from ideaforge.ideate.catalogue import load_catalogue

    env = quadratic_env(tmp_path / "env")
    (env / "catalogue").mkdir()
    (env / "catalogue" / "ideas.toml").write_text(CATALOGUE.replace('"avx512_bf16"', '"fast_cpu"'))
    with pytest.raises(EnvError, match="requires"):
        load_catalogue(load_env(env))
