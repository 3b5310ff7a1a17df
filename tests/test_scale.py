"""Controller cost against campaign size: de-duplication without a rescan, `status` that reads no
curves or diffs, a report whose page lists ideas and loads each idea's details on demand."""

from __future__ import annotations

import importlib
import json
import random
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

D = importlib.import_module("ideaforge.ideate.dedup")  # the package's `dedup` is the function
from ideaforge.ideate.types import Idea

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import scale  # noqa: E402  (benchmarks/scale.py: the synthetic campaign builder)

WORDS = ("learning rate cosine decay warmup rmsnorm layernorm rope attention heads dropout weight normalise "
         "normalize advantages clip gradient batch size longer shorter schedule linear use replace with instead").split()
EDITS = [f"train.py\n<<<<<<< SEARCH\nx = {i}\n=======\nx = {i + 1}\n>>>>>>> REPLACE\n" for i in range(6)]


def _corpus_item(rng: random.Random):
    """A previous idea or text of every shape the rules distinguish: texts naming titles, ideas with and
    without edits (some multi-block), empty texts."""
    t = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(0, 4)))
    more = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(0, 6)))
    if rng.random() < 0.3:
        return rng.choice([t, f"{t}: {more}", f"{t} — {more}", f"{t} + {more}", ""])
    edit = rng.choice(EDITS + [None] * 3) if rng.random() < 0.6 else None
    if edit and rng.random() < 0.3:
        edit += rng.choice(EDITS)
    return Idea(t, more, edit=edit)


def test_index_makes_the_same_decisions_as_the_scan():
    rng = random.Random(7)
    verdicts = []
    for _ in range(300):
        previous = [_corpus_item(rng) for _ in range(rng.randrange(0, 30))]
        index = D.DedupIndex(previous)
        for _ in range(10):
            q = _corpus_item(rng)
            q = Idea(q, "") if isinstance(q, str) else q
            want = D.is_duplicate(q, previous)
            assert index.is_duplicate(q) == want, (q, previous)
            verdicts.append(want)
    assert 0.2 < sum(verdicts) / len(verdicts) < 0.8  # both answers well represented
    # dedup() keeps the same ideas, in the same order, with or without a kept index.
    previous = [_corpus_item(rng) for _ in range(40)]
    batch = [Idea(str(x), "") if isinstance(x, str) else x for x in (_corpus_item(rng) for _ in range(40))]
    old = []
    for idea in batch:
        if not D.is_duplicate(idea, previous + old):
            old.append(idea)
    assert D.dedup(batch, previous) == old == D.DedupIndex(previous).keep(batch)


def test_checking_new_ideas_tokenises_only_them(monkeypatch):
    rng = random.Random(1)
    texts = [scale._text(rng, 6) + " " + scale._text(rng, 60) for _ in range(3000)]
    index = D.DedupIndex(texts)
    calls = []
    real = D.tokens
    monkeypatch.setattr(D, "tokens", lambda text: calls.append(text) or real(text))
    new = [Idea(scale._text(rng, 6), scale._text(rng, 40)) for _ in range(8)]
    index.keep(new)
    assert len(calls) <= 8 * len(new)  # a few per new idea (checks and adds), none per campaign idea
    calls.clear()
    D.dedup(new, texts)  # the one-shot form indexes what it is given once, never once per new idea
    assert len(calls) <= 2 * len(texts) + 8 * len(new)


def test_the_campaign_loop_keeps_one_index(tmp_path):
    """Search builds its dedup index once, from the database, and adds what it stores."""
    from ideaforge.store import Store
    from ideaforge.search import loop

    store = Store.create_or_open(tmp_path / "camp")
    for i in range(5):
        store.add_idea(0, "initial", f"idea number {i}", "some words about it")
    fake = loop.Search.__new__(loop.Search)  # only what _store_ideas touches
    fake.store, fake._dedup, fake.emit = store, None, lambda kind, info: None
    fake.ideator = type("I", (), {"name": "t"})()
    fake._store_ideas(1, "explore", [Idea("idea number 2", "some words about it"), Idea("fresh thing", "x y")],
                      None, 2)
    index = fake._dedup
    assert len(index) == 6  # five read once from the store, plus the one kept
    fake._store_ideas(1, "exploit", [Idea("fresh thing", "x y"), Idea("other", "z")], None, 2)
    assert fake._dedup is index and len(index) == 7
    assert [i["title"] for i in store.ideas()][-2:] == ["fresh thing", "other"]
    assert store.ideations(1)["explore"]["kept"] == 1 and store.ideations(1)["exploit"]["returned"] == 2


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scale") / "camp"
    scale.build(root, 150, logs=True)
    return root


def _statements(store) -> list[str]:
    seen: list[str] = []
    store.conn.set_trace_callback(seen.append)
    return seen


def test_status_reads_no_curves_diffs_or_files(synthetic):
    from ideaforge.report.text import status_lines
    from ideaforge.store import Store

    store = Store.open_readonly(synthetic)
    seen = _statements(store)
    lines = status_lines(store, "synthetic", "val_loss", "min", 1, 0)
    assert any(line.strip().startswith("1 ") for line in lines)  # a leaderboard row
    big = [s for s in seen if "SELECT *" in s and ("trials" in s or "implementations" in s)]
    assert big == [], big  # every trial's curve and every implementation's files would be read


def test_report_page_lists_ideas_and_loads_details_per_idea(synthetic, tmp_path):
    from ideaforge.report import write_report

    out = write_report(synthetic, tmp_path / "r.html")
    page = out.read_text()
    scripts = sorted((tmp_path / "r_ideas").glob("*.js"))
    details = "".join(f.read_text() for f in scripts)
    assert page.count('class="idea"') == 150 and 'class="diff"' not in page
    # list entries, not diffs and logs (~14 KB an idea in the scripts); plus the analyses section, whose
    # size grows with epochs, not ideas (~23 KB at this campaign's 10 epochs)
    assert len(page) < 150 * 3_000 + 25_000
    assert details.count("ideaforgeDetail(") == 150 and details.count('class=\\"diff\\"') >= 100
    assert len(scripts) == len({i // 32 for i in range(1, 151)})


def test_live_server_answers_one_ideas_details(synthetic):
    from ideaforge.report import make_server

    server = make_server(synthetic, port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        page = urllib.request.urlopen(server.url, timeout=30).read().decode()
        assert 'data-src="ideas/7.js?v=' in page and 'class="diff"' not in page
        js = urllib.request.urlopen(server.url + "ideas/7.js", timeout=30).read().decode()
        assert js.startswith("ideaforgeDetail(7, ") and 'class=\\"diff\\"' in js
        html = json.loads(js[len("ideaforgeDetail(7, "):].rstrip().rstrip(";").rstrip(")"))
        assert "<table" in html and "trial" in html
        missing = urllib.request.urlopen(server.url + "ideas/99999.js", timeout=30).read().decode()
        assert "gone from the database" in missing
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
