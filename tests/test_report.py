"""The HTML report and the live view, on a synthetic campaign written through the Store API.

The browser tests drive Debian's Chromium (/usr/bin/chromium) through Playwright for
Python with the system executable (no browser download); they skip, saying why, where
either is missing.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fakes.campaign_fixture import INJECTION_DESC, INJECTION_TITLE, add_finished_idea, build_campaign
from ideaforge.report import load_campaign, make_server, read_state, write_report
from ideaforge.stats import leaderboard
from ideaforge.store import Store

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PLOTS = ("plot-best-so-far", "plot-distribution", "plot-execution-rate", "plot-failure-kinds")


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> Path:
    return build_campaign(tmp_path_factory.mktemp("report") / "camp", epochs=4, ideas=6)


def _db_leaderboard(root: Path) -> list[dict]:
    store = Store.open_readonly(root)
    try:
        return leaderboard(store, "min")[1]
    finally:
        store.close()


class _Rows(HTMLParser):
    """Collects the leaderboard's rows as (data-idea-id, data-mean) attribute pairs."""

    def __init__(self):
        super().__init__()
        self.rows: list[tuple[int, str]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "lb-row" in (a.get("class") or "").split():
            self.rows.append((int(a["data-idea-id"]), a["data-mean"]))


# -- the file ------------------------------------------------------------------------------
def test_report_is_one_offline_file(campaign, tmp_path):
    out = write_report(campaign, tmp_path / "r.html")
    html = out.read_text()
    # No resource from elsewhere: no remote src/href, no CSS import or url(), one inline script.
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert not re.search(r"@import|url\(", html, re.I)
    assert html.count("<script") == 1 and "<script>" in html  # ours, inline, no src
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    for plot in PLOTS:
        assert f'<svg id="{plot}"' in html


def test_database_text_is_escaped(campaign, tmp_path):
    out = write_report(campaign, tmp_path / "r.html")
    # The page and the per-idea detail scripts beside it (JSON string literals of escaped HTML).
    html = out.read_text() + "".join(json.loads(f'"{m}"') for f in sorted((tmp_path / "r_ideas").glob("*.js"))
                                     for m in re.findall(r'ideaforgeDetail\(\d+, "((?:[^"\\]|\\.)*)"\);', f.read_text()))
    assert INJECTION_TITLE not in html and "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; bigger batch" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in html
    assert "</pre><b>not bold</b>" not in html and "&lt;/pre&gt;&lt;b&gt;not bold&lt;/b&gt;" in html  # diff line
    assert "<b>&amp;</b>" not in html  # log tail


def test_leaderboard_rows_match_the_database(campaign, tmp_path):
    parser = _Rows()
    parser.feed(write_report(campaign, tmp_path / "r.html").read_text())
    want = [(r["idea_id"], repr(r["stats"].mean) if r["stats"] else "") for r in _db_leaderboard(campaign)]
    assert parser.rows == want and len(want) > 10


def test_default_path_and_compare_overlay(campaign, tmp_path):
    other = build_campaign(tmp_path / "bon", epochs=3, ideas=6, mode="best-of-n", seed=3)
    out = write_report(campaign, compare=[other])
    assert out == campaign / "report.html"
    svg = re.search(r'<svg id="plot-best-so-far".*?</svg>', out.read_text(), re.S).group(0)
    assert re.findall(r'data-label="([^"]+)"', svg) == ["evolve", "bon: best-of-N"]


# -- the data --------------------------------------------------------------------------------
def test_campaign_data(campaign):
    data = load_campaign(campaign)
    json.dumps(data)  # plain data all the way down
    s = data["summary"]
    assert (s["env"], s["metric"], s["goal"], s["mode"], s["ideas_per_epoch"]) == ("synthetic-gpt", "val_loss", "min", "evolve", 6)
    store = Store.open_readonly(campaign)
    trials = store.trials()
    seconds = sum(t["train_s"] + t["eval_s"] for t in trials)
    store.close()
    assert s["cpu_hours"] == pytest.approx(seconds / 3600 * 2) and s["gpu_hours"] == pytest.approx(seconds / 3600)
    assert s["spend_usd"] == pytest.approx(0.48) and s["wall_s"] == 5025.0 and s["trials"]["done"] == len(trials)
    assert data["baseline"]["n"] == 3 and len(data["baseline"]["values"]) == 3

    epochs = data["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3]
    best = [e["best_so_far"] for e in epochs]
    assert best == sorted(best, reverse=True)  # min-goal: best so far never gets worse
    ideas = data["ideas"]
    for e in epochs:
        mine = [i for i in ideas if i["epoch"] == e["epoch"]]
        assert sum(e["outcomes"].values()) == e["ideas"] == len(mine)
        assert e["exec_rate"] == pytest.approx(sum(i["outcome"] == "evaluated" for i in mine) / len(mine))
    kinds = {k for e in epochs for k in e["outcomes"]}
    assert {"evaluated", "implement_failed", "failed", "timeout", "invalid", "diverged"} <= kinds

    by_id = {i["id"]: i for i in ideas}
    for i in ideas:  # lineage: children are the inverse of parents
        for p in i["parents"]:
            assert i["id"] in by_id[p]["children"]
    assert any(i["parents"] for i in ideas)
    failed = next(i for i in ideas if i["outcome"] == "timeout")
    assert "killed after 180 s" in failed["trials"][0]["logs"]["train.err"]
    assert failed["trials"][0]["curve"][0]["step"] == 0
    assert next(i for i in ideas if i["outcome"] == "implement_failed")["implementations"][0]["attempts"][0]["stage"] == "apply"


def test_a_campaign_that_just_started(tmp_path):
    store = Store.create_or_open(tmp_path / "new")  # no env snapshot, no trials yet
    store.set_meta("config", {"command": "run", "search": {"mode": "evolve", "epochs": 2, "ideas": 4}})
    store.close()
    html = write_report(tmp_path / "new").read_text()
    assert "No ideas yet" in html and '<svg id="plot-best-so-far"' in html


def test_report_imports_only_what_the_design_allows():
    # DESIGN: report imports the store and its statistics (and the bottom vocabularies), nothing else.
    allowed = ("ideaforge.store", "ideaforge.stats", "ideaforge.errors", "ideaforge.outcomes", "ideaforge.report")
    pkg = Path(__import__("ideaforge.report", fromlist=["x"]).__file__).parent
    for path in pkg.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                top = name.split(".")[0]
                assert (top == "ideaforge" and name.startswith(allowed)) or top in sys.stdlib_module_names, (path.name, name)


# -- the live view over HTTP -------------------------------------------------------------------
@pytest.fixture
def live(tmp_path):
    root = build_campaign(tmp_path / "live", epochs=2, ideas=4, finished=False)
    server = make_server(root, port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield root, server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_live_server_answers_state_and_page(live):
    root, server = live
    assert server.server_address[0] == "127.0.0.1"
    status, body = _get(server.url + "api/state")
    state = json.loads(body)
    assert status == 200 and state == read_state(root) and state["trials_done"] > 0
    status, page = _get(server.url)
    assert status == 200 and b'data-live="1"' in page and b'id="leaderboard"' in page
    assert _get(server.url + "../campaign.db")[0] == 404

    idea_id, trial_id = add_finished_idea(root, "fresh idea", 1.5)
    after = json.loads(_get(server.url + "api/state")[1])
    assert after["version"] != state["version"] and after["last_trial"] == trial_id
    assert f'id="idea-{idea_id}"'.encode() in _get(server.url)[1]


def test_make_server_refuses_a_directory_without_campaign(tmp_path):
    from ideaforge.errors import StoreError
    with pytest.raises(StoreError, match="no campaign here"):
        make_server(tmp_path, port=0)


# -- in a browser -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.problems = []  # page errors, console errors and dialogs (an alert() would mean injected script ran)
    pg.on("pageerror", lambda e: pg.problems.append(f"pageerror: {e}"))
    pg.on("console", lambda m: m.type == "error" and pg.problems.append(f"console: {m.text}"))
    pg.on("dialog", lambda d: (pg.problems.append(f"dialog: {d.message}"), d.dismiss()))
    pg.requests = []
    pg.on("request", lambda r: pg.requests.append(r.url))
    yield pg
    context.close()


def test_report_in_browser(campaign, tmp_path, page):
    out = write_report(campaign, tmp_path / "r.html")
    page.goto(out.as_uri())
    for plot in PLOTS:
        box = page.locator(f"svg#{plot}").bounding_box()
        assert box and box["width"] > 100 and box["height"] > 100, plot
        assert page.locator(f"svg#{plot} circle, svg#{plot} rect").count() > 0, plot

    want = _db_leaderboard(campaign)
    rows = page.locator("#leaderboard tbody tr")
    assert rows.count() == len(want)
    for k, r in enumerate(want):
        cells = rows.nth(k).locator("td")
        assert cells.nth(1).inner_text() == f"#{r['idea_id']}"
        assert cells.nth(2).inner_text() == r["title"]
        if r["stats"]:
            assert float(cells.nth(5).inner_text().split(" ± ")[0]) == pytest.approx(r["stats"].mean, rel=1e-4)

    top = want[0]["idea_id"]
    diff = page.locator(f"#idea-{top} pre.diff")
    assert not diff.is_visible()
    page.locator(f"#leaderboard a[href='#idea-{top}']").click()  # the link opens the idea ...
    diff.wait_for(state="visible", timeout=10_000)  # ... and its details load from the script beside the page
    assert page.locator(f"#idea-{top} pre.diff .d-add").first.is_visible()
    assert "lr = " in diff.inner_text()
    page.locator("#idea-2 > summary").click()
    assert page.locator("#idea-2 .ititle").inner_text() == INJECTION_TITLE
    assert INJECTION_DESC in page.locator("#idea-2 .desc").first.inner_text()
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert page.problems == []
    assert all(u.startswith(("file:", "data:", "about:")) for u in page.requests), page.requests


def test_live_view_updates_in_browser(live, page):
    root, server = live
    page.goto(server.url)
    assert page.locator("svg#plot-best-so-far").bounding_box()["width"] > 100
    page.locator("#idea-1 > summary").click()  # an idea the reader has open stays open across updates
    before = page.locator("#leaderboard tbody tr").count()
    idea_id, _ = add_finished_idea(root, "LIVE: a brand-new idea <i>x</i>", 1.25, epoch=1)
    first = page.locator("#leaderboard tbody tr").first
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and first.get_attribute("data-idea-id") != str(idea_id):
        time.sleep(0.2)
    assert first.get_attribute("data-idea-id") == str(idea_id)  # best metric: top of the board
    assert page.locator("#leaderboard tbody tr").count() == before + 1
    assert first.locator("td.title").inner_text() == "LIVE: a brand-new idea <i>x</i>"
    assert page.locator("#idea-1").evaluate("d => d.open")
    assert "trials done" in page.locator("#live-status").inner_text()
    assert page.problems == []
