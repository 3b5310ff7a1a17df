"""The split evaluator's checks on a model server's answers: each held-out window scored once, at
the scoring batch size, with causality and batch independence checked on the same answers
(see `WindowScorer`). Imported by `ideaforge.envs.protocol`, which environment authors use."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ideaforge.errors import ModelInvalid

if TYPE_CHECKING:
    from ideaforge.envs.protocol import ModelClient

TOL = 1e-3  # allowed logit change in a check, relative to the window's logit scale (floored at 1)
CHECK_TOKENS = 32768  # tokens spent on check rows: windows checked = CHECK_TOKENS // T**2, clamped to [1, 4]


def _np():
    import numpy

    return numpy


def windows_to_check(T: int, n_windows: int, budget_tokens: int = CHECK_TOKENS) -> int:
    """How many windows get every position checked: each costs T rows of T tokens."""
    return min(n_windows, max(1, min(4, budget_tokens // (T * T))))


def _family_rows(x, donors, V: int, rng):
    """Rows for checking every position of window x [T]: for each cut c in 0..T-2, x[:c+1]
    followed by other held-out text (differing from x at every later position), plus one
    exact copy of x (cut T-1). Returns (rows [T, T], cuts [T])."""
    np = _np()
    T = len(x)
    rows = np.empty((T, T), dtype=np.int64)
    for c in range(T):
        y = x.copy()
        if c < T - 1:
            y[c + 1 :] = donors[rng.integers(len(donors))][c + 1 :]
            same = y[c + 1 :] == x[c + 1 :]
            y[c + 1 :][same] = (x[c + 1 :][same] + rng.integers(1, V, size=int(same.sum()))) % V
        rows[c] = y
    return rows, np.arange(T)


class _Family:
    """One checked window: the answers of its T check rows and of its scoring row.

    Two rows that agree on tokens 0..t must get the same logits at 0..t, whatever follows and
    whatever else is in their batches. `ref` holds, per position, the first answer seen, so
    memory is [T, V] however the rows are ordered.
    """

    def __init__(self, window: int, T: int, V: int, scale_floor: float = 1.0):
        np = _np()
        self.window = window
        self.ref = np.zeros((T, V), dtype=np.float32)
        self.known = -1  # positions 0..known of ref are set
        self.copies: list[tuple[object, int]] = []  # (logits [T, V], batch) of the exact copies and the scoring row
        self.causal: tuple[float, int] | None = None  # worst (change, position) between different rows
        self.floor = scale_floor

    def add(self, logits, cut: int, batch: int) -> None:
        np = _np()
        upto = min(cut, self.known)
        if upto >= 0:
            scale = max(self.floor, float(np.abs(self.ref[: upto + 1]).max()))
            diff = np.abs(logits[: upto + 1] - self.ref[: upto + 1]).max(axis=1) / scale
            t = int(diff.argmax())
            if diff[t] > TOL and (self.causal is None or diff[t] > self.causal[0]):
                self.causal = (float(diff[t]), t)
        if cut > self.known:
            self.ref[self.known + 1 : cut + 1] = logits[self.known + 1 : cut + 1]
            self.known = cut
        if cut == len(self.ref) - 1:
            self.copies.append((logits, batch))

    def batch_violation(self) -> tuple[float, int, int, int] | None:
        """(change, position, batch a, batch b) between identical rows, if over TOL."""
        np = _np()
        if len(self.copies) < 2:
            return None
        (a, ba), (b, bb) = self.copies[0], self.copies[-1]
        scale = max(self.floor, float(np.abs(a).max()))
        diff = np.abs(a - b).max(axis=1) / scale
        t = int(diff.argmax())
        return (float(diff[t]), t, ba, bb) if diff[t] > TOL else None


class WindowScorer:
    """Send every window once for scoring, with check rows mixed in, and check the answers.

    Iterating yields (window indices [b], logits [b, T, V]) for the scoring rows of each batch;
    every window is yielded exactly once. Rows (scoring and check rows alike) are shuffled with
    a generator seeded by `seed` and sent in batches of exactly `batch_size` rows (the last one
    may be shorter), so the model answers checks at the scoring batch size and cannot tell a
    check from a scoring row by its place. For `n_check` windows drawn with the same seed,
    every position t is checked: rows sharing tokens 0..t must get equal logits at 0..t
    (causality: nothing after t may matter), and an exact copy of the window, sent in another
    batch, must get the scoring row's logits everywhere (batch independence: the other rows
    may not matter). After the last batch a violation raises ModelInvalid; `report` says what
    was checked. Draw `seed` per trial (e.g. from os.urandom) and record it with the result.
    """

    def __init__(self, client: ModelClient, windows, *, vocab_size: int, batch_size: int, seed: int,
                 n_check: int | None = None):
        np = _np()
        self.client, self.V, self.bs, self.seed = client, vocab_size, max(1, batch_size), seed
        self.windows = np.ascontiguousarray(windows, dtype=np.int64)
        n, T = self.windows.shape
        rng = np.random.default_rng(seed)
        k = windows_to_check(T, n) if n_check is None else min(n, n_check)
        chosen = rng.choice(n, size=k, replace=False)
        rows, owner, cuts = [self.windows], [np.arange(n)], [np.full(n, -1)]  # cut -1: a scoring row
        for w in chosen:
            fam_rows, fam_cuts = _family_rows(self.windows[w], self.windows, vocab_size, rng)
            rows.append(fam_rows), owner.append(np.full(T, w)), cuts.append(fam_cuts)
        self.rows, self.owner, self.cuts = np.concatenate(rows), np.concatenate(owner), np.concatenate(cuts)
        self.order = rng.permutation(len(self.rows))
        self._separate_copies(chosen, rng)
        self.families = {int(w): _Family(int(w), T, vocab_size) for w in chosen}
        self.report = {"check_seed": seed, "checked_windows": [int(w) for w in chosen], "batch_size": self.bs,
                       "check_rows": int(len(self.rows) - n), "positions_checked": int(k * T)}

    def _separate_copies(self, chosen, rng) -> None:
        """Each exact copy goes in a different batch from its window's scoring row (else batch
        dependence could hide), swapped with a scoring row of another batch."""
        np = _np()
        n, T = self.windows.shape
        pos = np.empty(len(self.order), dtype=np.int64)
        pos[self.order] = np.arange(len(self.order))
        for w in chosen:
            copy_row = int(np.flatnonzero((self.owner == w) & (self.cuts == T - 1))[0])
            b = pos[w] // self.bs
            if pos[copy_row] // self.bs != b:
                continue
            others = [i for i in rng.permutation(n) if i not in chosen and pos[i] // self.bs != b]
            if not others:
                continue  # everything fits in one batch: only causality is checked
            i = int(others[0])
            self.order[pos[copy_row]], self.order[pos[i]] = i, copy_row
            pos[copy_row], pos[i] = pos[i], pos[copy_row]

    def __iter__(self):
        for b, start in enumerate(range(0, len(self.order), self.bs)):
            idx = self.order[start : start + self.bs]
            logits = self.client.logits(self.rows[idx], self.V)
            for j, row in enumerate(idx):
                w, cut = int(self.owner[row]), int(self.cuts[row])
                fam = self.families.get(w)
                if fam is not None:
                    fam.add(logits[j], len(self.rows[row]) - 1 if cut < 0 else cut, b)
            scoring = self.cuts[idx] < 0
            if scoring.any():
                yield self.owner[idx[scoring]], logits[scoring]
        self._verdict()

    def _verdict(self) -> None:
        for fam in self.families.values():
            bad = fam.batch_violation()
            if bad:
                raise ModelInvalid(
                    f"batch dependence: window {fam.window} got different logits in batches {bad[2]} and {bad[3]} "
                    f"(position {bad[1]}, change {bad[0]:.3g}); a row's logits may not depend on the other rows "
                    f"(check seed {self.seed})")
        for fam in self.families.values():
            if fam.causal:
                raise ModelInvalid(
                    f"future-token leak: logits at position {fam.causal[1]} of window {fam.window} changed when only "
                    f"tokens after it changed (change {fam.causal[0]:.3g}; check seed {self.seed})")


def draw_seed() -> int:
    """A per-trial check seed the model cannot predict; 31 bits so it is exact in a JSON float."""
    return int.from_bytes(os.urandom(4), "little") >> 1
