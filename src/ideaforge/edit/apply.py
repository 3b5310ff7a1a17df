"""Applying parsed edits to a set of files, safely.

Pure on dicts: `files` maps relative POSIX paths to contents and a new mapping
comes back; nothing touches the disk. Two promises:

* every path is checked against the environment's classes before anything is
  applied, so a reply that touches the evaluator changes nothing at all;
* a hunk is applied only where it matches unambiguously. Matching goes exact ->
  trailing whitespace ignored -> indentation ignored (the replacement re-indented)
  -> a bounded fuzzy match in which only *context* lines may differ. Lines a hunk
  removes must always be found as written (up to whitespace): a fuzzy match never
  deletes a line the model did not quote. Anything else is refused with a message
  that tells the model what was searched for and what is there instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from difflib import SequenceMatcher

from ideaforge.edit.parse import FileEdit, Hunk, normalise_path
from ideaforge.envs.spec import EnvSpec
from ideaforge.errors import EditRefused

FUZZY_MIN = 0.9  # difflib ratio a drifted block needs (over stripped lines)
FUZZY_MARGIN = 0.05  # how much better than the next-best separate place it must be
_FUZZY_SIZES = (0, -1, 1, -2, 2)  # window sizes tried around the block's length: a line or two drifted in or out
_HIDDEN_WHY = "it belongs to the trusted harness (such as the evaluator) and may not be read, changed, created or deleted"


@dataclass
class FileChange:
    """What happened to one file: action, and how each hunk was matched."""

    path: str
    action: str  # "modified", "created", "replaced" or "deleted"
    methods: list[str] = field(default_factory=list)  # per hunk: exact, whitespace, indentation, fuzzy 0.93
    added: int = 0
    removed: int = 0


@dataclass
class ApplyResult:
    files: dict[str, str | None]  # every input path plus created ones; None = deleted
    changes: dict[str, FileChange]

    def summary(self) -> str:
        out = []
        for c in self.changes.values():
            how = f" ({', '.join(c.methods)})" if c.methods else ""
            out.append(f"{c.path}: {c.action}, +{c.added} -{c.removed}{how}")
        return "\n".join(out)


def apply_edits(files: dict[str, str], edits: list[FileEdit], spec: EnvSpec | None = None) -> ApplyResult:
    """Apply `edits` in order to `files`; EditRefused (for the model to read) if any part fails.

    All or nothing: on refusal no partial result is returned. Every failing hunk is
    reported, not just the first, so one repair round can fix them all.
    """
    if not edits:
        raise EditRefused("no edit found in the reply; nothing was changed")
    for e in edits:
        e.path = normalise_path(e.path)  # edits built by hand skip the parser's check
    if spec is not None:
        _check_policy(edits, spec)
    state: dict[str, str | None] = dict(files)
    changes: dict[str, FileChange] = {}
    touched: dict[str, list[tuple[int, int]]] = {}  # per file, across all its edits
    problems: list[str] = []
    for e in edits:
        change = changes.setdefault(e.path, FileChange(e.path, ""))
        try:
            _apply_one(state, e, change, touched.setdefault(e.path, []))
        except EditRefused as err:
            problems.append(str(err))
    if problems:
        raise EditRefused("the edit was not applied; nothing was changed.\n\n" + "\n\n".join(problems))
    return ApplyResult(state, changes)


def _check_policy(edits: list[FileEdit], spec: EnvSpec) -> None:
    refusals = []
    for e in dict.fromkeys(e.path for e in edits):
        cls = spec.classify(e)
        if cls != "editable":
            refusals.append(_policy_message(e, cls, spec))
    if refusals:
        raise EditRefused("\n".join(refusals))


def _policy_message(path: str, cls: str | None, spec: EnvSpec) -> str:
    dirs = _new_file_dirs(spec)
    allowed = f"only these files are editable: {', '.join(spec.editable_files)}"
    allowed += f" (new files may be created under {', '.join(dirs)})" if dirs else ""
    if cls == "hidden":
        why = f"{path} is hidden: {_HIDDEN_WHY}"
    elif cls == "visible":
        why = f"{path} is read-only: you may read it but not change, create or delete it"
    elif cls == "data":
        why = f"{path} is data: the data directory is read-only"
    else:
        where = f"new files are allowed only under {', '.join(dirs)}" if dirs else "this environment allows no new files"
        why = f"{path} may not be created: {where}"
    return f"{why}; {allowed}."


def _new_file_dirs(spec: EnvSpec) -> list[str]:
    """Editable globs that admit new files: directories (`model/`) and patterns (`model/*.py`)."""
    out = []
    for g in spec.editable_globs:
        if g.endswith("/") or any(ch in g for ch in "*?[") or g not in spec.editable_files:
            out.append(g if g.endswith("/") or any(ch in g for ch in "*?[") else g + "/")
    return out


def _apply_one(state: dict[str, str | None], e: FileEdit, change: FileChange, touched: list[tuple[int, int]]) -> None:
    current = state.get(e.path)
    if e.kind == "delete":
        if current is None:
            raise EditRefused(f"{e.path}: cannot delete it, the file does not exist; files that exist: {_existing(state)}")
        state[e.path] = None
        change.action, change.removed = "deleted", change.removed + len(_split(current)[0])
        return
    if e.kind == "create":
        # A full-content "create" of an existing file replaces it; the policy check has
        # already made sure the file is editable.
        content = e.content or ""
        state[e.path] = content
        change.action = change.action or ("replaced" if current is not None else "created")
        change.added += len(_split(content)[0])
        return
    hunks = e.hunks or []
    if current is None:
        if not hunks or hunks[0].old_lines:
            raise EditRefused(
                f"{e.path} does not exist, so its lines cannot be edited. Files that exist: {_existing(state)}. "
                "To create a file use an empty SEARCH section or a diff from /dev/null."
            )
        # an empty SEARCH on a missing file creates it; later blocks edit the new text
        current = "\n".join(hunks[0].new_lines) + "\n" if hunks[0].new_lines else ""
        change.action = change.action or "created"
        change.added += len(hunks[0].new_lines)
        hunks = hunks[1:]
    state[e.path] = _apply_hunks(e, current, hunks, change, touched)
    change.action = change.action or "modified"


def _apply_hunks(e: FileEdit, text: str, hunks: list[Hunk], change: FileChange, touched: list[tuple[int, int]]) -> str:
    """`touched` holds the regions earlier hunks changed, in current line numbers; updated in place."""
    lines, eol, final_nl = _split(text)
    offset = 0  # how far earlier hunks moved the lines below them (diff hints are pre-edit)
    failures = []
    for n, h in enumerate(hunks, 1):
        label = f"{e.path}, {'block' if e.source == 'search_replace' else 'hunk'} {n} of {len(hunks)}"
        if not h.old_lines:
            failures.append(
                f"{label}: nothing to search for (an empty SEARCH or a hunk without context or '-' lines) "
                f"but {e.path} exists. Quote 2-3 existing lines next to where the new lines go."
            )
            continue
        hint = h.old_start_hint - 1 + offset if h.old_start_hint else None
        try:
            loc = locate(lines, h, hint)
            _check_overlap(loc, touched, label)
            new_block, core, added, removed = rebuild(lines[loc.start : loc.end], h, loc)
        except MatchFailure as f:
            n_new = len(h.new_lines)
            done = n_new and any(lines[i : i + n_new] == h.new_lines for i in range(len(lines) - n_new + 1))
            failures.append(f"{label}: {f}" + ("\n(Its new lines are already in the file: was this change sent twice?)" if done else ""))
            continue
        delta = len(new_block) - (loc.end - loc.start)
        lines[loc.start : loc.end] = new_block
        touched[:] = [(a + delta, b + delta) if a >= loc.end else (a, b) for a, b in touched]
        touched.append((loc.start + core[0], loc.start + core[1]))
        offset += delta
        change.methods.append(loc.method)
        change.added += added
        change.removed += removed
    if failures:
        raise EditRefused("\n\n".join(failures))
    return eol.join(lines) + (eol if final_nl and lines else "")


def _check_overlap(loc: Located, touched: list[tuple[int, int]], label: str) -> None:
    for a, b in touched:
        inside = (loc.start < a < loc.end) if a == b else max(a, loc.start) < min(b, loc.end)
        if inside:
            raise MatchFailure(
                f"it overlaps lines an earlier hunk of this edit already changed (lines {a + 1}-{max(a, b)}); "
                "hunks must touch separate parts of the file. Merge the two changes into one hunk."
            )


def _split(text: str) -> tuple[list[str], str, bool]:
    """Lines without terminators, the file's line ending, and whether it ends with one."""
    eol = "\r\n" if "\r\n" in text else "\n"
    body = text.replace("\r\n", "\n")
    final_nl = body.endswith("\n")
    lines = body.split("\n")
    if final_nl:
        lines.pop()
    return (lines if body else []), eol, final_nl or not body


def _existing(state: dict[str, str | None]) -> str:
    return ", ".join(sorted(p for p, v in state.items() if v is not None)) or "none"


# ---- matching one hunk ---------------------------------------------------------


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
    reported as the nearest match.
    """
    stripped = [x.strip() for x in lines]
    target = "\n".join(x.strip() for x in old)
    sm = SequenceMatcher(None, autojunk=False)
    sm.set_seq2(target)
    scored: list[tuple[float, int, int]] = []  # (score, start, end)
    for k in _FUZZY_SIZES:
        size = len(old) + k
        for i in range(0, len(lines) - size + 1 if size > 0 else 0):
            window = "\n".join(stripped[i : i + size])
            sm.set_seq1(window)
            if sm.quick_ratio() * (len(target) + len(window)) < len(target):  # upper bound on score < 0.5
                continue
            found = sum(b.size for b in sm.get_matching_blocks())
            scored.append((round(found / max(1, len(target)), 3), i, i + size))
    if not scored:
        raise MatchFailure(f"could not find the lines to replace; nothing in the file resembles them. Searched for:\n{_quote(old)}\n{_ADVICE}")
    # best first; among equals prefer the window closest to the block's own length
    scored.sort(key=lambda r: (-r[0], abs(r[2] - r[1] - len(old)), r[1]))
    valid = [r for r in scored if removed <= set(stripped[r[1] : r[2]])]
    best, start, end = valid[0] if valid and valid[0][0] >= FUZZY_MIN else scored[0]
    near = f"lines {start + 1}-{end} (similarity {best:.2f})"
    if best < FUZZY_MIN:
        raise MatchFailure(
            f"could not find the lines to replace. Searched for:\n{_quote(old)}\n"
            f"The nearest match is {near}:\n{_quote(lines[start:end])}\n{_ADVICE}"
        )
    if not valid or valid[0][1:] != (start, end):
        missing = sorted(removed - set(stripped[start:end]))
        raise MatchFailure(
            f"the nearest match, {near}, lacks a line the hunk removes: {missing[0]!r}. The file has there:\n"
            f"{_quote(lines[start:end])}\nQuote the lines to remove exactly as they are now."
        )
    rival = next((r for r in valid if r[2] <= start or r[1] >= end), None)
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


def rebuild(got: list[str], h: Hunk, loc: Located) -> tuple[list[str], tuple[int, int], int, int]:
    """The replacement for the matched lines `got`: (lines, changed span in them, added, removed).

    Unchanged lines come from the file, not the hunk, so drifted context and the file's
    own whitespace survive; only the hunk's '+' lines are new.
    """
    old, new = h.old_lines, h.new_lines
    omap = _align(old, got, loc)
    if loc.reindent is None and loc.method.startswith("fuzzy"):
        loc.reindent = _indent_delta([(got[g], old[i]) for i, g in omap.items() if got[g].strip() == old[i].strip()])
    out: list[str] = []
    gi, core, added, removed = 0, [None, None], 0, 0
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag == "equal":
            for i in range(i1, i2):
                if omap.get(i, -1) >= gi:
                    out += got[gi : omap[i] + 1]
                    gi = omap[i] + 1
            continue
        for i in range(i1, i2):
            g = omap.get(i)
            if g is None or g < gi or got[g].strip() != old[i].strip():
                found = f"line {loc.start + g + 1} is {got[g].strip()!r}" if g is not None and g >= gi else "it is not there"
                raise MatchFailure(
                    f"lines {loc.start + 1}-{loc.end} resemble the block ({loc.method}) but a line it removes differs: "
                    f"expected {old[i].strip()!r}, {found}. Quote the lines to remove exactly as they are now."
                )
            out += got[gi:g]
            gi = g + 1
        core[0] = len(out) if core[0] is None else core[0]
        out += [_reindent(x, loc) for x in new[j1:j2]]
        core[1] = len(out)
        added, removed = added + j2 - j1, removed + i2 - i1
    out += got[gi:]
    return out, (core[0] or 0, core[1] or 0), added, removed


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
