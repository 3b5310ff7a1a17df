"""Edits as sets of SEARCH/REPLACE blocks: what the offline ideators build, combine and check.

An offline idea carries its implementation, so combining two ideas is combining
their blocks: identical blocks merge, two different replacements of the same lines
conflict, and whatever is left must still apply to the baseline files (checked with
`edit.apply`, the same code that applies every edit of the campaign).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ideaforge.edit.apply import apply_edits
from ideaforge.edit.parse import parse_reply
from ideaforge.errors import EditRefused
from ideaforge.ideate.dedup import proposed_titles
from ideaforge.ideate.types import Context, Idea, ScoredIdea


@dataclass(frozen=True)
class Block:
    path: str
    old: tuple[str, ...]  # lines replaced (no terminators); empty = create the file
    new: tuple[str, ...]

    def render(self) -> str:
        return "\n".join([self.path, "<<<<<<< SEARCH", *self.old, "=======", *self.new, ">>>>>>> REPLACE"])


def split_edit(edit: str | None) -> tuple[Block, ...] | None:
    """The blocks of an edit, in order; None when there is no edit or it cannot be parsed."""
    if not edit or not edit.strip():
        return None
    try:
        edits = parse_reply(edit)
    except EditRefused:
        return None
    out: list[Block] = []
    for e in edits:
        if e.kind != "modify" or not e.hunks:
            return None  # whole-file creates/deletes do not combine block-wise
        out += [Block(e.path, tuple(h.old_lines), tuple(h.new_lines)) for h in e.hunks]
    return tuple(out)


def render(blocks: Iterable[Block]) -> str:
    return "\n".join(b.render() for b in blocks) + "\n"


def merge(*parts: Iterable[Block]) -> tuple[Block, ...] | None:
    """Union of several block lists (identical blocks once); None if two replace the same lines differently."""
    out: list[Block] = []
    by_old: dict[tuple[str, tuple[str, ...]], Block] = {}
    for blocks in parts:
        for b in blocks:
            seen = by_old.get((b.path, b.old))
            if seen is not None:
                if seen != b:
                    return None
                continue
            by_old[(b.path, b.old)] = b
            out.append(b)
    return tuple(out)


def applies(ctx: Context, edit: str) -> bool:
    """Whether the edit applies cleanly to the baseline files under the environment's rules."""
    try:
        apply_edits(dict(ctx.files), parse_reply(edit), ctx.spec)
    except EditRefused:
        return False
    return True


def key(blocks: Iterable[Block]) -> frozenset[Block]:
    return frozenset(blocks)


def describe(blocks: Iterable[Block]) -> str:
    """The code changes in words, for the record and for a model reading the idea later."""
    out = []
    for b in blocks:
        old = next((x.strip() for x in b.old if x.strip() and x not in b.new), b.old[0].strip() if b.old else "")
        new = [x.strip() for x in b.new if x not in b.old and x.strip()]
        if not b.old:
            out.append(f"{b.path}: add `{new[0] if new else ''}`" + (f" and {len(new) - 1} more lines" if len(new) > 1 else ""))
        elif not new:
            out.append(f"{b.path}: remove `{old}`")
        else:
            more = f" (+{len(new) - 1} more lines)" if len(new) > 1 else ""
            out.append(f"{b.path}: `{old}` becomes `{new[0]}`{more}")
    return "; ".join(out)


def rng(ctx: Context, what: str) -> random.Random:
    # A str seed is hashed with sha512 by `random`, so this is stable across processes and
    # PYTHONHASHSEED values.
    return random.Random(f"{ctx.seed}:{ctx.epoch}:{what}")


def was_proposed(ctx: Context, title: str) -> bool:
    return proposed_titles(ctx).names(title)  # an index, not a scan of the campaign per candidate


def round_robin(*lists: list) -> Iterator:
    """a1, b1, c1, a2, b2, ...: candidates of several kinds, none starving the others."""
    for i in range(max((len(x) for x in lists), default=0)):
        for x in lists:
            if i < len(x):
                yield x[i]


class Picker:
    """Collects candidate ideas: drops repeats (by title or by edit), proposed titles and edits that do not apply."""

    def __init__(self, ctx: Context, seen: Iterable[ScoredIdea | Idea] = ()):
        self.ctx = ctx
        self.out: list[Idea] = []
        self._titles: set[str] = set()
        self._keys: set[frozenset[Block]] = set()
        for s in seen:
            blocks = split_edit(s.edit)
            if blocks:
                self._keys.add(key(blocks))

    def add(self, idea: Idea, blocks: tuple[Block, ...]) -> bool:
        k = key(blocks)
        if not blocks or idea.title in self._titles or k in self._keys or was_proposed(self.ctx, idea.title):
            return False
        idea.edit = render(blocks)
        if not applies(self.ctx, idea.edit):
            self._keys.add(k)  # do not check it twice
            return False
        self._titles.add(idea.title)
        self._keys.add(k)
        self.out.append(idea)
        return True

    def fill(self, candidates: Iterable[tuple[Idea, tuple[Block, ...]]], n: int) -> list[Idea]:
        for idea, blocks in candidates:
            if len(self.out) >= n:
                break
            self.add(idea, blocks)
        return self.out


def combos(ctx: Context, parents: list[ScoredIdea], ideator: str) -> list[tuple[Idea, tuple[Block, ...]]]:
    """Pairs of parents (best pairs first) whose edits merge; children name both parents."""
    usable = [(p, split_edit(p.edit)) for p in parents]
    usable = [(p, b) for p, b in usable if b]
    pairs = [(i + j, i, j) for i in range(len(usable)) for j in range(i + 1, len(usable))]
    out = []
    for _, i, j in sorted(pairs):
        (a, ab), (b, bb) = usable[i], usable[j]
        blocks = merge(ab, bb)
        if blocks is None or set(blocks) <= set(ab) or set(blocks) <= set(bb):
            continue  # conflicting, or one already contains the other
        idea = Idea(
            title=join_titles(a.title, b.title),
            description=f"Combine two ideas that did well. {a.title}: {a.description} {b.title}: {b.description}",
            code_changes=describe(blocks),
            parents=[a.id, b.id],
            kind="exploit",
            origin={"ideator": ideator, "prompt": "exploit", "move": "combine"},
        )
        out.append((idea, blocks))
    return out


def join_titles(*titles: str) -> str:
    """'A + B' and 'A + C' combine as 'A + B + C', not 'A + B + A + C'."""
    parts: list[str] = []
    for t in titles:
        for part in t.split(" + "):
            if part not in parts:
                parts.append(part)
    return " + ".join(parts)
