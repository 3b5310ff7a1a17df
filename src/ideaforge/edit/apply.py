"""Applying parsed edits to a set of files, safely.

Pure on dicts: `files` maps relative POSIX paths to contents and a new mapping
comes back; nothing touches the disk. Two promises:

* every path is checked against the environment's classes before anything is
  applied, so a reply that touches the evaluator changes nothing at all;
* a hunk is applied only where it matches unambiguously (`edit.match`): a fuzzy
  match never deletes a line the model did not quote, and anything else is refused
  with a message that tells the model what was searched for and what is there instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ideaforge.edit.match import Located, MatchFailure, locate, rebuild
from ideaforge.edit.parse import FileEdit, Hunk, normalise_path
from ideaforge.edit.placeholder import elision, elision_message
from ideaforge.envs.spec import EnvSpec
from ideaforge.errors import EditRefused

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
        elided = elision(_split(current)[0], _split(content)[0]) if current is not None else None
        if elided:
            raise EditRefused(f"{e.path} (the whole file): " + elision_message(*elided, "file"))
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
        elided = elision(h.old_lines, h.new_lines)
        if elided:
            failures.append(f"{label}: " + elision_message(*elided, e.source))
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
