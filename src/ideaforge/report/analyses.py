"""The reference's analyses of a campaign: execution rate per epoch and per kind of idea,
hyper-parameter-only vs structural ideas, idea diversity per epoch, and best-so-far per model.

Kinds of an implemented idea, from its applied edit (`edit_kind`):
- `hyperparameter`: the edit changes numeric literals and nothing else (`LR = 1e-3` ->
  `LR = 3e-3`, `n_layer=6` -> `n_layer=-4`);
- `structural`: it changes anything else (a name, an operator, a line added or moved, a file);
- `no change`: only comments, blank lines or the spelling of a number (`1e-3` -> `0.001`).
Ideas with no working edit are `not implemented`. The edit is compared as Python tokens
(the stdlib tokenizer; a fragment it cannot read falls back to a regex tokenizer), with
comments, line breaks and spacing inside a line ignored, and each logical line's
indentation kept (moving a line into a block is structural). Only the changed lines of the
stored unified diff are read: a classification costs well under a millisecond.

Execution rate: ideas whose code ran and was scored (outcome `evaluated`) over ideas.

Diversity per epoch: distinct ideas (titles reduced to their token sets: "Add RoPE" and
"RoPE, added" are one), distinct edit targets (the names on the lines an edit removes,
as the RL analysis clusters ideas), and the mean pairwise token-Jaccard similarity of the
ideas' titles and descriptions (`stats.mean_pairwise_similarity`; 1 = all alike) over at
most `SIMILARITY_SAMPLE` ideas of the epoch, evenly spread.

Models: an idea's model is its origin's `model`; ideas of the offline ideators count as
the model `offline`, ideas typed on the command line as `manual`.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path
from typing import Any

from ideaforge.stats import leaderboard, mean_pairwise_similarity, tokens
from ideaforge.store import Store

HYPERPARAMETER, STRUCTURAL, NO_CHANGE, NOT_IMPLEMENTED = "hyperparameter", "structural", "no change", "not implemented"
EDIT_KINDS = (HYPERPARAMETER, STRUCTURAL, NO_CHANGE, NOT_IMPLEMENTED)
SIMILARITY_SAMPLE = 64  # ideas per epoch compared pairwise (2,016 pairs, ~10 ms): a 200-idea epoch costs no more

_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.ENCODING, tokenize.ENDMARKER,
         tokenize.INDENT, tokenize.DEDENT}
# Fallback tokenizer: strings first (a '#' in a string is not a comment), then comments, numbers, words.
_REGEX = re.compile(r"""(?P<str>[rbuf]*("(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'))|(?P<comment>\#[^\n]*)"""
                    r"""|(?P<num>(?:0[xob][0-9a-f_]+|(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:e[+-]?\d[\d_]*)?j?))"""
                    r"""|(?P<word>\w+)|(?P<op>\S)""", re.IGNORECASE)
# After these, a '-' or '+' before a number is a sign, not a subtraction ("= -1", "(-1", "return -1").
_SIGN_AFTER = {"=", "(", "[", "{", ",", ":", "return", "in", "else", "if", "and", "or", "not", "lambda",
               "yield", "**", "*", "/", "//", "%", "+", "-", "<", ">", "<=", ">=", "==", "!=", "+=", "-=",
               "*=", "/=", "->", "@"}


# -- kind of an edit ------------------------------------------------------------------------------
def edit_kind(diff: str) -> str:
    """`hyperparameter`, `structural` or `no change` for a unified diff (see the module docstring)."""
    kinds = set()
    for path, new_or_deleted, removed, added in _change_blocks(diff):
        if new_or_deleted:
            return STRUCTURAL
        kinds.add(compare_code("".join(removed), "".join(added), python=path.endswith(".py") or not path))
        if STRUCTURAL in kinds:
            return STRUCTURAL
    return HYPERPARAMETER if HYPERPARAMETER in kinds else NO_CHANGE


def compare_code(before: str, after: str, python: bool = True) -> str:
    """The kind of change from `before` to `after` (two fragments of code)."""
    a, b = code_tokens(before, python), code_tokens(after, python)
    if python and (a is None or b is None):  # the stdlib tokenizer could not read one: read both by regex
        a, b = code_tokens(before, False), code_tokens(after, False)
    if len(a) != len(b):
        return STRUCTURAL
    numbers_differ = False
    for x, y in zip(a, b):
        if x == y:
            continue
        if x[0] == y[0] == "num":
            numbers_differ = True
        else:
            return STRUCTURAL
    return HYPERPARAMETER if numbers_differ else NO_CHANGE


def code_tokens(text: str, python: bool = True) -> list[tuple[str, Any]] | None:
    """(kind, value) per token: numbers by value, signs folded into them, comments and spacing out,
    ("indent", columns) at the start of each logical line. None when `python` and the stdlib
    tokenizer cannot read the fragment.

    A one-regex-per-line reader handles most fragments (3-4x faster than the stdlib tokenizer,
    which a report of 2,000 ideas feels); the stdlib's reads those with what the regex cannot
    follow across lines: triple-quoted strings and backslash continuations."""
    if python and ('"""' in text or "\'\'\'" in text or "\\\n" in text):
        raw = _stdlib_tokens(text)
        if raw is None:
            return None
    else:
        raw = _regex_tokens(text)
    out: list[tuple[str, Any]] = []
    prev: str | None = None
    k = 0
    while k < len(raw):
        kind, s, col, first = raw[k]
        if first:
            out.append(("indent", col))
        if (kind == "tok" and s in ("+", "-") and k + 1 < len(raw) and raw[k + 1][0] == "num"
                and not raw[k + 1][3] and (prev is None or first or prev in _SIGN_AFTER)):
            value = _number(raw[k + 1][1])
            out.append(("num", -value if s == "-" and isinstance(value, (int, float, complex)) else (s, value)))
            prev, k = raw[k + 1][1], k + 2
            continue
        out.append(("num", _number(s)) if kind == "num" else (kind, s))
        prev, k = s, k + 1
    return out


def _regex_tokens(text: str) -> list[tuple[str, str, int, bool]]:
    """(kind, text, column, starts a logical line) by regex; a line inside brackets continues one."""
    raw, depth = [], 0
    for line in text.splitlines():
        first = depth == 0
        for m in _REGEX.finditer(line):
            group = m.lastgroup
            if group == "comment":
                continue
            s = m.group()
            if group == "op":
                depth = max(0, depth + (s in "([{") - (s in ")]}"))
            raw.append(("num" if group == "num" else "str" if group == "str" else "tok", s, m.start(), first))
            first = False
    return raw


def _stdlib_tokens(text: str) -> list[tuple[str, str, int, bool]] | None:
    raw = []
    try:
        line_start = True
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in (tokenize.NEWLINE, tokenize.NL):
                line_start = tok.type == tokenize.NEWLINE or line_start
                continue
            if tok.type in _SKIP:
                continue
            kind = "num" if tok.type == tokenize.NUMBER else "str" if tok.type == tokenize.STRING else "tok"
            raw.append((kind, tok.string, tok.start[1], line_start))
            line_start = False
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None
    return raw


def _number(s: str) -> Any:
    try:
        return ast.literal_eval(s.replace("_", ""))
    except (ValueError, SyntaxError):
        return s.lower()


def _change_blocks(diff: str):
    """(path, file added or deleted, removed lines, added lines) per run of -/+ lines of a unified diff."""
    path, whole_file = "", False
    removed: list[str] = []
    added: list[str] = []
    old = None
    for line in diff.splitlines(keepends=True):
        if line.startswith("--- "):
            old = line[4:].strip()
            continue
        if line.startswith("+++ "):
            new = line[4:].strip()
            whole_file = old == "/dev/null" or new == "/dev/null"
            path = re.sub(r"^[ab]/", "", new if new != "/dev/null" else (old or ""))
            continue
        if line.startswith("-"):
            removed.append(line[1:])
        elif line.startswith("+"):
            added.append(line[1:])
        else:  # context, a hunk header or "\ No newline": the run ends
            if removed or added:
                yield path, whole_file, removed, added
            removed, added = [], []
    if removed or added:
        yield path, whole_file, removed, added


def edit_target(diff: str) -> str:
    """What an edit changes, as the RL analysis names clusters: the names on the left of the lines
    it removes (`LR + WIDTH`), of the lines it inserts where it removes none, or the files it adds
    or deletes."""
    names: list[str] = []
    for path, whole_file, removed, added in _change_blocks(diff):
        for line in removed or added:
            left = re.split(r"=|\(", line, maxsplit=1)[0].strip() if not whole_file else path
            if left and left[:40] not in names:
                names.append(left[:40])
    return " + ".join(sorted(names))


# -- the analyses ------------------------------------------------------------------------------------
def model_of(idea: dict) -> str:
    origin = idea.get("origin") or {}
    if origin.get("model"):
        return str(origin["model"])
    return "manual" if idea.get("kind") == "manual" else "offline"


def analyse(store: Store, goal: str, rows: list[dict] | None = None) -> dict[str, Any]:
    """Every analysis of one campaign, JSON-serialisable:

        ideas      {idea id: {"edit_kind", "model", "outcome"}}
        by_epoch   [{epoch, ideas, evaluated, exec_rate, kinds: {edit kind: n},
                     kind_rates: {edit kind: [evaluated, ideas]}, distinct, targets, similarity}]
        by_kind    {"edit" | "prompt" | "model": [{label, ideas, evaluated, exec_rate, beats, best}]}
        models     best-so-far series per model: [{"label", "points": [[epoch, best | None]]}]
    """
    if rows is None:
        rows = leaderboard(store, goal)[1]
    row_of = {r["idea_id"]: r for r in rows}
    diffs = _diffs(store)
    per_idea: dict[int, dict] = {}
    ideas = store.ideas()
    for idea in ideas:
        r = row_of.get(idea["id"])
        outcome = (r["outcome"] if r else "pending") if idea["status"] != "implement_failed" else "implement_failed"
        diff = diffs.get(idea["id"])
        per_idea[idea["id"]] = {
            "edit_kind": edit_kind(diff) if diff is not None else NOT_IMPLEMENTED,
            "target": edit_target(diff) if diff is not None else None,
            "model": model_of(idea), "outcome": outcome,
            "mean": r["stats"].mean if r and r["stats"] else None, "beats": bool(r and r["beats"]),
        }
    return {
        "ideas": {i: {k: v[k] for k in ("edit_kind", "model", "outcome")} for i, v in per_idea.items()},
        "by_epoch": _by_epoch(ideas, per_idea),
        "by_kind": {
            "edit": _groups(ideas, per_idea, lambda i: per_idea[i["id"]]["edit_kind"], goal, EDIT_KINDS),
            "prompt": _groups(ideas, per_idea, lambda i: i["kind"], goal),
            "model": _groups(ideas, per_idea, lambda i: per_idea[i["id"]]["model"], goal),
        },
        "models": model_series(ideas, per_idea, goal),
    }


def _diffs(store: Store) -> dict[int, str]:
    """idea id -> the diff of its working implementation (the last one, if several). A read-only
    query for two columns: the full rows hold every edited file whole (12 KB or more per idea)."""
    rows = store.execute("SELECT idea_id, diff FROM implementations WHERE status = 'ok' ORDER BY id").fetchall()
    return {r["idea_id"]: r["diff"] for r in rows if r["idea_id"] is not None}


def _by_epoch(ideas: list[dict], per_idea: dict[int, dict]) -> list[dict]:
    out = []
    for epoch in sorted({i["epoch"] for i in ideas}):
        mine = [i for i in ideas if i["epoch"] == epoch]
        kinds = {k: 0 for k in EDIT_KINDS}
        rates = {k: [0, 0] for k in EDIT_KINDS}
        for i in mine:
            p = per_idea[i["id"]]
            kinds[p["edit_kind"]] += 1
            rates[p["edit_kind"]][1] += 1
            rates[p["edit_kind"]][0] += p["outcome"] == "evaluated"
        evaluated = sum(per_idea[i["id"]]["outcome"] == "evaluated" for i in mine)
        sample = mine if len(mine) <= SIMILARITY_SAMPLE else [
            mine[k * len(mine) // SIMILARITY_SAMPLE] for k in range(SIMILARITY_SAMPLE)]  # evenly spread
        targets = {per_idea[i["id"]]["target"] for i in mine if per_idea[i["id"]]["target"]}
        out.append({
            "epoch": epoch, "ideas": len(mine), "evaluated": evaluated, "exec_rate": evaluated / len(mine),
            "kinds": kinds, "kind_rates": rates,
            "distinct": len({tokens(i["title"]) for i in mine}),
            "targets": len(targets),
            "similarity": mean_pairwise_similarity([f"{i['title']} {i['description']}" for i in sample]),
            "sampled": len(sample),
        })
    return out


def _groups(ideas: list[dict], per_idea: dict[int, dict], key, goal: str, order: tuple = ()) -> list[dict]:
    groups: dict[str, list[dict]] = {k: [] for k in order}
    for i in ideas:
        groups.setdefault(key(i), []).append(per_idea[i["id"]])
    out = []
    for label, members in groups.items():
        if not members:
            continue
        evaluated = sum(m["outcome"] == "evaluated" for m in members)
        means = [m["mean"] for m in members if m["mean"] is not None]
        out.append({"label": label, "ideas": len(members), "evaluated": evaluated,
                    "exec_rate": evaluated / len(members), "beats": sum(m["beats"] for m in members),
                    "best": (min(means) if goal == "min" else max(means)) if means else None})
    return out


def model_series(ideas: list[dict], per_idea: dict[int, dict], goal: str, prefix: str = "") -> list[dict]:
    """Best idea mean so far per epoch, one series per model (epochs before a model's first result: None)."""
    if not ideas:
        return []
    last = max(i["epoch"] for i in ideas)
    out = []
    for model in sorted({p["model"] for p in per_idea.values()}):
        best, points = None, []
        for e in range(last + 1):
            for i in ideas:
                m = per_idea[i["id"]]
                if i["epoch"] == e and m["model"] == model and m["mean"] is not None and (
                        best is None or (m["mean"] < best if goal == "min" else m["mean"] > best)):
                    best = m["mean"]
            points.append([e, best])
        out.append({"label": f"{prefix}{model}", "points": points})
    return out


def compare_models(campaign_dirs: list[str | Path], goal: str, own: dict | None = None,
                   own_dir: str | Path | None = None) -> list[dict]:
    """Per-model best-so-far series of several campaigns on one plot, each labelled `DIR: model`
    (campaigns whose metric runs the other way are left out: they would read upside down)."""
    out = [dict(s, label=f"{Path(own_dir).name}: {s['label']}") for s in (own or {}).get("models", [])]
    for d in campaign_dirs:
        store = Store.open_readonly(d)
        try:
            if store.env_facts().get("goal", "min") != goal:
                continue
            a = analyse(store, goal)
        finally:
            store.close()
        out += [dict(s, label=f"{Path(d).name}: {s['label']}") for s in a["models"]]
    return out
