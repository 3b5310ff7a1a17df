"""Per-step figures of an RL run, from the store alone (for `ideaforge report` and the benchmark).

Diversity is measured three ways per step: distinct ideas (by normalised title), mean
pairwise token-Jaccard similarity of the ideas' texts, and the share of the largest
idea cluster. A cluster is what an idea changes: for an implemented idea, the names on
the left of the lines its diff removes (`LR`, `LR + WIDTH`); for an idea that was not
implemented, its title, grouped greedily with titles of token-Jaccard >= 0.5. The
reference's mode-collapse figure is `clusters()`: cluster -> count per step.
"""

from __future__ import annotations

import re
from collections import Counter
from statistics import fmean

from ideaforge.rl import records as R
from ideaforge.rl.rewards import jaccard, tokens
from ideaforge.stats import mean_pairwise_similarity
from ideaforge.store import Store

TITLE_CLUSTER_JACCARD = 0.5
NO_IDEA = "(no idea)"  # the cluster of rollouts the parser found no idea in


def step_metrics(store: Store, only: int | None = None) -> list[dict]:
    """One dict per step (or only step `only`): step, status, rollouts, mean/max reward, rates,
    lengths, diversity, loss, and `clusters` (label -> rollouts of the step in it, largest first).

    The loop keeps this dict in rl_steps.stats["analysis"] when a step is done: labels of a
    step never change afterwards (ideas are clustered in id order, later ones join earlier
    leaders), so the report reads the stored figures instead of importing this module."""
    ideas = {i["id"]: i for i in store.ideas()}
    labels = cluster_labels(store)
    out = []
    for st in R.steps(store):
        if only is not None and st["step"] != only:
            continue
        rows = R.rollouts(store, st["step"])
        rewards = [r["reward"] for r in rows if r["reward"] is not None]
        trials = [store.trial(r["trial_id"]) for r in rows if r["trial_id"]]
        texts = [f"{ideas[r['idea_id']]['title']} {ideas[r['idea_id']]['description']}" for r in rows if r["idea_id"]]
        titles = [_norm(ideas[r["idea_id"]]["title"]) for r in rows if r["idea_id"]]
        clusters = Counter(labels[r["idea_id"]] for r in rows if r["idea_id"] in labels)
        every = Counter(labels.get(r["idea_id"], NO_IDEA) for r in rows)  # what the report's cluster bars stack
        n = len(rows) or 1
        out.append({
            "step": st["step"], "status": st["status"], "rollouts": len(rows),
            "mean_reward": fmean(rewards) if rewards else None,
            "max_reward": max(rewards) if rewards else None,
            "mean_shaped": fmean(r["shaped"] for r in rows if r["shaped"] is not None) if rewards else None,
            "idea_rate": sum(r["idea_id"] is not None for r in rows) / n,
            "implement_rate": sum(r["trial_id"] is not None for r in rows) / n,
            "execution_rate": sum(t["outcome"] == "evaluated" for t in trials) / n,
            "mean_tokens": fmean(r["n_tokens"] for r in rows) if rows else None,
            "mean_thinking_tokens": fmean(r["thinking_tokens"] for r in rows) if rows else None,
            "distinct_ideas": len(set(titles)),
            "mean_similarity": mean_pairwise_similarity(texts),
            "top_cluster": clusters.most_common(1)[0][0] if clusters else None,
            "top_cluster_share": clusters.most_common(1)[0][1] / n if clusters else 0.0,
            "loss": st["stats"].get("loss"),
            "clusters": dict(every.most_common()),
        })
    return out


def clusters(store: Store) -> dict[str, list[int]]:
    """Cluster label -> number of rollouts in it at each step (largest clusters first)."""
    labels = cluster_labels(store)
    steps = [s["step"] for s in R.steps(store)]
    counts: dict[str, list[int]] = {}
    for r in R.rollouts(store):
        label = labels.get(r["idea_id"], NO_IDEA)
        counts.setdefault(label, [0] * len(steps))[steps.index(r["step"])] += 1
    return dict(sorted(counts.items(), key=lambda kv: -sum(kv[1])))


def cluster_labels(store: Store) -> dict[int, str]:
    """idea id -> cluster label, for every idea an RL rollout produced."""
    diffs = {i["idea_id"]: i["diff"] for i in store.implementations() if i["status"] == "ok"}
    out: dict[int, str] = {}
    leaders: list[tuple[frozenset[str], str]] = []
    for idea in store.ideas():
        if idea["kind"] != "rl":
            continue
        if idea["id"] in diffs and (label := _diff_label(diffs[idea["id"]])):
            out[idea["id"]] = label
            continue
        t = tokens(idea["title"])
        hit = next((lab for lt, lab in leaders if jaccard(t, lt) >= TITLE_CLUSTER_JACCARD), None)
        if hit is None:
            hit = f"title: {idea['title'][:60]}"
            leaders.append((t, hit))
        out[idea["id"]] = hit
    return out


def _diff_label(diff: str) -> str:
    names = []
    for line in diff.splitlines():
        if line.startswith("-") and not line.startswith("---"):
            left = re.split(r"=|\(", line[1:], maxsplit=1)[0].strip()
            if left and left not in names:
                names.append(left[:40])
    return " + ".join(sorted(names))


def _norm(title: str) -> str:
    return " ".join(sorted(tokens(title)))


def summary_text(store: Store) -> str:
    """A plain-text table of step_metrics, then the largest clusters over steps."""
    rows = step_metrics(store)
    if not rows:
        return "no RL steps recorded"
    f = lambda v, p=".4g": "-" if v is None else format(v, p)  # noqa: E731
    out = [f"{'step':>4} {'stage':>10} {'mean':>9} {'max':>9} {'exec':>5} {'tokens':>7} {'think':>6} "
           f"{'distinct':>8} {'sim':>5} {'top':>5}  top cluster"]
    for r in rows:
        out.append(f"{r['step']:>4} {r['status']:>10} {f(r['mean_reward']):>9} {f(r['max_reward']):>9} "
                   f"{r['execution_rate']:>5.2f} {f(r['mean_tokens'], '.1f'):>7} {f(r['mean_thinking_tokens'], '.1f'):>6} "
                   f"{r['distinct_ideas']:>8} {f(r['mean_similarity'], '.2f'):>5} {r['top_cluster_share']:>5.2f}  "
                   f"{r['top_cluster'] or '-'}")
    out += ["", "clusters (rollouts per step):"]
    for label, counts in list(clusters(store).items())[:8]:
        out.append(f"  {' '.join(f'{c:>3}' for c in counts)}  {label}")
    return "\n".join(out)
