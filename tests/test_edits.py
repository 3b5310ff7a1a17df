"""Edit parsing and application: the whole corpus, plus the rules that keep edits safe."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from ideaforge.edit.apply import apply_edits
from ideaforge.edit.match import MatchFailure, locate
from ideaforge.edit.parse import FileEdit, Hunk, normalise_path, parse_reply
from ideaforge.edit.placeholder import elision, is_placeholder
from ideaforge.errors import EditRefused

_BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "apply_corpus.py"
_spec = importlib.util.spec_from_file_location("apply_corpus", _BENCH)
corpus = importlib.util.module_from_spec(_spec)
sys.modules["apply_corpus"] = corpus  # dataclasses look their module up there
_spec.loader.exec_module(corpus)

CASES = corpus.case_dirs()


@pytest.fixture(scope="module")
def env():
    spec = corpus.load_env(corpus.CORPUS / "_env")
    return spec, corpus.baseline_files(spec)


def test_corpus_is_large_enough():
    assert len(CASES) >= 45
    assert sum((c / "after").is_dir() for c in CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_case(case, env):
    spec, files = env
    r = corpus.run_case(case, spec, files)
    assert r.verdict == "ok", f"{r.verdict}: {r.detail}"


# ---- paths ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, prefix, want",
    [("./train.py", None, "train.py"), ("b/model/layers.py", "b/", "model/layers.py"),
     ("model\\layers.py", None, "model/layers.py"), ("`train.py`", None, "train.py"), ("a/x.py", None, "a/x.py")],
)
def test_normalise_path(raw, prefix, want):
    assert normalise_path(raw, prefix) == want


@pytest.mark.parametrize("raw, why", [("../x.py", "leaves the environment"), ("model/../../x.py", "leaves"),
                                      ("/etc/passwd", "absolute"), ("C:/x.py", "absolute")])
def test_normalise_path_refuses(raw, why):
    with pytest.raises(EditRefused, match=why):
        normalise_path(raw)


# ---- matching ------------------------------------------------------------------------

TWICE = "def f():\n    return 1\n\n\ndef g():\n    return 1\n"


def _edit(old, new, hint=None, path="m.py"):
    return [FileEdit(path, "modify", [Hunk(old, new, hint)])]


def test_ambiguous_block_is_refused_without_exact_hint():
    with pytest.raises(EditRefused, match="occur 2 times"):
        apply_edits({"m.py": TWICE}, _edit(["    return 1"], ["    return 2"]))
    with pytest.raises(EditRefused, match="occur 2 times"):
        apply_edits({"m.py": TWICE}, _edit(["    return 1"], ["    return 2"], hint=3))


def test_exact_hint_picks_one_of_several():
    out = apply_edits({"m.py": TWICE}, _edit(["    return 1"], ["    return 2"], hint=6)).files["m.py"]
    assert out == "def f():\n    return 1\n\n\ndef g():\n    return 2\n"


BLOCK = [f"value_{i} = compute_something({i}, scale=1.0)" for i in range(8)]


def test_fuzzy_accepts_slight_context_drift_and_keeps_file_context():
    text = "\n".join(BLOCK) + "\n"
    old = list(BLOCK[:5])
    old[0] = old[0].replace("1.0", "1.5")  # context the model misremembers
    new = old[:2] + ["value_2 = 0"] + old[3:]
    res = apply_edits({"m.py": text}, _edit(old, new))
    assert res.files["m.py"].splitlines()[:3] == [BLOCK[0], BLOCK[1], "value_2 = 0"]
    assert res.changes["m.py"].methods[0].startswith("fuzzy")


def test_fuzzy_refuses_below_threshold():
    text = "\n".join(BLOCK) + "\n"
    old = [BLOCK[0].replace("compute_something", "other_function_name")] + BLOCK[1:3]
    with pytest.raises(EditRefused, match="similarity 0.8"):
        apply_edits({"m.py": text}, _edit(old, [old[0], "x = 1", old[2]]))


def test_fuzzy_refuses_two_equally_good_places():
    text = "a = 1\nb = 2\nc = 3\n\nx = 0\n\na = 1\nb = 2\nc = 3\n"
    with pytest.raises(EditRefused, match="two places"):
        apply_edits({"m.py": text}, _edit(["a = 1", "b = 2", "c = 4"], ["a = 1", "b = 2", "c = 4", "d = 5"]))


def test_line_endings_and_missing_final_newline_are_kept():
    res = apply_edits({"m.py": "a = 1\r\nb = 2"}, _edit(["b = 2"], ["b = 3", "c = 4"]))
    assert res.files["m.py"] == "a = 1\r\nb = 3\r\nc = 4"


def test_refusal_changes_nothing_and_reports_every_hunk():
    files = {"m.py": "a = 1\nb = 2\n"}
    edits = [FileEdit("m.py", "modify", [Hunk(["zz"], ["y"]), Hunk(["b = 2"], ["b = 3"]), Hunk(["qq"], ["y"])])]
    with pytest.raises(EditRefused) as e:
        apply_edits(files, edits)
    assert "hunk 1 of 3" in str(e.value) and "hunk 3 of 3" in str(e.value)
    assert files == {"m.py": "a = 1\nb = 2\n"}


def test_parse_recounts_hunks_and_strips_prose():
    reply = "Sure!\n```diff\n--- a/m.py\n+++ b/m.py\n@@ -1,9 +1,9 @@\n a = 1\n-b = 2\n+b = 3\n```\nDone.\n"
    (e,) = parse_reply(reply)
    assert (e.path, e.kind, e.hunks[0].old_lines, e.hunks[0].new_lines) == ("m.py", "modify", ["a = 1", "b = 2"], ["a = 1", "b = 3"])


def test_parse_search_replace_with_file_label():
    reply = "File: model/x.py\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n"
    (e,) = parse_reply(reply)
    assert (e.path, e.hunks[0].old_lines, e.hunks[0].new_lines) == ("model/x.py", ["a"], ["b"])


def test_blank_line_inside_undercounted_hunk_does_not_end_it():
    # header claims 1/1 lines; the blank line is context and the hunk goes on after it
    reply = "--- a/m.py\n+++ b/m.py\n@@ -1,1 +1,1 @@\n a = 1\n\n-b = 2\n+b = 3\n"
    (e,) = parse_reply(reply)
    assert e.hunks[0].old_lines == ["a = 1", "", "b = 2"]


# ---- placeholder elision -------------------------------------------------------------

PLACEHOLDERS = ["# ...", "    # ... rest of the training step unchanged ...", "// ... existing code ...", "...", "    …",
                "rest unchanged", "(unchanged)", "remaining code", "<rest of file>", "# rest of the function is unchanged",
                "/* ... */", "<!-- ... -->", "[... existing code ...]", "# ... training loop ...", "# Rest of file unchanged.",
                "    optimizer.step()  # ... rest unchanged", "# keep the rest as before", "# code omitted for brevity"]
NOT_PLACEHOLDERS = ["x = f(...)", "def f(x): ...", "    pass  # ...", "# lr schedule", "x[..., :2]", "print('...')",
                    "# compute the rest of the batch", '"""Rest of the pipeline."""', "# ... (gradient clipping removed)",
                    "return rest", "self.rest = rest", "(a, b)", "rest = total - used", "# TODO: handle other cases",
                    "# unchanged learning rate keeps the baseline comparable across all the runs of this campaign"]


@pytest.mark.parametrize("line", PLACEHOLDERS)
def test_placeholder_lines_are_recognised(line):
    assert is_placeholder(line)


@pytest.mark.parametrize("line", NOT_PLACEHOLDERS)
def test_code_and_ordinary_comments_are_not_placeholders(line):
    assert not is_placeholder(line)


LOOP = ["for step in range(n):", "    xb, yb = get_batch()", "    loss = model(xb)", "    loss.backward()", "    opt.step()"]


@pytest.mark.parametrize("old, new, placeholder, dropped", [
    (LOOP, LOOP[:2] + ["    # ... rest unchanged ..."], "    # ... rest unchanged ...",
     ["loss = model(xb)", "loss.backward()", "opt.step()"]),
    # as many new lines as elided ones: still dropped, since nothing new resembles them
    (LOOP, [LOOP[0], "    # ... forward/backward unchanged ...", "    clip(model)", "    log(step)", "    check()", LOOP[4]],
     "    # ... forward/backward unchanged ...", ["xb, yb = get_batch()", "loss = model(xb)", "loss.backward()"]),
    (["def f(x):", "    return x"], ["def f(x):", "    ..."], "    ...", ["return x"]),  # a body stubbed out
])
def test_elision_names_the_placeholder_and_the_lines_it_would_delete(old, new, placeholder, dropped):
    assert elision(old, new) == (placeholder, dropped)
    with pytest.raises(EditRefused, match="placeholder line"):
        apply_edits({"m.py": "\n".join(old) + "\n"}, _edit(old, new))


@pytest.mark.parametrize("old, new", [
    (LOOP, LOOP[:2] + ["    # ... rest unchanged ..."] + LOOP[2:]),  # a comment inserted: deletes nothing
    (["a()", "b()", "c()"], ["# ...", "a()", "c()"]),  # b() deleted on purpose, the placeholder elsewhere
    (["lr = 3e-4"], ["lr = 1e-3", "# ... rest unchanged"]),  # the quoted line is modified, not dropped
    (["n = 128", "d = 0.0"], ["n = 256  # ... rest unchanged", "d = 0.0"]),
    (["class P:", "    pass"], ["class P:", "    def f(self) -> int:", "        ...", "    pass"]),
])
def test_placeholders_that_delete_nothing_apply(old, new):
    assert elision(old, new) is None
    out = apply_edits({"m.py": "\n".join(old) + "\n"}, _edit(old, new)).files["m.py"]
    assert out == "\n".join(new) + "\n"


# ---- several hunks in one file -------------------------------------------------------

SETTINGS = "n = 128\nd = 0.0\nlr = 3e-4\nwd = 0.1\n"


def _blocks(*pairs):
    return [FileEdit("m.py", "modify", [Hunk(list(o), list(n))], source="search_replace") for o, n in pairs]


def test_later_block_may_quote_a_line_an_earlier_block_changed():
    edits = _blocks((["n = 128", "d = 0.0"], ["n = 128", "d = 0.1"]), (["d = 0.0", "lr = 3e-4"], ["d = 0.0", "lr = 1e-3"]))
    assert apply_edits({"m.py": SETTINGS}, edits).files["m.py"] == "n = 128\nd = 0.1\nlr = 1e-3\nwd = 0.1\n"


def test_a_block_written_against_the_edited_text_applies_when_changes_do_not_overlap():
    edits = _blocks((["d = 0.0"], ["d = 0.1"]), (["d = 0.1", "lr = 3e-4"], ["d = 0.1", "lr = 1e-3"]))
    assert apply_edits({"m.py": SETTINGS}, edits).files["m.py"] == "n = 128\nd = 0.1\nlr = 1e-3\nwd = 0.1\n"


def test_blocks_changing_the_same_line_are_refused_with_the_models_line_numbers():
    edits = _blocks((["n = 128"], ["x = 1", "y = 2", "n = 128"]), (["d = 0.0", "lr = 3e-4"], ["d = 0.5", "lr = 3e-4"]),
                    (["d = 0.0"], ["d = 0.2"]))
    with pytest.raises(EditRefused) as e:
        apply_edits({"m.py": SETTINGS}, edits)
    assert "m.py, block 3 of 3: it overlaps lines an earlier hunk of this edit already changed (lines 2-2)" in str(e.value)


def test_insertions_at_one_place_keep_reply_order_and_precede_a_replaced_line():
    edits = _blocks((["n = 128", "d = 0.0"], ["n = 128", "a = 1", "d = 0.0"]), (["d = 0.0"], ["d = 9"]),
                    (["n = 128", "d = 0.0"], ["n = 128", "b = 2", "d = 0.0"]))
    assert apply_edits({"m.py": SETTINGS}, edits).files["m.py"] == "n = 128\na = 1\nb = 2\nd = 9\nlr = 3e-4\nwd = 0.1\n"


def test_diff_hints_are_the_original_line_numbers():
    text = "x = 1\n" * 3 + "y = 2\n" + "x = 1\n" * 3
    edits = [FileEdit("m.py", "modify", [Hunk([], [], None)])]
    edits[0].hunks = [Hunk(["y = 2"], ["y = 2", "z = 3", "z = 4"], 4), Hunk(["x = 1"], ["x = 0"], 6)]
    out = apply_edits({"m.py": text}, edits).files["m.py"]
    assert out.splitlines() == ["x = 1"] * 3 + ["y = 2", "z = 3", "z = 4", "x = 1", "x = 0", "x = 1"]


# ---- the fast matcher answers exactly as the difflib-over-every-window one did ------------

_NEAREST = json.loads((corpus.CORPUS / "_nearest" / "cases.json").read_text())
_SPEED = importlib.util.spec_from_file_location("apply_speed", _BENCH.parent / "apply_speed.py")
speed = importlib.util.module_from_spec(_SPEED)
_SPEED.loader.exec_module(speed)


def _nearest_texts() -> dict[str, list[str]]:
    synthetic = speed.synthetic_source(2000)
    assert hashlib.sha256(synthetic.encode()).hexdigest() == _NEAREST["synthetic_sha256"], "the benchmark's file changed"
    return {k: v.splitlines() for k, v in {**_NEAREST["files"], "synthetic": synthetic}.items()}


def test_matcher_answers_are_unchanged():
    """225 hunks (corpus hunks and seeded drifts, misses and ties) recorded from the original matcher
    (tests/edit_corpus/_nearest/capture.py): same placement, method and refusal text, word for word."""
    texts = _nearest_texts()
    wrong = []
    for n, c in enumerate(_NEAREST["cases"]):
        try:
            loc = locate(texts[c["file"]], Hunk(c["old"], c["new"], c["hint"]), c["hint"])
            got = {"start": loc.start, "end": loc.end, "method": loc.method,
                   "reindent": list(loc.reindent) if loc.reindent else None}
        except MatchFailure as f:
            got = {"refused": str(f)}
        if got != c["want"]:
            wrong.append(f"case {n} ({c['kind']}): {got} != {c['want']}")
    assert not wrong, "\n".join(wrong[:5])


def test_matcher_without_rapidfuzz_gives_the_same_answers(monkeypatch):
    """A bare install (no rapidfuzz) bounds windows by length only: slower, same answers."""
    import ideaforge.edit.windows as windows
    monkeypatch.setattr(windows, "_rapidfuzz", lambda: (None, None))
    texts = _nearest_texts()
    small = [c for c in _NEAREST["cases"] if c["file"] in ("env_train", "env_layers")][::6]
    assert len(small) >= 10
    for c in small:
        try:
            loc = locate(texts[c["file"]], Hunk(c["old"], c["new"], c["hint"]), c["hint"])
            got = {"start": loc.start, "end": loc.end, "method": loc.method,
                   "reindent": list(loc.reindent) if loc.reindent else None}
        except MatchFailure as f:
            got = {"refused": str(f)}
        assert got == c["want"], c["kind"]


def test_a_miss_on_a_2000_line_file_costs_little_cpu():
    """The replaced matcher spent ~1.7 s of CPU here; the bound is loose so that a loaded machine passes."""
    files = {"big.py": speed.synthetic_source(2000)}
    old, new = speed.cases(2000)["miss"]
    assert "nearest match is lines" in speed._apply(files, old, new)
    assert speed.cpu_time(lambda: speed._apply(files, old, new), 3) < 0.4


def test_a_sequential_block_may_insert_next_to_what_an_earlier_block_wrote():
    edits = _blocks((["d = 0.0"], ["d = 0.0", "e = 1"]), (["e = 1", "lr = 3e-4"], ["e = 1", "f = 2", "lr = 3e-4"]))
    out = apply_edits({"m.py": SETTINGS}, edits).files["m.py"]
    assert out == "n = 128\nd = 0.0\ne = 1\nf = 2\nlr = 3e-4\nwd = 0.1\n"


def test_insertion_after_a_context_line_the_file_lacks_is_refused_not_guessed():
    # 'e = 1' is nowhere in the file; the fuzzy window (lines 1-3) would put 'f = 2' at the top
    with pytest.raises(EditRefused, match="'e = 1', is not in the file there, so where they go is unclear"):
        apply_edits({"m.py": SETTINGS}, _edit(["e = 1", "lr = 3e-4"], ["e = 1", "f = 2", "lr = 3e-4"]))
