"""Ranking a file's windows by how much of a block they contain, fast but exactly as difflib ranks them.

The fuzzy matcher scores a window (a run of lines a line or two shorter or longer
than the block) by the characters difflib's SequenceMatcher finds in order in it,
``round(found / len(block), 3)``, among windows that pass difflib's quick_ratio
filter. Scoring every window costs ~0.2 ms each: seconds on a large file. Here:

* every window gets an upper bound on `found`, the longest common subsequence (no
  set of difflib's matching blocks can exceed it), computed by rapidfuzz in C++;
* windows are visited from the best bound down, and only while their bound could
  still beat the best exact score found so far (branch and bound);
* a visited window runs difflib's own recursion (find_longest_match on what is left
  either side of each block) with the bound of what is still unexplored, and stops
  as soon as it provably cannot reach the score it needs.

The answer, ties and their order included, is the one scoring every window gives;
tests/test_edits.py holds it to the original matcher's answers word for word.
"""

from __future__ import annotations

from collections.abc import Callable
from difflib import SequenceMatcher

SIZES = (0, -1, 1, -2, 2)  # window sizes tried around the block's length: a line or two drifted in or out
_SEED = 16  # windows scored exactly first, to learn how good the best one is

Window = tuple[float, int, int]  # (score, start, end): lines [start, end) of the file


class WindowRanker:
    """The windows of `stripped` (a file's lines, stripped) ranked against `block` (stripped lines).

    Rank order: higher score first, then the window closest to the block's length, then
    the earlier start, then the order of SIZES (what a stable sort of windows made size
    by size, start by start, gives).
    """

    def __init__(self, stripped: list[str], block: list[str]):
        self.stripped = stripped
        self.target = "\n".join(block)
        self.lt = len(self.target)
        self.sm = SequenceMatcher(None, autojunk=False)
        self.sm.set_seq2(self.target)
        self.lcs, self.extract = _rapidfuzz()
        offsets = [0]  # one joined text, so that a window's text is a slice, not a join
        for line in stripped:
            offsets.append(offsets[-1] + len(line) + 1)
        text = "\n".join(stripped)
        self.windows: list[str] = []
        self.meta: list[tuple[int, int, int, int]] = []  # (start, end, |size - block size|, rank in SIZES)
        for rank, k in enumerate(SIZES):
            size = len(block) + k
            for i in range(0, len(stripped) - size + 1 if size > 0 else 0):
                window = text[offsets[i] : offsets[i + size] - 1]
                if 2 * min(len(window), self.lt) >= self.lt:  # else quick_ratio < 0.5: the filter drops it
                    self.windows.append(window)
                    self.meta.append((i, i + size, abs(k), rank))
        self.exact: dict[int, float | None] = {}  # window -> score, None = dropped by the filter

    def top(self, keep: Callable[[int, int], bool] | None = None, floor: float | None = None) -> Window | None:
        """The first window in rank order for which keep(start, end) holds, or None if there is none.

        With `floor`, windows scoring below it do not count: None then also means "none
        scores at least `floor`", which is all the callers that pass one need to know.
        """
        if floor is None and keep is None:
            seed = [w for w in (self._exact(n, 0.0) for n in self._by_bound(None, limit=_SEED)) if w is not None]
            floor = max(seed, default=0.0)  # the best scores at least this; nothing below can win
        best: tuple | None = None  # (rank key, window)
        for opt, n in self._by_bound(floor):
            if best is not None and opt > best[0]:
                break  # no window from here on can rank above the best found
            start, end = self.meta[n][:2]
            if keep is not None and not keep(start, end):
                continue
            need = max(floor or 0.0, -best[0][0] if best else 0.0)  # to rank above the best, tie-breaks aside
            s = self._exact(n, need)
            if s is None or s < need:
                continue
            key = (-s, *opt[1:])
            if best is None or key < best[0]:
                best = (key, (s, start, end))
        return best[1] if best else None

    def _by_bound(self, floor: float | None, limit: int | None = None) -> list:
        """Windows whose bound reaches `floor`, as (optimistic rank key, index) sorted; or the `limit` best bounds."""
        if self.extract is None:  # no rapidfuzz: the bound is the shorter length, every window is a candidate
            bounds = [(n, min(len(w), self.lt)) for n, w in enumerate(self.windows)]
        else:
            cutoff = max(0, int(((floor or 0.0) - 0.001) * self.lt)) if floor is not None else None
            found = self.extract(self.target, self.windows, scorer=self.lcs, limit=limit, score_cutoff=cutoff)
            bounds = [(n, score) for _, score, n in found]
        if limit is not None:
            return [n for n, _ in bounds[:limit]]
        lt = max(1, self.lt)
        meta = self.meta
        return sorted(((-round(b / lt, 3), meta[n][2], meta[n][0], meta[n][3]), n) for n, b in bounds)

    def _exact(self, n: int, need: float) -> float | None:
        """difflib's score of window n; None if the filter drops it; -1.0 if it provably scores below `need`."""
        if n in self.exact:
            return self.exact[n]
        window = self.windows[n]
        self.sm.set_seq1(window)
        if self.sm.quick_ratio() * (self.lt + len(window)) < self.lt:  # upper bound on score < 0.5
            self.exact[n] = None
            return None
        found = self._found(window, need)
        if found is None:
            return -1.0  # not memoised: a lower `need` later must look again
        self.exact[n] = round(found / max(1, self.lt), 3)
        return self.exact[n]

    def _found(self, a: str, need: float) -> int | None:
        """Total size of difflib's matching blocks of `a` (set as seq1) and the block, as get_matching_blocks
        computes it; None as soon as that total provably stays below a score of `need`."""
        b, lt = self.target, max(1, self.lt)
        bound = self.lcs or (lambda x, y: min(len(x), len(y)))
        queue = [(0, len(a), 0, len(b), bound(a, b))]
        found, pending = 0, queue[0][4]  # pending: upper bound of what the queued ranges can still add
        while queue:
            if round((found + pending) / lt, 3) < need:
                return None
            queue.sort(key=lambda q: q[4])  # the range with the most left to gain first: the bound falls fastest
            alo, ahi, blo, bhi, most = queue.pop()
            pending -= most
            i, j, k = self.sm.find_longest_match(alo, ahi, blo, bhi)
            if k:
                found += k
                if alo < i and blo < j:
                    queue.append((alo, i, blo, j, bound(a[alo:i], b[blo:j])))
                    pending += queue[-1][4]
                if i + k < ahi and j + k < bhi:
                    queue.append((i + k, ahi, j + k, bhi, bound(a[i + k : ahi], b[j + k : bhi])))
                    pending += queue[-1][4]
        return found


def _rapidfuzz():
    """rapidfuzz's LCS length and its batch search, if installed; without them every window is scored."""
    try:
        from rapidfuzz import process
        from rapidfuzz.distance import LCSseq
    except ImportError:  # pragma: no cover - rapidfuzz is a dependency; this keeps a bare install working
        return None, None
    return LCSseq.similarity, process.extract
