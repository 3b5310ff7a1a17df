"""Near-duplicate ideas: normalised token sets compared by Jaccard similarity.

Deterministic and cheap on purpose (no embeddings, no model call). Two ideas are
duplicates when the token sets of title + description overlap by at least
`threshold`, or their titles alone overlap by at least `TITLE_THRESHOLD`.

Ideas that carry an edit (the offline ideators') are compared by what they do, not
by their wording: generated titles such as "lr: 1e-3 -> 2e-3" and "lr: 1e-3 ->
5e-4" read alike but are different experiments. Such an idea is a duplicate of a
previous one with the same edit (blocks in any order), or of a previous text whose
title is exactly its title.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from ideaforge.ideate.types import Idea, ScoredIdea

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


def tokens(text: str) -> frozenset[str]:
    """Lower-cased words and numbers, stop words out, British spellings and plurals folded."""
    out = set()
    for w in re.findall(r"[a-z0-9]+(?:[.\-][a-z0-9]+)*", text.lower()):
        if w in _STOP:
            continue
        for pat, rep in _SPELLING:
            w = re.sub(pat, rep, w)
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.add(w)
    return frozenset(out)


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


def dedup(ideas: Sequence[Idea], previous: Iterable[Previous] = (), threshold: float = THRESHOLD) -> list[Idea]:
    """`ideas` without near-duplicates of `previous` or of an earlier idea in the same list; order kept."""
    kept: list[Idea] = []
    prev = list(previous)
    for idea in ideas:
        if not is_duplicate(idea, prev + kept, threshold):
            kept.append(idea)
    return kept
