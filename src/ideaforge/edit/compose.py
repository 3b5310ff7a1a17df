"""Applying several hunks to one file: each is matched against the file the model saw.

A model writes every block of a reply against the file it was shown, so a later
block may quote, as unchanged context, a line an earlier block changes. Each hunk is
therefore located in the *original* text, and the hunks compose when the lines they
change do not overlap (context may be shared). That also keeps every line number in
a message the model's own. A hunk that matches nothing in the original is tried once
more against the text as edited so far, for replies written as a sequence (a block
that quotes what an earlier block wrote); it still may not change those lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ideaforge.edit.match import MatchFailure, locate, rebuild
from ideaforge.edit.parse import Hunk


def split_lines(text: str) -> tuple[list[str], str, bool]:
    """Lines without terminators, the file's line ending, and whether it ends with one."""
    eol = "\r\n" if "\r\n" in text else "\n"
    body = text.replace("\r\n", "\n")
    final_nl = body.endswith("\n")
    lines = body.split("\n")
    if final_nl:
        lines.pop()
    return (lines if body else []), eol, final_nl or not body


@dataclass
class FileText:
    """One file under edit: the lines the model saw and what hunks did to them.

    `ins[p]` holds the lines inserted before original line p (p = len(orig): at the
    end), in hunk order; `rep[i]` the lines that replace original line i (a span's
    new lines sit at its first line, the rest get []); None = unchanged.
    """

    orig: list[str]
    eol: str
    final_nl: bool
    ins: dict[int, list[str]] = field(default_factory=dict)
    rep: dict[int, list[str]] = field(default_factory=dict)
    changed: list[tuple[int, int]] = field(default_factory=list)  # orig lines [a, b) replaced; (p, p) = inserted at p

    @classmethod
    def of(cls, text: str) -> FileText:
        return cls(*split_lines(text))

    def lines(self) -> tuple[list[str], list[int | None]]:
        """The text so far, and per line its line in orig (None = written by a hunk)."""
        cur: list[str] = []
        origin: list[int | None] = []
        for p in range(len(self.orig) + 1):
            cur += self.ins.get(p, [])
            origin += [None] * len(self.ins.get(p, []))
            if p < len(self.orig):
                kept = p not in self.rep
                cur += [self.orig[p]] if kept else self.rep[p]
                origin += [p] if kept else [None] * len(self.rep[p])
        return cur, origin

    def render(self) -> str:
        cur = self.lines()[0]
        return self.eol.join(cur) + (self.eol if self.final_nl and cur else "")

    def place(self, h: Hunk) -> tuple[str, int, int]:
        """Apply one hunk; (how it matched, lines added, lines removed), or MatchFailure for the model."""
        hint = h.old_start_hint - 1 if h.old_start_hint else None
        try:
            loc = locate(self.orig, h, hint)
            _, spans, added, removed = rebuild(self.orig[loc.start : loc.end], h, loc)
        except MatchFailure as first:
            if not self.changed:
                raise
            return self._place_in_edited(h, first)
        if loc.method.startswith("fuzzy") and self.changed:
            # only a drifted match in the original: a block that quotes an earlier block's
            # new lines exactly belongs there
            try:
                return self._place_in_edited(h, MatchFailure(""), exact_only=True)
            except MatchFailure:
                pass
        spans = [(loc.start + a, loc.start + b, new) for a, b, new in spans]
        for a, b, _ in spans:
            self._check_overlap(a, b)
        for a, b, new in spans:
            self._record(a, b, new)
        return loc.method, added, removed

    def _record(self, a: int, b: int, new: list[str], first: bool = False) -> None:
        """Original lines [a, b) become `new`; a == b inserts before line a (first: before earlier insertions)."""
        if a == b:
            at = self.ins.setdefault(a, [])
            if first:
                at[0:0] = new
            else:
                at.extend(new)
        else:
            self.rep[a] = list(new)
            self.rep.update({i: [] for i in range(a + 1, b)})
        self.changed.append((a, b))

    def _check_overlap(self, a: int, b: int) -> None:
        for c, d in self.changed:
            hit = max(a, c) < min(b, d) if a < b and c < d else (c < a < d if a == b else a < c < b)
            if hit:
                raise MatchFailure(
                    f"it overlaps lines an earlier hunk of this edit already changed (lines {c + 1}-{max(c + 1, d)}); "
                    "hunks must touch separate parts of the file. Merge the two changes into one hunk."
                )

    def _place_in_edited(self, h: Hunk, first: MatchFailure, exact_only: bool = False) -> tuple[str, int, int]:
        """The hunk matched against the text as edited so far; `first` (the original's answer) if it fails there."""
        cur, origin = self.lines()
        try:
            loc = locate(cur, h, None)
            if exact_only and loc.method.startswith("fuzzy"):
                raise first
            _, spans, added, removed = rebuild(cur[loc.start : loc.end], h, loc)
        except MatchFailure:
            raise first from None
        spans = [(loc.start + a, loc.start + b, new) for a, b, new in spans]
        for a, b, _ in spans:
            near = range(a, b) if a < b else range(max(0, a - 1), min(len(cur), a + 1))
            written = [k for k in near if origin[k] is None]
            if written and (a < b or len(written) == 2):
                raise MatchFailure(
                    f"it overlaps lines an earlier hunk of this edit already changed (they are lines {written[0] + 1}-"
                    f"{written[-1] + 1} after it); hunks must touch separate parts of the file. Merge the two changes into one hunk."
                )
        for a, b, new in spans:
            if a < b:  # original lines only, consecutive: checked above
                self._record(origin[a], origin[b - 1] + 1, new)
            elif a == len(cur):
                self._record(len(self.orig), len(self.orig), new)
            elif origin[a] is not None:
                self._record(origin[a], origin[a], new)  # before line a, after what was written above it
            else:  # line a was written, so line a - 1 is original: right after it, before what was written
                p = origin[a - 1] + 1 if a else 0
                self._record(p, p, new, first=True)
        return loc.method, added, removed
