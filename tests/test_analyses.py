"""The reference's analyses in the report: kinds of edit, execution rate per epoch and kind,
diversity per epoch, best so far per model (one campaign and `--compare`), in HTML and text."""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

import pytest

from fakes.campaign_fixture import _trial, build_campaign
from ideaforge.report import load_campaign, write_report
from ideaforge.report.analyses import (HYPERPARAMETER, NO_CHANGE, NOT_IMPLEMENTED, STRUCTURAL, analyse,
                                       compare_code, edit_kind, edit_target)
from ideaforge.report.text import status_lines
from ideaforge.stats import mean_pairwise_similarity
from ideaforge.store import Store

BASE = 'import math\nLR = 1e-3  # learning rate\nWIDTH = 64\n\n\ndef act(x):\n    return math.tanh(x) * 2\n'


def _diff(before: str, after: str, path: str = "train.py") -> str:
    return "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True), f"a/{path}", f"b/{path}"))


# -- the classifier -----------------------------------------------------------------------------
@pytest.mark.parametrize("before, after, kind", [
    ("LR = 1e-3\n", "LR = 3e-3\n", HYPERPARAMETER),
    ("LR = 1e-3\n", "LR = 0.001\n", NO_CHANGE),                  # the same value, spelled otherwise
    ("LR = 1e-3\nW = 4\n", "LR = 0.001\nW = 8\n", HYPERPARAMETER),
    ("x = 1\n", "x = -1\n", HYPERPARAMETER),                      # a sign is part of the literal
    ("f(a, 2)\n", "f(a, -2.5)\n", HYPERPARAMETER),
    ("y = a - 1\n", "y = a - 2\n", HYPERPARAMETER),               # a subtraction keeps its operator
    ("y = a - 1\n", "y = a + 1\n", STRUCTURAL),
    ("y = a - 1\n", "y = a - b\n", STRUCTURAL),
    ("x = 1\n", "y = 1\n", STRUCTURAL),                           # a changed identifier
    ("x = 1  # one\n", "x = 1  # uno\n", NO_CHANGE),              # a comment-only change
    ("x = 1\n", "x = 1\n# a note\n\n", NO_CHANGE),
    ("x  =  1\n", "x = 1\n", NO_CHANGE),
    ("x = 1\n", "    x = 1\n", STRUCTURAL),                       # moved into a block
    ('s = "#1"\n', 's = "#2"\n', STRUCTURAL),                     # a '#' in a string is no comment
    ("f(a=1, b=2)\n", "f(a=1,\n  b=3)\n", HYPERPARAMETER),       # re-wrapped, one number moved
    ("x = 10\n", "x = 1_0\n", NO_CHANGE),
    ("x = 0x10\n", "x = 32\n", HYPERPARAMETER),
    ("x = 2\n", "x = 2 * 2\n", STRUCTURAL),
])
def test_compare_code(before, after, kind):
    assert compare_code(before, after) == kind


def test_fragments_the_tokenizer_cannot_read_fall_back_to_regex():
    # an unclosed bracket and an unterminated triple quote: what a diff's changed lines can look like
    assert compare_code("x = f(1,\n", "x = f(2,\n") == HYPERPARAMETER
    assert compare_code('doc = """lr 1\n', 'doc = """lr 2\n') == HYPERPARAMETER
    assert compare_code("x = f(1,\n", "x = g(1,\n") == STRUCTURAL
    assert compare_code("A = 1  # c\n", "A = 2  # d\n", python=False) == HYPERPARAMETER


def test_edit_kind_of_whole_diffs():
    assert edit_kind(_diff(BASE, BASE.replace("1e-3", "3e-4").replace("64", "128"))) == HYPERPARAMETER
    assert edit_kind(_diff(BASE, BASE.replace("tanh", "sin"))) == STRUCTURAL
    assert edit_kind(_diff(BASE, BASE.replace("1e-3", "3e-4").replace("* 2", "* 2 + 1"))) == STRUCTURAL
    assert edit_kind(_diff(BASE, BASE.replace("# learning rate", "# step size"))) == NO_CHANGE
    assert edit_kind(_diff(BASE, BASE + "\n\ndef gelu(x):\n    return x\n")) == STRUCTURAL
    assert edit_kind(_diff("", "X = 1\n", "extra.py").replace("a/extra.py", "/dev/null")) == STRUCTURAL  # a new file
    assert edit_kind("") == NO_CHANGE
    assert edit_target(_diff(BASE, BASE.replace("1e-3", "3e-4").replace("64", "128"))) == "LR + WIDTH"
    assert edit_target(_diff(BASE, BASE + "\n\ndef gelu(x):\n    return x\n")) == "def gelu + return x"  # insertion


# -- the analyses on a small synthetic store -------------------------------------------------------
def _campaign(root: Path, model: str | None = "anthropic:claude-x", goal: str = "min", second: str | None = None) -> Path:
    """Two epochs: epoch 0 two hyper-parameter ideas (one fails) and a structural one; epoch 1 a
    structural idea, an idea that never became code, and a copy-cat of an epoch-0 text."""
    store = Store.create_or_open(root)
    store.set_env_facts({"name": "tiny", "metric": "loss", "goal": goal, "cpus": 1, "gpus": 0})
    for s in range(3):
        _trial(store, None, "baseline", s, 2.0 + 0.01 * s, "evaluated", None)
    origin = {"model": model, "prompt": "x"} if model else {"ideator": "offline"}
    specs = [  # epoch, title, description, edited file or None (not implemented), metric or None (failed)
        (0, "Raise the learning rate", "LR from 1e-3 to 3e-3.", BASE.replace("1e-3", "3e-3"), 1.90),
        (0, "Wider model", "WIDTH 64 to 128.", BASE.replace("64", "128"), None),
        (0, "Sine activation", "Use sin instead of tanh.", BASE.replace("tanh", "sin"), 1.80),
        (1, "Swish activation", "Replace tanh by x * sigmoid(x).", BASE.replace("math.tanh(x)", "x / (1 + math.exp(-x))"), 1.70),
        (1, "Rotary embeddings", "Add RoPE to attention.", None, None),
        (1, "Raise the learning rate", "LR from 1e-3 to 3e-3.", BASE.replace("1e-3", "3e-3").replace("64", "96"), 1.95),
    ]
    for n, (epoch, title, desc, after, metric) in enumerate(specs):
        mine = {"model": second, "prompt": "x"} if second and n % 2 else origin  # a resume with another --model
        idea = store.add_idea(epoch, "initial" if epoch == 0 else "exploit", title, desc, origin=mine)
        if after is None:
            store.add_implementation(idea, False, "", {}, [], "no edit applied")
            store.set_idea_status(idea, "implement_failed")
            continue
        impl = store.add_implementation(idea, True, _diff(BASE, after), {"train.py": after}, [], None)
        store.set_idea_status(idea, "implemented")
        _trial(store, impl, "candidate", 0, metric, "evaluated" if metric is not None else "failed",
               None if metric is not None else "exit code 1")
    store.close()
    return root


def _analyse(root: Path, goal: str = "min") -> dict:
    store = Store.open_readonly(root)
    try:
        return analyse(store, goal)
    finally:
        store.close()


def test_execution_rate_and_kinds_per_epoch(tmp_path):
    a = _analyse(_campaign(tmp_path / "c"))
    e0, e1 = a["by_epoch"]
    assert (e0["ideas"], e0["evaluated"], e1["ideas"], e1["evaluated"]) == (3, 2, 3, 2)
    assert e0["exec_rate"] == pytest.approx(2 / 3)
    assert e0["kinds"] == {HYPERPARAMETER: 2, STRUCTURAL: 1, NO_CHANGE: 0, NOT_IMPLEMENTED: 0}
    assert e0["kind_rates"][HYPERPARAMETER] == [1, 2] and e0["kind_rates"][STRUCTURAL] == [1, 1]
    assert e1["kinds"] == {HYPERPARAMETER: 1, STRUCTURAL: 1, NO_CHANGE: 0, NOT_IMPLEMENTED: 1}
    assert e1["kind_rates"][NOT_IMPLEMENTED] == [0, 1]
    edit = {g["label"]: g for g in a["by_kind"]["edit"]}
    assert (edit[HYPERPARAMETER]["ideas"], edit[HYPERPARAMETER]["evaluated"]) == (3, 2)
    assert (edit[STRUCTURAL]["ideas"], edit[STRUCTURAL]["evaluated"], edit[STRUCTURAL]["best"]) == (2, 2, 1.70)
    assert NO_CHANGE not in edit  # kinds with no idea are left out
    prompt = {g["label"]: g["ideas"] for g in a["by_kind"]["prompt"]}
    assert prompt == {"initial": 3, "exploit": 3}
    assert [g["label"] for g in a["by_kind"]["model"]] == ["anthropic:claude-x"]
    assert a["ideas"][5]["outcome"] == "implement_failed" and a["ideas"][2]["outcome"] == "failed"


def test_diversity_per_epoch(tmp_path):
    a = _analyse(_campaign(tmp_path / "c"))
    e0, e1 = a["by_epoch"]
    assert (e0["distinct"], e1["distinct"]) == (3, 3)
    assert (e0["targets"], e1["targets"]) == (3, 2)  # LR, WIDTH, the return line | the return line, LR + WIDTH
    texts0 = ["Raise the learning rate LR from 1e-3 to 3e-3.", "Wider model WIDTH 64 to 128.",
              "Sine activation Use sin instead of tanh."]
    assert e0["similarity"] == pytest.approx(mean_pairwise_similarity(texts0))
    assert mean_pairwise_similarity(["a b", "a b"]) == 1.0 and mean_pairwise_similarity(["a"]) is None
    assert mean_pairwise_similarity(["a b", "c d"]) == 0.0


def test_best_so_far_per_model_and_offline(tmp_path):
    a = _analyse(_campaign(tmp_path / "c"))
    assert a["models"] == [{"label": "anthropic:claude-x", "points": [[0, 1.80], [1, 1.70]]}]
    b = _analyse(_campaign(tmp_path / "o", model=None))
    assert [s["label"] for s in b["models"]] == ["offline"]


def test_one_campaign_with_two_models(tmp_path):
    a = _analyse(_campaign(tmp_path / "c", second="openai:gpt-x"))
    # ideas 1, 3, 5 (1.90, 1.80, implement_failed) from claude; 2, 4, 6 (failed, 1.70, 1.95) from gpt
    assert a["models"] == [{"label": "anthropic:claude-x", "points": [[0, 1.80], [1, 1.80]]},
                           {"label": "openai:gpt-x", "points": [[0, None], [1, 1.70]]}]
    by = {g["label"]: (g["ideas"], g["evaluated"]) for g in a["by_kind"]["model"]}
    assert by == {"anthropic:claude-x": (3, 2), "openai:gpt-x": (3, 2)}
    page = write_report(tmp_path / "c", tmp_path / "r.html").read_text()
    svg = re.search(r'<svg id="plot-models".*?</svg>', page, re.S).group(0)
    assert re.findall(r'data-label="([^"]+)"', svg) == ["anthropic:claude-x", "openai:gpt-x"]


def test_compare_draws_one_curve_per_campaign_and_model(tmp_path):
    one = _campaign(tmp_path / "one", model="openai:gpt-x")
    two = _campaign(tmp_path / "two", model=None)
    out = write_report(one, tmp_path / "r.html", compare=[two])
    page = out.read_text()
    svg = re.search(r'<svg id="plot-models".*?</svg>', page, re.S).group(0)
    assert re.findall(r'data-label="([^"]+)"', svg) == ["one: openai:gpt-x", "two: offline"]
    # a campaign whose metric runs the other way is left out of the plot
    up = _campaign(tmp_path / "up", goal="max")
    svg = re.search(r'<svg id="plot-models".*?</svg>', write_report(one, tmp_path / "s.html", compare=[up]).read_text(),
                    re.S).group(0)
    assert re.findall(r'data-label="([^"]+)"', svg) == ["one: openai:gpt-x"]


def test_html_report_shows_the_analyses(tmp_path):
    root = _campaign(tmp_path / "c")
    page = write_report(root, tmp_path / "r.html").read_text()
    section = re.search(r'<section id="analyses">.*?</section>', page, re.S).group(0)
    for plot in ("plot-edit-kinds", "plot-exec-by-kind", "plot-diversity", "plot-models"):
        assert f'<svg id="{plot}"' in section
    assert re.search(r'data-group="edit" data-label="hyperparameter"><td>kind of edit</td><td>hyperparameter</td>'
                     r'<td class="num">3</td><td class="num">2 \(67%\)</td>', section)
    assert '<span class="badge edit">structural</span>' in page  # each idea says its kind
    data = load_campaign(root)
    json.dumps(data["analyses"])
    assert {i["id"]: i["edit_kind"] for i in data["ideas"]}[3] == STRUCTURAL


def test_status_shows_the_analyses_and_the_corrected_test(tmp_path):
    store = Store.open_readonly(_campaign(tmp_path / "c"))
    try:
        text = "\n".join(status_lines(store))
    finally:
        store.close()
    assert "execution rate by kind of idea" in text
    assert re.search(r"kind of edit\s+hyperparameter\s+3\s+2 \(67%\)", text)
    assert re.search(r"kind of edit\s+structural\s+2\s+2 \(100%\)", text)
    assert re.search(r"^\s+1\s+3\s+2/3\s+1/1\s+1/1\s+-\s+0/1\s+3\s+2\s", text, re.M)
    assert re.search(r"anthropic:claude-x\s+1\.8000\s+1\.7000", text)
    assert "contemporaneous baseline" in text  # item 3: the same-epoch baseline beside each idea


def test_fixture_campaign_has_both_kinds(tmp_path):
    """The report fixture's edits change a literal and add a line: structural."""
    a = _analyse(build_campaign(tmp_path / "f", epochs=2, ideas=4))
    assert {g["label"] for g in a["by_kind"]["edit"]} == {STRUCTURAL, NOT_IMPLEMENTED}
