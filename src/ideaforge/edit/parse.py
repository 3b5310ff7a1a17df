"""Parsing a model's reply into file edits.

Two formats are accepted, mixed freely in one reply, with any prose and code
fences around them:

* unified diffs (git style or plain ``---``/``+++`` headers, ``/dev/null`` for
  new and deleted files). Hunk header counts are never trusted: the body is
  recounted and the header's start line is kept only as a position hint, because
  models miscount lines far more often than they miswrite them.
* search/replace blocks, a file path alone on a line followed by
  ``<<<<<<< SEARCH`` / ``=======`` / ``>>>>>>> REPLACE``.

Parsing knows nothing about the files; `edit.apply` matches the hunks and
enforces the environment's rules. A reply that cannot be parsed safely (cut off,
malformed, a path that leaves the environment) raises EditRefused with a message
written for the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal

from ideaforge.errors import EditRefused

EditKind = Literal["modify", "create", "delete"]

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SEARCH = re.compile(r"^ {0,3}<{5,9} ?SEARCH\s*$")
_DIVIDER = re.compile(r"^ {0,3}={5,9}\s*$")
_REPLACE = re.compile(r"^ {0,3}>{5,9} ?REPLACE\s*$")
_HUNK = re.compile(r"^@@ *(?:-(\d+)(?:,(\d+))?)? *(?:\+(\d+)(?:,(\d+))?)? *@@")
_BARE_HUNK = re.compile(r"^@@(?:\s.*)?$")  # "@@", "@@ ... @@", "@@ def main():": a header with no counts
_CODE_EXT = r"py|pyi|pyx|txt|toml|json|ya?ml|cfg|ini|md|rst|sh|c|cc|cpp|h|hpp|cu|js|ts|rs|go|java|jl|lua|sql|html|css"
# a file path in prose or a fence's info string: words with a code file's extension
_PATH_TOKEN = re.compile(rf"(?<![\w./-])((?:[\w.-]+/)*[\w-][\w.-]*\.(?:{_CODE_EXT}))(?![\w/-])", re.I)
# a markdown bullet of prose ("- Raises dropout ...", "- `grad_clip` stays"), never a diff line of code
_BULLET = re.compile(r"^[-+*] (?:\*\*|`|[A-Z][a-z]+\b|\d+[.)] )")
_GIT = re.compile(r"^diff --git (\S+) (\S+)\s*$")
_TIMESTAMP = re.compile(r"\s+\d{4}-\d\d-\d\d[ T][\d:.]+(?:\s*[+-]\d{4})?$")  # after a ---/+++ path
_FORMAT_HELP = (
    "write each change as a unified diff (--- a/path, +++ b/path, @@ hunks) or as a "
    "search/replace block: the file path alone on a line, then <<<<<<< SEARCH, the exact "
    "current lines, =======, the new lines, >>>>>>> REPLACE"
)


@dataclass
class Hunk:
    """One replacement: `old_lines` must be found in the file and become `new_lines`.

    Lines carry no line terminator. `old_start_hint` is the 1-based line a diff header
    claimed (None for search/replace); it only breaks ties, it never places a hunk.
    """

    old_lines: list[str]
    new_lines: list[str]
    old_start_hint: int | None = None


@dataclass
class FileEdit:
    path: str
    kind: EditKind
    hunks: list[Hunk] | None = None
    content: str | None = None  # full text for kind="create"
    source: str = "diff"  # "diff" or "search_replace": shapes the error messages
    line: int = 0  # 1-based line of the reply where the edit starts, for messages


def parse_reply(text: str) -> list[FileEdit]:
    """All edits in a model reply, in reply order; EditRefused when none or unsafe."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    parser = _Parser(lines)
    edits = parser.run()
    if parser.open_fence is not None:
        raise EditRefused(
            f"the reply looks truncated: the code fence opened at line {parser.open_fence} is never "
            "closed. Send the complete edit again, shorter if needed (only the changed parts)."
        )
    if not edits:
        raise EditRefused(f"no edit found in the reply: {_FORMAT_HELP}.")
    return edits


def normalise_path(raw: str, strip_prefix: str | None = None) -> str:
    """A clean relative POSIX path from a header or a block's file line.

    `strip_prefix` is the git prefix ("a/" or "b/") a diff side may carry. Absolute
    paths and `..` are refused rather than repaired: an edit aimed outside the
    environment is a mistake the model has to see.
    """
    p = raw.strip().strip("`*\"'").strip()
    p = p.replace("\\", "/")
    if strip_prefix and p.startswith(strip_prefix):
        p = p[len(strip_prefix) :]
    while p.startswith("./"):
        p = p[2:]
    if not p:
        raise EditRefused(f"an edit names an empty file path ({raw!r}); name the file relative to the environment root, e.g. train.py")
    pure = PurePosixPath(p)
    if pure.is_absolute() or re.match(r"^[A-Za-z]:/", p):
        raise EditRefused(f"{raw.strip()!r} is an absolute path; name files relative to the environment root, e.g. train.py or model/layers.py")
    if ".." in pure.parts:
        raise EditRefused(f"{raw.strip()!r} leaves the environment (path traversal with '..'); only files inside the environment may be edited")
    return "/".join(x for x in pure.parts if x not in ("", "."))


def hunk_header(line: str) -> re.Match | None:
    """The @@ line's match (groups: old start, old count, new start, new count), or None."""
    return _HUNK.match(line) or _BARE_HUNK.match(line)


def _one_path(text: str) -> str | None:
    """The single file path named in `text`, or None when it names none or several."""
    found = {m.strip("`*\"'") for m in _PATH_TOKEN.findall(text)}
    return found.pop() if len(found) == 1 else None


def _fence_path(line: str) -> str | None:
    """A path in an opening fence's info string: ```python:train.py, ```diff model/layers.py."""
    m = _FENCE.match(line)
    return _one_path(line[m.end() :]) if m else None


def _prose_path(line: str) -> str | None:
    """The file a short path line names: "Change in train.py:", "In `model/layers.py`:", "**train.py**"."""
    bare = line.strip().strip("*_").strip()
    if not (bare.endswith(":") or len(bare.split()) <= 4):
        return None  # a sentence of prose may name a file it does not edit
    return _one_path(line)


def _diff_path(raw: str, prefix: str) -> str | None:
    """The path on a ---/+++ line (None for /dev/null), without a trailing timestamp."""
    raw = raw.split("\t")[0].strip()
    raw = _TIMESTAMP.sub("", raw)
    if raw in ("/dev/null", "dev/null", "a/dev/null", "b/dev/null", "null"):
        return None
    return normalise_path(raw, prefix)


@dataclass
class _Parser:
    lines: list[str]
    i: int = 0
    open_fence: int | None = None  # 1-based line of an unclosed fence
    fence_path: str | None = None  # the path named in the open fence's info string
    edits: list[FileEdit] = field(default_factory=list)

    def run(self) -> list[FileEdit]:
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if _SEARCH.match(line):
                self._search_replace()
            elif _GIT.match(line) or self._at_diff_header():
                self._diff_file()
            elif hunk_header(line):
                self._headerless_hunks(line)
            else:
                self._fence(line)
                self.i += 1
        return self.edits

    def _peek(self, k: int) -> str:
        j = self.i + k
        return self.lines[j] if j < len(self.lines) else ""

    def _fence(self, line: str) -> None:
        if _FENCE.match(line):
            self.open_fence = None if self.open_fence is not None else self.i + 1
            self.fence_path = _fence_path(line) if self.open_fence is not None else None

    def _at_diff_header(self) -> bool:
        """A '--- '/'+++ ' pair that heads a diff, not lines of an explanatory snippet.

        A header is followed by a hunk, or ends a cut-off reply, or names paths; a pair
        of prose lines ("--- baseline: lr = 3e-4") is none of these and must not be read
        as a rename.
        """
        if not (self.lines[self.i].startswith("--- ") and self._peek(1).startswith("+++ ")):
            return False
        if hunk_header(self._peek(2)) or all(not x.strip() or _FENCE.match(x) for x in self.lines[self.i + 2 :]):
            return True
        sides = [_TIMESTAMP.sub("", x[4:].split("\t")[0].strip()) for x in self.lines[self.i : self.i + 2]]
        return not any(re.search(r"\s", x) for x in sides)

    def _headerless_hunks(self, line: str) -> None:
        """Hunks with no ---/+++ lines: the file must be named by the fence or the line above."""
        start = self.i
        path = self.fence_path if self.open_fence is not None else None
        above = self._line_above(start)
        if path is None and above is not None and not _FENCE.match(above):
            path = _prose_path(above)
        if path is None:
            raise EditRefused(
                f"line {start + 1} starts a diff hunk ({line.strip()}) with no file header before it; "
                "put '--- a/PATH' and '+++ b/PATH' lines before the first @@ line"
            )
        self.edits.append(FileEdit(normalise_path(path), "modify", self._hunks(), line=start + 1))

    def _line_above(self, start: int) -> str | None:
        """The nearest non-blank line above `start`, skipping fences that name no file."""
        j = start - 1
        while j >= 0 and (not self.lines[j].strip() or (_FENCE.match(self.lines[j]) and not _fence_path(self.lines[j]))):
            j -= 1
        return self.lines[j].strip() if j >= 0 else None

    # ---- search/replace ------------------------------------------------------
    def _search_replace(self) -> None:
        start = self.i
        path = self._block_path(start)
        search: list[str] = []
        replace: list[str] = []
        target, self.i = search, self.i + 1
        while True:
            if self.i >= len(self.lines):
                where = "before its =======" if target is search else "before its >>>>>>> REPLACE"
                raise EditRefused(
                    f"the reply looks truncated: the SEARCH block for {path} at line {start + 1} ends {where}. "
                    "Send the complete block again."
                )
            line = self.lines[self.i]
            self.i += 1
            if target is search and _DIVIDER.match(line):
                target = replace
            elif target is replace and _REPLACE.match(line):
                break
            elif _SEARCH.match(line):
                raise EditRefused(
                    f"the SEARCH block for {path} at line {start + 1} is not closed before another "
                    f"<<<<<<< SEARCH at line {self.i}; end each block with ======= and >>>>>>> REPLACE"
                )
            else:
                target.append(line)
        self.edits.append(FileEdit(path, "modify", [Hunk(search, replace)], source="search_replace", line=start + 1))

    def _block_path(self, start: int) -> str:
        """The file a SEARCH block edits: the nearest meaningful line above it."""
        line = self._line_above(start) or ""
        if _FENCE.match(line):
            return normalise_path(_fence_path(line) or "")  # ```python:train.py
        if _REPLACE.match(line):
            # a second block right after another one, without repeating the path: same file
            prev = [e for e in self.edits if e.source == "search_replace"]
            if prev:
                return prev[-1].path
        cand = re.sub(r"^(?:#+|//)?\s*(?:(?:file(?:name)?|path)\s*:\s*)?", "", line, flags=re.I).rstrip(":")
        cand = cand.strip().strip("`*\"'").strip()
        ticked = re.findall(r"`([^`\s]+\.\w+|[^`\s]+/[^`\s]*)`", line)
        if " " in cand and len(ticked) == 1:
            cand = ticked[0]  # "In `train.py`:" names the file in backticks
        if " " in cand:
            cand = _prose_path(line) or cand  # "Change in train.py:"
        if not cand or " " in cand or not re.search(r"[\w]", cand):
            raise EditRefused(
                f"cannot tell which file the SEARCH block at line {start + 1} edits: the line above it "
                f"({line[:80]!r}) is not a file path. Put the path alone on the line before <<<<<<< SEARCH."
            )
        return normalise_path(cand)

    # ---- unified diff --------------------------------------------------------
    def _diff_file(self) -> None:
        start = self.i
        git = _GIT.match(self.lines[self.i])
        old = new = None
        has_old = has_new = False
        if git:
            old, new = _diff_path(git.group(1), "a/"), _diff_path(git.group(2), "b/")
            has_old = has_new = True
            self.i += 1
            while self.i < len(self.lines) and not self.lines[self.i].startswith(("--- ", "@@", "diff --git")):
                meta = self.lines[self.i]
                if meta.startswith("new file mode"):
                    old = None
                elif meta.startswith("deleted file mode"):
                    new = None
                elif meta.startswith(("rename from", "rename to", "copy from", "Binary files")):
                    raise EditRefused(f"line {self.i + 1}: renames, copies and binary diffs are not supported; delete the old file and create the new one with text diffs")
                elif meta.strip() and not meta.startswith(("index ", "old mode", "new mode", "similarity")):
                    break
                self.i += 1
        if self.i < len(self.lines) and self.lines[self.i].startswith("--- ") and self._peek(1).startswith("+++ "):
            old, new = _diff_path(self.lines[self.i][4:], "a/"), _diff_path(self.lines[self.i + 1][4:], "b/")
            has_old = has_new = True
            self.i += 2
        if not (has_old and has_new):
            return
        hunks = self._hunks()
        self._add_diff_edit(old, new, hunks, start)

    def _add_diff_edit(self, old: str | None, new: str | None, hunks: list[Hunk], start: int) -> None:
        if old is None and new is None:
            raise EditRefused(f"line {start + 1}: a diff from /dev/null to /dev/null edits nothing; name the file")
        if old is not None and new is not None and old != new:
            raise EditRefused(
                f"line {start + 1}: the diff renames {old} to {new}; renames are not supported. "
                "Use the same path on the --- and +++ lines, or delete one file and create the other"
            )
        if not hunks and self.i >= len(self.lines):
            raise EditRefused(f"the reply looks truncated: the diff for {new or old} at line {start + 1} has no hunks after its header. Send the complete diff again.")
        if not hunks:
            raise EditRefused(f"line {start + 1}: the diff for {new or old} has a header but no @@ hunks; add the hunks with the changed lines")
        if old is None:
            body = [ln for h in hunks for ln in h.new_lines]
            if any(h.old_lines for h in hunks):
                raise EditRefused(f"line {start + 1}: the diff creates {new} (--- /dev/null) but its hunks remove lines; a new file's hunk has only '+' lines")
            content = "\n".join(body) + "\n" if body else ""
            self.edits.append(FileEdit(new, "create", None, content, line=start + 1))
        elif new is None:
            self.edits.append(FileEdit(old, "delete", None, None, line=start + 1))
        else:
            self.edits.append(FileEdit(new, "modify", hunks, line=start + 1))

    def _hunks(self) -> list[Hunk]:
        hunks: list[Hunk] = []
        while self.i < len(self.lines):
            m = hunk_header(self.lines[self.i])
            if not m:
                break
            hunks.append(self._hunk(m))
        return hunks

    def _hunk(self, m: re.Match) -> Hunk:
        """One hunk body, recounted; the header's counts only serve to spot a cut-off reply."""
        header_line = self.i + 1
        counted = m.re is _HUNK
        old_start = int(m.group(1)) if counted and m.group(1) is not None else None
        want_old = int(m.group(2)) if counted and m.group(2) is not None else None
        want_new = int(m.group(4)) if counted and m.group(4) is not None else None
        self.i += 1
        old: list[str] = []
        new: list[str] = []
        body = 0  # body lines consumed, trailing blanks included
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if hunk_header(line) or line.startswith("diff --git") or (line.startswith("--- ") and self._peek(1).startswith("+++ ")):
                break
            if line == "" and self._hunk_done(old, new, want_old, want_new):
                break  # a blank after a complete hunk separates it from prose
            if _BULLET.match(line) and want_old is not None and len(old) >= want_old and len(new) >= (want_new or 0):
                break  # the counts are met and a prose bullet list follows: "- Raises dropout ..."
            if line == "" or line[0] == " ":
                old.append(line[1:])
                new.append(line[1:])
            elif line[0] == "-":
                old.append(line[1:])
            elif line[0] == "+":
                new.append(line[1:])
            elif line[0] != "\\":  # "\ No newline at end of file" carries nothing we keep
                if not _FENCE.match(line):
                    self._check_hunk_end(header_line, old, new, want_old, want_new)
                break
            self.i += 1
            body += 1
        # blank lines that close a hunk are separators, not context the file must contain
        while old and new and old[-1] == "" and new[-1] == "" and self.lines[self.i - 1] == "":
            old.pop()
            new.pop()
            self.i -= 1
        at_end = all(not ln.strip() for ln in self.lines[self.i :])
        if at_end and (body == 0 or (want_old is not None and want_new is not None and len(old) < want_old and len(new) < want_new)):
            raise EditRefused(
                f"the reply looks truncated: the hunk at line {header_line} promises {want_old} old and {want_new} new "
                f"lines but the reply ends after {len(old)} and {len(new)}. Send the complete edit again."
            )
        if not old and not new:
            raise EditRefused(f"the hunk at line {header_line} is empty; every hunk needs ' ', '-' or '+' lines")
        return Hunk(old, new, old_start)

    def _hunk_done(self, old: list[str], new: list[str], want_old: int | None, want_new: int | None) -> bool:
        """At a blank line: has the hunk ended? Only if the header's counts are met and no diff line follows.

        Header counts are often too small, so a following ' '/'+'/'-' line means the blank
        was an unprefixed empty context line, not the end; guessing "end" there would
        silently drop the rest of the hunk.
        """
        nxt = next((ln for ln in self.lines[self.i + 1 :] if ln != ""), "")
        if _BULLET.match(nxt):
            return True  # prose bullets after a blank line: no diff line of code reads "- Raises ..."
        if want_old is None or want_new is None or len(old) < want_old or len(new) < want_new:
            return False
        return not (nxt[:1] in (" ", "+", "-") and not nxt.startswith(("--- ", "+++ ")))

    def _check_hunk_end(self, header_line: int, old: list[str], new: list[str], want_old: int | None, want_new: int | None) -> None:
        """A hunk cut short by a line without a diff prefix: prose, or a context line missing its space?"""
        short = (want_old is not None and len(old) < want_old) or (want_new is not None and len(new) < want_new)
        after = self.lines[self.i + 1 : self.i + 6]
        more_diff = any(ln[:1] in ("+", "-") and not ln.startswith(("---", "+++")) for ln in after if ln.strip())
        if short and more_diff:
            raise EditRefused(
                f"the hunk at line {header_line} is malformed: line {self.i + 1} ({self.lines[self.i][:60]!r}) does not "
                "start with ' ', '-' or '+'. Every line of a hunk needs that prefix; unchanged lines start with a space."
            )
