"""Placing one hunk in a file, and rebuilding the lines it covers.

Matching goes exact -> trailing whitespace ignored -> indentation ignored (the
replacement re-indented) -> a bounded fuzzy match in which only *context* lines may
differ. Lines a hunk removes must always be found as written (up to whitespace): a
fuzzy match never deletes a line the model did not quote. Failures are MatchFailure,
whose text tells the model what was searched for and what is there instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from difflib import SequenceMatcher

from ideaforge.edit.parse import Hunk
from ideaforge.edit.windows import WindowRanker

FUZZY_MIN = 0.9  # difflib ratio a drifted block needs (over stripped lines)
FUZZY_MARGIN = 0.05  # how much better than the next-best separate place it must be


class MatchFailure(Exception):
    """A hunk that cannot be placed; the text is for the model."""


@dataclass
class Located:
    start: int  # 0-based first line of the matched block
    end: int  # one past its last line
    method: str  # "exact", "whitespace", "indentation" or "fuzzy 0.93"
    key: Callable[[str], str]  # how lines were compared
    reindent: tuple[int, int, bool] | None = None  # (column delta, tab size, file uses tabs)


_STAGES: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("exact", lambda s: s),
    ("whitespace", str.rstrip),
    ("indentation", str.strip),
)


def locate(lines: list[str], h: Hunk, hint: int | None) -> Located:
    """Where the hunk's old lines sit in `lines`: the first stage with any match decides, ambiguity refuses."""
    old = h.old_lines
    n = len(old)
    for method, key in _STAGES:
        want = [key(x) for x in old]
        have = [key(x) for x in lines]
        cands = [i for i in range(len(lines) - n + 1) if have[i] == want[0] and have[i : i + n] == want]
        if not cands:
            continue
        if len(cands) > 1 and hint not in cands:
            where = ", ".join(f"{i + 1}-{i + n}" if n > 1 else str(i + 1) for i in cands[:8])
            raise MatchFailure(
                f"the lines to replace occur {len(cands)} times (lines {where}), so the edit is ambiguous. "
                f"Searched for:\n{_quote(old)}\nInclude more unchanged lines around the change so that it matches exactly one place."
            )
        i = cands[0] if len(cands) == 1 else hint
        loc = Located(i, i + n, method, key)
        if method == "indentation":
            loc.reindent = _indent_delta(list(zip(lines[i : i + n], old)))
        return loc
    removed = {x.strip() for x in old} - {x.strip() for x in h.new_lines}
    return _fuzzy(lines, old, removed)


def _fuzzy(lines: list[str], old: list[str], removed: set[str]) -> Located:
    """The one place that matches `old` closely, or a MatchFailure showing the nearest one.

    Score = the share of the block's characters (lines stripped) found in order in a
    window of the file, windows a line or two shorter or longer than the block. Only
    windows holding every line the hunk removes may be chosen; the rest are only
    reported as the nearest match. `WindowRanker` finds the best windows without
    scoring them all.
    """
    stripped = [x.strip() for x in lines]
    ranker = WindowRanker(stripped, [x.strip() for x in old])
    nearest = ranker.top()
    if nearest is None:
        raise MatchFailure(f"could not find the lines to replace; nothing in the file resembles them. Searched for:\n{_quote(old)}\n{_ADVICE}")

    def holds_removed(start: int, end: int) -> bool:
        return removed <= set(stripped[start:end])

    # a window holding every removed line is chosen if it scores FUZZY_MIN; else the nearest is only shown
    valid = ranker.top(holds_removed, floor=FUZZY_MIN) if nearest[0] >= FUZZY_MIN else None
    best, start, end = valid or nearest
    near = f"lines {start + 1}-{end} (similarity {best:.2f})"
    if best < FUZZY_MIN:
        raise MatchFailure(
            f"could not find the lines to replace. Searched for:\n{_quote(old)}\n"
            f"The nearest match is {near}:\n{_quote(lines[start:end])}\n{_ADVICE}"
        )
    if not valid:
        missing = sorted(removed - set(stripped[start:end]))
        raise MatchFailure(
            f"the nearest match, {near}, lacks a line the hunk removes: {missing[0]!r}. The file has there:\n"
            f"{_quote(lines[start:end])}\nQuote the lines to remove exactly as they are now."
        )
    # the best separate place holding the removed lines; only one within FUZZY_MARGIN matters
    rival = ranker.top(lambda s, e: (e <= start or s >= end) and holds_removed(s, e), floor=best - FUZZY_MARGIN)
    if rival and best - rival[0] < FUZZY_MARGIN:
        raise MatchFailure(
            f"the lines to replace match no place exactly and two places about equally well: {near} and "
            f"lines {rival[1] + 1}-{rival[2]} (similarity {rival[0]:.2f}). Searched for:\n{_quote(old)}\n{_ADVICE}"
        )
    return Located(start, end, f"fuzzy {best:.2f}", str.strip)


_ADVICE = (
    "Copy the lines to replace exactly as they are in the current file (it may differ from what you "
    "remember), or quote fewer, more distinctive lines."
)


def _quote(block: list[str], limit: int = 6) -> str:
    shown = "\n".join(f"    | {x}" for x in block[:limit])
    return shown + (f"\n    | ... ({len(block) - limit} more lines)" if len(block) > limit else "")


def _align(old: list[str], got: list[str], loc: Located) -> dict[int, int]:
    """old index -> got index. Identity unless fuzzy, where drifted lines pair up 1:1."""
    if loc.method in ("exact", "whitespace", "indentation"):
        return {i: i for i in range(len(old))}
    out: dict[int, int] = {}
    ops = SequenceMatcher(None, [x.strip() for x in old], [x.strip() for x in got], autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in ops:
        if tag == "equal" or (tag == "replace" and i2 - i1 == j2 - j1):
            out.update({i1 + d: j1 + d for d in range(i2 - i1)})
    return out


Span = tuple[int, int, list[str]]  # lines [start, end) of the matched block become these lines


def rebuild(got: list[str], h: Hunk, loc: Located) -> tuple[list[str], list[Span], int, int]:
    """The replacement for the matched lines `got`: (lines, the changed spans of `got`, added, removed).

    Unchanged lines come from the file, not the hunk, so drifted context and the file's
    own whitespace survive; only the hunk's '+' lines are new. Spans are in `got`'s
    line numbers, in order; a span (k, k, lines) inserts before line k.
    """
    old, new = h.old_lines, h.new_lines
    omap = _align(old, got, loc)
    if loc.reindent is None and loc.method.startswith("fuzzy"):
        loc.reindent = _indent_delta([(got[g], old[i]) for i, g in omap.items() if got[g].strip() == old[i].strip()])
    out: list[str] = []
    spans: list[Span] = []
    gi, added, removed = 0, 0, 0
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag == "equal":
            for i in range(i1, i2):
                if omap.get(i, -1) >= gi:
                    out += got[gi : omap[i] + 1]
                    gi = omap[i] + 1
            continue
        first = None  # (line of got, length of out) where this change starts
        for i in range(i1, i2):
            g = omap.get(i)
            if g is None or g < gi or got[g].strip() != old[i].strip():
                found = f"line {loc.start + g + 1} is {got[g].strip()!r}" if g is not None and g >= gi else "it is not there"
                raise MatchFailure(
                    f"lines {loc.start + 1}-{loc.end} resemble the block ({loc.method}) but a line it removes differs: "
                    f"expected {old[i].strip()!r}, {found}. Quote the lines to remove exactly as they are now."
                )
            out += got[gi:g]  # drifted file lines the hunk does not quote: kept
            first = first or (g, len(out))
            gi = g + 1
        ahead = min((g for g in omap.values() if g >= gi), default=len(got))  # next file line the block pins
        if first is None and i1 > 0 and i1 - 1 not in omap and gi < ahead:
            # the new lines follow a context line that matched no file line, and unmatched file
            # lines lie ahead: where among them the insertion belongs is a guess, so refuse
            raise MatchFailure(
                f"lines {loc.start + 1}-{loc.end} resemble the block ({loc.method}) but the line before the new lines, "
                f"{old[i1 - 1].strip()!r}, is not in the file there, so where they go is unclear. Quote that line exactly as it is now."
            )
        first = first or (gi, len(out))
        out += [_reindent(x, loc) for x in new[j1:j2]]
        spans.append((first[0], gi if i2 > i1 else first[0], out[first[1] :]))
        added, removed = added + j2 - j1, removed + i2 - i1
    out += got[gi:]
    return out, spans, added, removed


def _indent_delta(pairs: list[tuple[str, str]]) -> tuple[int, int, bool] | None:
    """(column shift, tab size, tabs?) turning the hunk's indentation into the file's, if consistent."""
    pairs = [(f, o) for f, o in pairs if f.strip()]
    uses_tabs = any(f[: len(f) - len(f.lstrip())].count("\t") for f, _ in pairs)
    for tab in (4, 8, 2):
        shifts = {_width(f, tab) - _width(o, tab) for f, o in pairs}
        if len(shifts) <= 1:
            return (shifts.pop() if shifts else 0, tab, uses_tabs)
    raise MatchFailure(
        "the lines match only if indentation is ignored, and the indentation differs unevenly from the file's, "
        "so the intended nesting is unclear. Copy the lines with the file's exact indentation."
    )


def _width(line: str, tab: int) -> int:
    return len(line[: len(line) - len(line.lstrip())].expandtabs(tab))


def _reindent(line: str, loc: Located) -> str:
    if loc.method == "exact":
        return line
    line = line.rstrip()  # the reply's trailing whitespace proved unreliable; do not copy it in
    if loc.reindent is None or not line:
        return line
    shift, tab, tabs = loc.reindent
    cols = _width(line, tab) + shift
    if cols < 0:
        raise MatchFailure(f"re-indenting the new line {line.strip()!r} to the file's indentation would need negative indentation; copy the file's indentation exactly")
    if not tabs and shift == 0 and "\t" not in line[: len(line) - len(line.lstrip())]:
        return line
    pad = "\t" * (cols // tab) + " " * (cols % tab) if tabs else " " * cols
    return pad + line.lstrip()
