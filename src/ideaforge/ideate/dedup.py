"""Near-duplicate ideas: normalised token sets compared by Jaccard similarity.

Deterministic and cheap on purpose (no embeddings, no model call). Two ideas are
duplicates when the token sets of title + description overlap by at least
`threshold`, or their titles alone overlap by at least `TITLE_THRESHOLD`.

Ideas that carry an edit (the offline ideators') are compared by what they do, not
by their wording: generated titles such as "lr: 1e-3 -> 2e-3" and "lr: 1e-3 ->
5e-4" read alike but are different experiments. Such an idea is a duplicate of a
previous one with the same edit (blocks in any order), or of a previous text whose
title is exactly its title.

`DedupIndex` makes the same decisions as `is_duplicate` without rescanning the
campaign: it keeps inverted indexes of the token sets (candidates are found by shared
tokens, and Jaccard follows from the overlap counts), a set of edit keys, and the
texts sorted for the title-prefix test. A campaign builds it once and adds each idea
it keeps: checking 8 ideas against 10,000 costs milliseconds, not minutes.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

from ideaforge.ideate.types import Context, Idea, ScoredIdea

THRESHOLD = 0.6  # Jaccard over title + description tokens
TITLE_THRESHOLD = 0.8  # Jaccard over title tokens alone (titles of >= 2 tokens)

# Words that say *that* something changes, not *what*: "use X instead of Y" = "replace Y with X".
_STOP = frozenset(
    """a an the and or of to in on for with without by from into as at via per is are be it its this that
    these those we our use using used replace replacing replaced instead swap switch switching try trying
    add adding added apply applying change changing changed adopt introduce introducing new better improve
    improved improving model training train instead rather than based while which can will so more less
    simple simply approach idea method""".split()
)
_SPELLING = ((r"isation", "ization"), (r"ising", "izing"), (r"ise$", "ize"), (r"ised$", "ized"))

Previous = str | Idea | ScoredIdea


_WORD = re.compile(r"[a-z0-9]+(?:[.\-][a-z0-9]+)*")


def tokens(text: str) -> frozenset[str]:
    """Lower-cased words and numbers, stop words out, British spellings and plurals folded."""
    out = {_fold(w) for w in _WORD.findall(text.lower()) if w not in _STOP}
    return frozenset(out)


@lru_cache(maxsize=65536)  # words repeat across ideas; folding each once makes indexing a campaign cheap
def _fold(w: str) -> str:
    for pat, rep in _SPELLING:
        w = re.sub(pat, rep, w)
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    return w


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def edit_key(edit: str | None) -> frozenset[str] | None:
    """An edit as the set of its blocks (each normalised for trailing whitespace), order-free."""
    if not edit or not edit.strip():
        return None
    blocks = re.split(r"(?m)^\s*>{5,9} ?REPLACE\s*$", edit.replace("\r\n", "\n"))
    return frozenset("\n".join(ln.rstrip() for ln in b.strip().split("\n")) for b in blocks if b.strip())


def names_title(text: str, title: str) -> bool:
    """Whether a previous text is `title`, alone or followed by a description ("title: ...", "title — ...")."""
    text, title = text.strip(), title.strip()
    if not title or not text.startswith(title):
        return False
    rest = text[len(title) :]
    # "A + B" proposed says nothing about "A"; "A: why" or "A — why" is A with its description
    return rest == "" or (rest[0] in " \t\n:;|—–(" and not rest.lstrip().startswith("+"))


def _parts(x: Previous) -> tuple[str, str, str | None]:
    """(title, full text, edit) of an idea or of a previous text ("title: description" or a title)."""
    if isinstance(x, (Idea, ScoredIdea)):
        return x.title, f"{x.title}\n{x.description}", x.edit
    title = re.split(r"\n| — | -- |: ", x, maxsplit=1)[0]
    return title, x, None


def is_duplicate(idea: Idea | ScoredIdea, previous_texts: Iterable[Previous], threshold: float = THRESHOLD) -> bool:
    title, full, edit = _parts(idea)
    key = edit_key(edit)
    t_tok, f_tok = tokens(title), tokens(full)
    for prev in previous_texts:
        p_title, p_full, p_edit = _parts(prev)
        if key is not None:
            # an idea with an edit: same edit, or the very same title (a text we cannot compare by edit)
            if edit_key(p_edit) == key or names_title(p_full if isinstance(prev, str) else p_title, title):
                return True
            if p_edit is not None or isinstance(prev, str):
                continue
        if jaccard(f_tok, tokens(p_full)) >= threshold:
            return True
        p_t = tokens(p_title)
        if len(t_tok) >= 2 and len(p_t) >= 2 and jaccard(t_tok, p_t) >= TITLE_THRESHOLD:
            return True
    return False


def dedup(ideas: Sequence[Idea], previous: Iterable[Previous] | "DedupIndex" = (),
          threshold: float = THRESHOLD) -> list[Idea]:
    """`ideas` without near-duplicates of `previous` or of an earlier idea in the same list; order kept.

    Given a DedupIndex, the ideas kept are added to it (a campaign keeps one index)."""
    index = previous if isinstance(previous, DedupIndex) else DedupIndex(previous, threshold)
    return index.keep(ideas)


class DedupIndex:
    """The previous ideas of a campaign, indexed: `is_duplicate` without a scan (same decisions)."""

    def __init__(self, previous: Iterable[Previous] = (), threshold: float = THRESHOLD):
        self.threshold = threshold
        self.full: list[int] = []                    # entry -> how many tokens its title + description has
        self.title: list[int] = []                   # entry -> how many tokens its title has
        self.plain: list[bool] = []                  # entry is an Idea without edit (compared by text even
        #                                              against ideas that carry an edit)
        self.full_post: dict[str, list[int]] = {}    # token -> entries holding it in their full text
        self.title_post: dict[str, list[int]] = {}   # token -> entries (titles of >= 2 tokens only)
        self.empty: list[int] = []                   # entries with no full-text token (Jaccard 1 to each other)
        self.edits: set[frozenset[str]] = set()
        self.names = TitleIndex()                    # texts that may name a title (names_title)
        for prev in previous:
            self.add(prev)

    def __len__(self) -> int:
        return len(self.full)

    def add(self, prev: Previous) -> None:
        p_title, p_full, p_edit = _parts(prev)
        i = len(self.full)
        f_tok, t_tok = tokens(p_full), tokens(p_title)
        self.full.append(len(f_tok))
        self.title.append(len(t_tok))
        self.plain.append(not isinstance(prev, str) and p_edit is None)
        for t in f_tok:
            self.full_post.setdefault(t, []).append(i)
        if len(t_tok) >= 2:
            for t in t_tok:
                self.title_post.setdefault(t, []).append(i)
        if not f_tok:
            self.empty.append(i)
        key = edit_key(p_edit)
        if key is not None:
            self.edits.add(key)
        self.names.add(p_full if isinstance(prev, str) else p_title)

    def is_duplicate(self, idea: Idea | ScoredIdea) -> bool:
        title, full, edit = _parts(idea)
        key = edit_key(edit)
        if key is not None and (key in self.edits or self.names.names(title)):
            return True
        only_plain = key is not None  # an idea with an edit is compared by text only with plain ideas
        f_tok, t_tok = tokens(full), tokens(title)
        if not f_tok:  # Jaccard(empty, empty) is 1
            if any(self.plain[j] or not only_plain for j in self.empty):
                return True
        if self._similar(f_tok, self.full, self.full_post, self.threshold, only_plain):
            return True
        return len(t_tok) >= 2 and self._similar(t_tok, self.title, self.title_post, TITLE_THRESHOLD, only_plain)

    def _similar(self, toks: frozenset[str], sizes: list[int], post: dict[str, list[int]],
                 threshold: float, only_plain: bool) -> bool:
        """Any entry whose set has Jaccard >= threshold with `toks` (entries sharing no token have 0):
        |A & B| is counted from the postings, |A | B| = |A| + |B| - |A & B|."""
        overlap: Counter[int] = Counter()
        for t in toks:
            overlap.update(post.get(t, ()))
        n = len(toks)
        for j, common in overlap.items():
            if only_plain and not self.plain[j]:
                continue
            if common / (n + sizes[j] - common) >= threshold:
                return True
        return False

    def keep(self, ideas: Sequence[Idea], add: bool = True) -> list[Idea]:
        """The ideas that duplicate nothing indexed nor each other, in order; each kept one is added
        (with `add=False` the caller adds them itself, e.g. in the form a resumed campaign will see)."""
        kept: list[Idea] = []
        batch = DedupIndex(threshold=self.threshold)
        for idea in ideas:
            if not self.is_duplicate(idea) and not batch.is_duplicate(idea):
                kept.append(idea)
                batch.add(idea)
                if add:
                    self.add(idea)
        return kept


class TitleIndex:
    """Texts kept sorted, so "does any of them name this title?" (`names_title`) is one bisect."""

    def __init__(self, texts: Iterable[str] = ()):
        self.texts = sorted(t.strip() for t in texts)

    def add(self, text: str) -> None:
        bisect.insort(self.texts, text.strip())

    def names(self, title: str) -> bool:
        title = title.strip()
        if not title:
            return False
        i = bisect.bisect_left(self.texts, title)  # every text starting with `title` sorts from here on
        while i < len(self.texts) and self.texts[i].startswith(title):
            if names_title(self.texts[i], title):
                return True
            i += 1
        return False


def proposed_titles(ctx: Context) -> TitleIndex:
    """The campaign's proposed texts of one ideation context, indexed once per context."""
    cached = getattr(ctx, "_proposed_index", None)
    if cached is None or cached[0] is not ctx.proposed or cached[1] != len(ctx.proposed):
        cached = (ctx.proposed, len(ctx.proposed), TitleIndex(ctx.proposed))
        ctx._proposed_index = cached  # type: ignore[attr-defined]
    return cached[2]
