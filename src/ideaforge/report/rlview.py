"""The RL part of the report and of `ideaforge status`: per-step curves and idea clusters.

Everything comes from the store alone (the report may not import `ideaforge.rl`): when a
step is done, the RL loop keeps its figures in rl_steps.stats["analysis"] (see
`rl.analysis.step_metrics`: rewards, rates, lengths, diversity, and `clusters`, label ->
rollouts of the step). A step still running shows its stage and rollout counts only.

    rl_data(store) -> dict | None      None for a search campaign
    rl_section(rl) -> str              the HTML section (curves, cluster shares, table)
    rl_status_lines(store) -> list     the per-step table for the terminal
"""

from __future__ import annotations

from typing import Any

from ideaforge.report import svg
from ideaforge.report.svg import esc, fmt
from ideaforge.store import Store

TOP_CLUSTERS = 8          # clusters drawn by name in the stacked bars; the rest are "other"
OTHER = "(other clusters)"


def rl_data(store: Store) -> dict[str, Any] | None:
    """The run's steps with their stored figures, and the cluster counts over steps."""
    rows = store.rl_step_rows()
    if not rows:
        return None
    config = (store.get_meta("config", {}) or {}).get("rl", {})
    steps = []
    for r in rows:
        a = r["stats"].get("analysis") or {}
        steps.append({
            "step": r["step"], "status": r["status"], "done": r["status"] == "done" and bool(a),
            "rollouts": a.get("rollouts", sum(r["rollouts"].values())), "rollout_status": r["rollouts"],
            "loss": r["stats"].get("loss"), "frozen": bool(r["stats"].get("frozen")),
            **{k: a.get(k) for k in ("mean_reward", "max_reward", "mean_shaped", "idea_rate", "implement_rate",
                                     "execution_rate", "mean_tokens", "mean_thinking_tokens", "distinct_ideas",
                                     "mean_similarity", "top_cluster", "top_cluster_share")},
            "clusters": a.get("clusters"),
        })
    return {"steps": steps, "clusters": cluster_table(steps), "config": config}


def cluster_table(steps: list[dict]) -> dict[str, list[int]]:
    """Label -> rollouts per done step (in `steps` order, done steps only), the TOP_CLUSTERS largest
    by total; the rest summed into OTHER."""
    done = [s for s in steps if s["done"] and s["clusters"] is not None]
    totals: dict[str, int] = {}
    for s in done:
        for label, n in s["clusters"].items():
            totals[label] = totals.get(label, 0) + n
    ranked = sorted(totals, key=lambda k: (-totals[k], k))
    keep, rest = ranked[:TOP_CLUSTERS], ranked[TOP_CLUSTERS:]
    out = {label: [s["clusters"].get(label, 0) for s in done] for label in keep}
    if rest:
        out[OTHER] = [sum(s["clusters"].get(label, 0) for label in rest) for s in done]
    return out


# -- HTML ---------------------------------------------------------------------------------------
def rl_section(rl: dict[str, Any] | None) -> str:
    if not rl:
        return ""
    done = [s for s in rl["steps"] if s["done"]]
    xs = [s["step"] for s in done]

    def series(*keys: tuple[str, str], scale: float = 1.0) -> list[dict]:
        return [{"label": label, "points": [[s["step"], None if s[k] is None else s[k] * scale] for s in done]}
                for k, label in keys]

    distinct = [{"label": "distinct / rollouts",
                 "points": [[s["step"], s["distinct_ideas"] / s["rollouts"] if s["rollouts"] else None] for s in done]}]
    figs = [
        ("Reward", svg.step_lines("plot-rl-reward", xs, series(("mean_reward", "mean"), ("max_reward", "max")), "reward"),
         "Mean and max reward of each step's group (from the trials alone, before shaping)."),
        ("Execution rate", svg.step_lines("plot-rl-exec", xs, series(
            ("idea_rate", "idea parsed"), ("implement_rate", "implemented"), ("execution_rate", "evaluated"),
            scale=100.0), "rollouts (%)", y_range=(0, 100)),
         "Share of the group whose rollout held an idea, was implemented, and whose trial was scored."),
        ("Length", svg.step_lines("plot-rl-length", xs, series(("mean_tokens", "rollout"),
                                                             ("mean_thinking_tokens", "thinking")), "tokens (mean)"),
         "Mean tokens per rollout, and of them in the thinking trace."),
        ("Diversity", svg.step_lines("plot-rl-diversity", xs, distinct + series(
            ("mean_similarity", "mean similarity"), ("top_cluster_share", "top cluster share")),
            "fraction", y_range=(0, 1)),
         "Distinct ideas (normalised titles), mean token-Jaccard similarity of the ideas, largest cluster's share."),
    ]
    body = "".join(f'<figure><figcaption><b>{esc(t)}</b> <span>{esc(c)}</span></figcaption>{plot}</figure>'
                   for t, plot, c in figs)
    counted = [s["step"] for s in done if s["clusters"] is not None]  # a run from before the counts were kept: none
    bars = svg.stacked_shares("plot-rl-clusters", counted, rl["clusters"])
    cluster_fig = ('<figure class="wide" style="margin:14px 0"><figcaption><b>Idea clusters over steps</b> <span>Share of each step\'s '
                   'rollouts per cluster (what an idea changes, else its title); mode collapse shows as one colour '
                   f'filling the bars.</span></figcaption>{bars}</figure>')
    return (f'<section id="rl"><h2>RL of the ideator {_badge(rl)}</h2><div class="plots">{body}</div>'
            f'{cluster_fig}{_table(rl["steps"])}</section>')


def _badge(rl: dict) -> str:
    cfg = rl["config"]
    bits = [f'{len([s for s in rl["steps"] if s["done"]])} / {cfg.get("steps", len(rl["steps"]))} steps done']
    if cfg.get("group"):
        bits.append(f'group {cfg["group"]}')
    if cfg.get("advantage"):
        bits.append(f'advantage {cfg["advantage"]}')
    if cfg.get("frozen"):
        bits.append("frozen (control arm)")
    return f'<span class="sub">{esc(" · ".join(bits))}</span>'


def _table(steps: list[dict]) -> str:
    def pct(v):
        return "–" if v is None else f"{100 * v:.0f}%"
    rows = []
    for s in steps:
        rows.append(
            f'<tr data-step="{s["step"]}"><td class="num">{s["step"]}</td><td>{esc(s["status"])}</td>'
            f'<td class="num">{s["rollouts"]}</td><td class="num">{fmt(s["mean_reward"], 4)}</td>'
            f'<td class="num">{fmt(s["max_reward"], 4)}</td><td class="num">{pct(s["execution_rate"])}</td>'
            f'<td class="num">{fmt(s["mean_tokens"], 4)}</td><td class="num">{fmt(s["mean_thinking_tokens"], 4)}</td>'
            f'<td class="num">{"–" if s["distinct_ideas"] is None else s["distinct_ideas"]}</td>'
            f'<td class="num">{fmt(s["mean_similarity"], 2)}</td><td class="num">{pct(s["top_cluster_share"])}</td>'
            f'<td>{esc(s["top_cluster"] or "–")}</td><td class="num">{fmt(s["loss"], 4)}</td></tr>')
    return ('<table class="small" id="rl-steps"><thead><tr><th>step</th><th>stage</th><th>rollouts</th>'
            '<th>mean reward</th><th>max reward</th><th>executed</th><th>tokens</th><th>thinking</th>'
            '<th>distinct</th><th>similarity</th><th>top share</th><th>top cluster</th><th>loss</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


# -- terminal -------------------------------------------------------------------------------------
def rl_status_lines(store: Store, top: int = 5) -> list[str]:
    """The per-step table of an RL run and its largest clusters; [] for a search campaign."""
    rl = rl_data(store)
    if rl is None:
        return []

    def f(v, p=".4g"):
        return "-" if v is None else format(v, p)
    out = [f"RL steps ({len([s for s in rl['steps'] if s['done']])} done):",
           f"{'step':>4} {'stage':>10} {'n':>4} {'mean':>9} {'max':>9} {'exec':>5} {'tokens':>7} {'think':>6} "
           f"{'distinct':>8} {'sim':>5} {'top':>5}  top cluster"]
    for s in rl["steps"]:
        if not s["done"]:
            got = ", ".join(f"{k} {v}" for k, v in sorted(s["rollout_status"].items())) or "no rollouts yet"
            out.append(f"{s['step']:>4} {s['status']:>10} {s['rollouts']:>4}  ({got})")
            continue
        out.append(f"{s['step']:>4} {s['status']:>10} {s['rollouts']:>4} {f(s['mean_reward']):>9} "
                   f"{f(s['max_reward']):>9} {f(s['execution_rate'], '.2f'):>5} {f(s['mean_tokens'], '.1f'):>7} "
                   f"{f(s['mean_thinking_tokens'], '.1f'):>6} {f(s['distinct_ideas'], 'd'):>8} "
                   f"{f(s['mean_similarity'], '.2f'):>5} {f(s['top_cluster_share'], '.2f'):>5}  {s['top_cluster'] or '-'}")
    if rl["clusters"]:
        out += ["", "idea clusters (rollouts per done step):"]
        out += [f"  {' '.join(f'{c:>3}' for c in counts)}  {label}" for label, counts in list(rl["clusters"].items())[:top]]
    return out
