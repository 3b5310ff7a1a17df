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

from ideaforge.edit.compose import FileText, split_lines
from ideaforge.edit.match import MatchFailure
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
    reported, not just the first, so one repair round can fix them all. The hunks of
    one file, across all the reply's edits of it, are matched against the file as the
    model saw it (see `edit.compose`) and numbered together in messages.
    """
    if not edits:
        raise EditRefused("no edit found in the reply; nothing was changed")
    for e in edits:
        e.path = normalise_path(e.path)  # edits built by hand skip the parser's check
    if spec is not None:
        _check_policy(edits, spec)
    state: dict[str, str | None] = dict(files)
    texts: dict[str, FileText] = {}  # files with hunks applied, rendered into `state` at the end
    changes: dict[str, FileChange] = {}
    numbers = _Numbers(edits)
    problems: list[str] = []
    for e in edits:
        change = changes.setdefault(e.path, FileChange(e.path, ""))
        try:
            _apply_one(state, texts, e, change, numbers)
        except EditRefused as err:
            problems.append(str(err))
    if problems:
        raise EditRefused("the edit was not applied; nothing was changed.\n\n" + "\n\n".join(problems))
    for path, t in texts.items():
        state[path] = t.render()
    return ApplyResult(state, changes)


class _Numbers:
    """Hunk labels numbered per file across the whole reply: "train.py, block 2 of 3"."""

    def __init__(self, edits: list[FileEdit]):
        self.total: dict[str, int] = {}
        self.seen: dict[str, int] = {}
        for e in edits:
            self.total[e.path] = self.total.get(e.path, 0) + len(e.hunks or [])

    def next(self, e: FileEdit) -> str:
        self.seen[e.path] = self.seen.get(e.path, 0) + 1
        word = "block" if e.source == "search_replace" else "hunk"
        return f"{e.path}, {word} {self.seen[e.path]} of {self.total[e.path]}"


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


def _apply_one(state: dict[str, str | None], texts: dict[str, FileText], e: FileEdit, change: FileChange, numbers: _Numbers) -> None:
    if e.kind != "modify" and e.path in texts:
        state[e.path] = texts.pop(e.path).render()  # hunks before a delete or a full rewrite are settled first
    current = texts[e.path].render() if e.path in texts else state.get(e.path)
    if e.kind == "delete":
        if current is None:
            raise EditRefused(f"{e.path}: cannot delete it, the file does not exist; files that exist: {_existing(state)}")
        state[e.path] = None
        change.action, change.removed = "deleted", change.removed + len(split_lines(current)[0])
        return
    if e.kind == "create":
        # A full-content "create" of an existing file replaces it; the policy check has
        # already made sure the file is editable.
        content = e.content or ""
        elided = elision(split_lines(current)[0], split_lines(content)[0]) if current is not None else None
        if elided:
            raise EditRefused(f"{e.path} (the whole file): " + elision_message(*elided, "file"))
        state[e.path] = content
        change.action = change.action or ("replaced" if current is not None else "created")
        change.added += len(split_lines(content)[0])
        return
    hunks = e.hunks or []
    if current is None:
        if not hunks or hunks[0].old_lines:
            raise EditRefused(
                f"{e.path} does not exist, so its lines cannot be edited. Files that exist: {_existing(state)}. "
                "To create a file use an empty SEARCH section or a diff from /dev/null."
            )
        # an empty SEARCH on a missing file creates it; later blocks edit the new text
        numbers.next(e)
        current = "\n".join(hunks[0].new_lines) + "\n" if hunks[0].new_lines else ""
        change.action = change.action or "created"
        change.added += len(hunks[0].new_lines)
        hunks = hunks[1:]
    text = texts.setdefault(e.path, FileText.of(current))
    _apply_hunks(e, text, hunks, change, numbers)
    change.action = change.action or "modified"


def _apply_hunks(e: FileEdit, text: FileText, hunks: list[Hunk], change: FileChange, numbers: _Numbers) -> None:
    failures = []
    for h in hunks:
        label = numbers.next(e)
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
        try:
            method, added, removed = text.place(h)
        except MatchFailure as f:
            lines, n_new = text.lines()[0], len(h.new_lines)
            done = n_new and any(lines[i : i + n_new] == h.new_lines for i in range(len(lines) - n_new + 1))
            failures.append(f"{label}: {f}" + ("\n(Its new lines are already in the file: was this change sent twice?)" if done else ""))
            continue
        change.methods.append(method)
        change.added += added
        change.removed += removed
    if failures:
        raise EditRefused("\n\n".join(failures))


def _existing(state: dict[str, str | None]) -> str:
    return ", ".join(sorted(p for p, v in state.items() if v is not None)) or "none"
