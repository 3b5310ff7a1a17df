"""Plots as inline SVG strings, drawn in Python so the report needs no JavaScript library.

Every function returns one `<svg>` element with the given id and class `plot`; all
text that reaches the markup goes through `esc`. Coordinates are in SVG user units
(1 unit = 1 CSS px at the natural size; CSS may scale the plot down).
"""

from __future__ import annotations

import math
from html import escape
from typing import Iterable, Sequence

PALETTE = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#be185d", "#4b5563")
OUTCOME_COLORS = {
    "evaluated": "#16a34a", "implement_failed": "#9333ea", "failed": "#dc2626",
    "timeout": "#ea580c", "oom": "#b45309", "diverged": "#ca8a04", "no_result": "#64748b",
    "invalid": "#be123c", "pending": "#cbd5e1",
}
MARGIN = (14, 16, 38, 62)  # top, right, bottom, left: room for tick labels and axis titles


def esc(x: object) -> str:
    return escape(str(x), quote=True)


def fmt(v: float | None, digits: int = 4) -> str:
    """`digits` significant digits; scientific only for very large or very small magnitudes."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, f".{digits}g")


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, v = [], start
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


class Frame:
    """Maps data to pixels inside a plot area and draws the axes."""

    def __init__(self, width: int, height: int, x: tuple[float, float], y: tuple[float, float],
                 pad_y: float = 0.06):
        self.w, self.h = width, height
        self.top, self.right, self.bottom, self.left = MARGIN
        ylo, yhi = y
        if yhi <= ylo:
            span = abs(ylo) * 0.05 or 0.5
            ylo, yhi = ylo - span, yhi + span
        pad = (yhi - ylo) * pad_y
        self.x0, self.x1 = x if x[1] > x[0] else (x[0] - 0.5, x[0] + 0.5)
        self.y0, self.y1 = ylo - pad, yhi + pad

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * (self.w - self.left - self.right)

    def py(self, y: float) -> float:
        return self.h - self.bottom - (y - self.y0) / (self.y1 - self.y0) * (self.h - self.top - self.bottom)

    def axes(self, xlabel: str, ylabel: str, xticks: Iterable[float] | None = None,
             xtick_fmt=lambda v: fmt(v, 3)) -> str:
        parts = []
        for t in nice_ticks(self.y0, self.y1):
            y = self.py(t)
            parts.append(f'<line class="grid" x1="{self.left}" x2="{self.w - self.right}" y1="{y:.1f}" y2="{y:.1f}"/>'
                         f'<text class="tick" x="{self.left - 6}" y="{y + 4:.1f}" text-anchor="end">{esc(fmt(t, 4))}</text>')
        for t in (xticks if xticks is not None else nice_ticks(self.x0, self.x1)):
            x = self.px(t)
            parts.append(f'<text class="tick" x="{x:.1f}" y="{self.h - self.bottom + 15}" text-anchor="middle">'
                         f'{esc(xtick_fmt(t))}</text>')
        base = self.h - self.bottom
        parts.append(f'<line class="axis" x1="{self.left}" x2="{self.w - self.right}" y1="{base}" y2="{base}"/>'
                     f'<line class="axis" x1="{self.left}" x2="{self.left}" y1="{self.top}" y2="{base}"/>'
                     f'<text class="label" x="{(self.left + self.w - self.right) / 2:.1f}" y="{self.h - 4}" '
                     f'text-anchor="middle">{esc(xlabel)}</text>'
                     f'<text class="label" transform="translate(13,{(self.top + base) / 2:.1f}) rotate(-90)" '
                     f'text-anchor="middle">{esc(ylabel)}</text>')
        return "".join(parts)

    def band(self, lo: float, hi: float, cls: str = "band") -> str:
        ya, yb = self.py(hi), self.py(lo)
        return (f'<rect class="{cls}" x="{self.left}" y="{ya:.1f}" width="{self.w - self.left - self.right}" '
                f'height="{max(0.5, yb - ya):.1f}"/>')

    def hline(self, y: float, cls: str = "baseline") -> str:
        return f'<line class="{cls}" x1="{self.left}" x2="{self.w - self.right}" y1="{self.py(y):.1f}" y2="{self.py(y):.1f}"/>'


def _svg(plot_id: str, width: int, height: int, body: str, title: str) -> str:
    return (f'<svg id="{esc(plot_id)}" class="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="{esc(title)}"><title>{esc(title)}</title>{body}</svg>')


def _empty(plot_id: str, width: int, height: int, title: str, message: str) -> str:
    return _svg(plot_id, width, height, f'<text class="empty" x="{width / 2}" y="{height / 2}" '
                f'text-anchor="middle">{esc(message)}</text>', title)


def _baseline_layer(f: Frame, baseline: dict | None) -> str:
    if not baseline:
        return ""
    m, s = baseline["mean"], baseline["std"]
    return f.band(m - 2 * s, m + 2 * s) + f.hline(m)


def _y_range(values: Sequence[float], baseline: dict | None) -> tuple[float, float]:
    vs = [v for v in values if v is not None and math.isfinite(v)]
    if baseline:
        vs += [baseline["mean"] - 2 * baseline["std"], baseline["mean"] + 2 * baseline["std"]]
    return (min(vs), max(vs)) if vs else (0.0, 1.0)


def best_so_far(plot_id: str, series: list[dict], baseline: dict | None, metric: str,
                width: int = 560, height: int = 280) -> str:
    """Step lines of best-so-far per epoch, one per series, over the baseline's ±2·std band."""
    title = f"Best {metric} so far per epoch"
    pts = [(e, v) for s in series for e, v in s["points"] if v is not None]
    if not pts and not baseline:
        return _empty(plot_id, width, height, title, "no evaluated ideas yet")
    epochs = [e for s in series for e, _ in s["points"]] or [0]
    f = Frame(width, height, (min(epochs) - 0.3, max(epochs) + 0.3), _y_range([v for _, v in pts], baseline))
    body = [_baseline_layer(f, baseline), f.axes("epoch", metric, xticks=range(min(epochs), max(epochs) + 1),
                                                 xtick_fmt=lambda v: str(int(v)))]
    for k, s in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        xy = [(f.px(e), f.py(v)) for e, v in s["points"] if v is not None]
        if not xy:
            continue
        d = f"M{xy[0][0]:.1f},{xy[0][1]:.1f}"
        for (x0, y0), (x1, y1) in zip(xy, xy[1:]):
            d += f" L{x1:.1f},{y0:.1f} L{x1:.1f},{y1:.1f}"
        body.append(f'<path class="series" data-label="{esc(s["label"])}" d="{d}" stroke="{color}"/>')
        for (x, y), (e, v) in zip(xy, [(e, v) for e, v in s["points"] if v is not None]):
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}">'
                        f'<title>{esc(s["label"])} · epoch {e}: {esc(fmt(v, 5))}</title></circle>')
    # The legend sits in a right-hand corner; the bottom one when a curve ends in the upper half (a
    # metric to maximise climbs into the top right corner, where it would hide under the legend).
    ends = [f.py(v) for s in series for v in [next((v for _, v in reversed(s["points"]) if v is not None), None)]
            if v is not None]
    low = any(y < (f.top + f.h - f.bottom) / 2 for y in ends)
    body.append(_legend([(s["label"], PALETTE[k % len(PALETTE)]) for k, s in enumerate(series)]
                        + ([("baseline mean ± 2·std", "#94a3b8")] if baseline else []), f, bottom=low))
    return _svg(plot_id, width, height, "".join(body), title)


def _legend(items: list[tuple[str, str]], f: Frame, bottom: bool = False) -> str:
    top = f.h - f.bottom - 15 * len(items) - 10 if bottom else f.top
    out, y = [], top + 4
    x = f.w - f.right - 8
    for label, color in items:
        out.append(f'<rect x="{x - 10}" y="{y}" width="10" height="10" fill="{color}" rx="2"/>'
                   f'<text class="legend" x="{x - 14}" y="{y + 9}" text-anchor="end">{esc(label)}</text>')
        y += 15
    if not items:
        return ""
    # A white card behind the entries: the legend sits over the plot area (usually over the band).
    w = 24 + 6.2 * max(len(label) for label, _ in items)
    card = (f'<rect x="{x - w:.1f}" y="{top}" width="{w + 4:.1f}" height="{15 * len(items) + 6}" '
            'fill="#fff" fill-opacity=".85" rx="4"/>')
    return f'<g class="legend-box">{card}{"".join(out)}</g>'


def distribution(plot_id: str, epochs: list[dict], baseline: dict | None, metric: str,
                 width: int = 560, height: int = 280) -> str:
    """Per epoch: every evaluated idea as a dot (jittered), with a box of the quartiles."""
    title = f"{metric} of every evaluated idea, per epoch"
    values = [v["value"] for e in epochs for v in e["values"]]
    if not values:
        return _empty(plot_id, width, height, title, "no evaluated ideas yet")
    ids = [e["epoch"] for e in epochs]
    f = Frame(width, height, (min(ids) - 0.5, max(ids) + 0.5), _y_range(values, baseline))
    slot = f.px(1) - f.px(0)  # pixels per epoch
    body = [_baseline_layer(f, baseline), f.axes("epoch", metric, xticks=ids, xtick_fmt=lambda v: str(int(v)))]
    for e in epochs:
        vs = sorted(v["value"] for v in e["values"])
        cx = f.px(e["epoch"])
        if len(vs) >= 3:
            q1, med, q3 = _quantile(vs, 0.25), _quantile(vs, 0.5), _quantile(vs, 0.75)
            bw = min(36.0, slot * 0.5)
            body.append(f'<rect class="box" x="{cx - bw / 2:.1f}" y="{f.py(q3):.1f}" width="{bw:.1f}" '
                        f'height="{max(1.0, f.py(q1) - f.py(q3)):.1f}"/>'
                        f'<line class="median" x1="{cx - bw / 2:.1f}" x2="{cx + bw / 2:.1f}" '
                        f'y1="{f.py(med):.1f}" y2="{f.py(med):.1f}"/>')
        for k, v in enumerate(e["values"]):
            jitter = (_hash01(v["idea_id"]) - 0.5) * min(30.0, slot * 0.45)
            body.append(f'<a href="#idea-{int(v["idea_id"])}"><circle class="dot" cx="{cx + jitter:.1f}" '
                        f'cy="{f.py(v["value"]):.1f}" r="3.2"><title>idea {int(v["idea_id"])}: '
                        f'{esc(fmt(v["value"], 5))}</title></circle></a>')
    return _svg(plot_id, width, height, "".join(body), title)


def _quantile(sorted_vs: list[float], q: float) -> float:
    pos = (len(sorted_vs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_vs[lo] + (sorted_vs[hi] - sorted_vs[lo]) * (pos - lo)


def _hash01(n: int) -> float:
    """A deterministic jitter in [0, 1): the same idea sits in the same place on every render."""
    return ((int(n) * 2654435761) % 2**32) / 2**32


def rate_bars(plot_id: str, epochs: list[dict], width: int = 560, height: int = 240) -> str:
    """Execution rate (evaluated ideas / ideas) per epoch, in percent."""
    title = "Execution rate per epoch"
    if not epochs:
        return _empty(plot_id, width, height, title, "no ideas yet")
    ids = [e["epoch"] for e in epochs]
    f = Frame(width, height, (min(ids) - 0.5, max(ids) + 0.5), (0, 100), pad_y=0.0)
    bw = min(48.0, (f.px(1) - f.px(0)) * 0.6)
    body = [f.axes("epoch", "ideas evaluated (%)", xticks=ids, xtick_fmt=lambda v: str(int(v)))]
    for e in epochs:
        r = 100 * (e["exec_rate"] or 0.0)
        x, y = f.px(e["epoch"]) - bw / 2, f.py(r)
        body.append(f'<rect class="rate" x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" height="{f.py(0) - y:.1f}">'
                    f'<title>epoch {e["epoch"]}: {e["evaluated"]}/{e["ideas"]} evaluated</title></rect>'
                    f'<text class="barlabel" x="{x + bw / 2:.1f}" y="{max(f.top + 10, y - 4):.1f}" '
                    f'text-anchor="middle">{r:.0f}%</text>')
    return _svg(plot_id, width, height, "".join(body), title)


def stacked_outcomes(plot_id: str, epochs: list[dict], order: Sequence[str], width: int = 560,
                     height: int = 240, colors: dict[str, str] | None = None, key: str = "outcomes",
                     title: str = "Where ideas ended, per epoch") -> str:
    """How each epoch's ideas ended, stacked: evaluated at the bottom, failure kinds above (or any
    per-epoch counts: `key` names the {kind: n} of each epoch, `colors` their colours)."""
    colors = colors or OUTCOME_COLORS
    if not epochs:
        return _empty(plot_id, width, height, title, "no ideas yet")
    ids = [e["epoch"] for e in epochs]
    top = max(e["ideas"] for e in epochs) or 1
    f = Frame(width, height, (min(ids) - 0.5, max(ids) + 0.5), (0, top), pad_y=0.0)
    f.right = 130  # room for the legend beside the bars
    bw = min(48.0, (f.px(1) - f.px(0)) * 0.6)
    body = [f.axes("epoch", "ideas", xticks=ids, xtick_fmt=lambda v: str(int(v)))]
    seen = []
    for e in epochs:
        acc = 0
        for kind in order:
            n = e[key].get(kind, 0)
            if not n:
                continue
            if kind not in seen:
                seen.append(kind)
            y0, y1 = f.py(acc), f.py(acc + n)
            body.append(f'<rect class="stack" data-kind="{esc(kind)}" x="{f.px(e["epoch"]) - bw / 2:.1f}" '
                        f'y="{y1:.1f}" width="{bw:.1f}" height="{y0 - y1:.1f}" fill="{colors.get(kind, "#888")}">'
                        f'<title>epoch {e["epoch"]}: {n} {esc(kind)}</title></rect>')
            acc += n
    y = f.top + 4
    for kind in seen:
        body.append(f'<rect x="{width - 124}" y="{y}" width="10" height="10" rx="2" '
                    f'fill="{colors.get(kind, "#888")}"/>'
                    f'<text class="legend" x="{width - 110}" y="{y + 9}">{esc(kind)}</text>')
        y += 15
    return _svg(plot_id, width, height, "".join(body), title)


def curve(plot_id: str, trials: list[dict], width: int = 320, height: int = 160) -> str | None:
    """Learning curves of an idea's trials from their METRIC lines; None when there are none."""
    key = _curve_key([p for t in trials for p in t.get("curve") or []])
    if key is None:
        return None
    lines = []
    for t in trials:
        pts = [(float(p.get("step", k)), float(p[key])) for k, p in enumerate(t.get("curve") or [])
               if _num(p.get(key)) and _num(p.get("step", k))]
        if pts:
            lines.append((t, pts))
    xs = [x for _, pts in lines for x, _ in pts]
    ys = [y for _, pts in lines for _, y in pts]
    f = Frame(width, height, (min(xs), max(xs)), (min(ys), max(ys)))
    f.left, f.bottom = 52, 32
    body = [f.axes("step", key)]
    for k, (t, pts) in enumerate(lines):
        d = " ".join(f"{'M' if j == 0 else 'L'}{f.px(x):.1f},{f.py(y):.1f}" for j, (x, y) in enumerate(pts))
        body.append(f'<path class="series thin" d="{d}" stroke="{PALETTE[k % len(PALETTE)]}">'
                    f'<title>trial {t["id"]} ({esc(t["role"])}, seed {t["seed"]})</title></path>')
    return _svg(plot_id, width, height, "".join(body), f"learning curve: {key}").replace(
        'class="plot"', 'class="plot learning-curve"', 1)


def _curve_key(points: list[dict]) -> str | None:
    """The quantity to plot: a loss if there is one, else the first numeric non-step key."""
    keys: list[str] = []
    for p in points:
        if isinstance(p, dict):
            keys += [k for k, v in p.items() if k not in keys and k != "step" and _num(v)]
    for k in keys:
        if "loss" in k:
            return k
    return keys[0] if keys else None


def _num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# -- RL: per-step curves and cluster shares ------------------------------------------------------
def step_lines(plot_id: str, steps: list[int], series: list[dict], ylabel: str,
               y_range: tuple[float, float] | None = None, width: int = 560, height: int = 240,
               xlabel: str = "step", title: str | None = None, empty: str = "no finished step yet") -> str:
    """One line with dots per series ({"label", "points": [[step, value | None]]}) over RL steps
    (or any integer x: `xlabel="epoch"`)."""
    title = title or f"{ylabel} per RL step"
    values = [v for s in series for _, v in s["points"] if v is not None]
    if not steps or not values:
        return _empty(plot_id, width, height, title, empty)
    f = Frame(width, height, (min(steps) - 0.3, max(steps) + 0.3), y_range or _y_range(values, None),
              pad_y=0.02 if y_range else 0.06)
    f.right = 150  # the legend beside the plot: lines near the top would run under it
    body = [f.axes(xlabel, ylabel, xticks=_int_ticks(steps), xtick_fmt=lambda v: str(int(v)))]
    for k, s in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        pts = [(x, v) for x, v in s["points"] if v is not None]
        if not pts:
            continue
        dash = ' stroke-dasharray="6 3"' if k % 2 else ""  # coinciding series stay visible
        d = " ".join(f"{'M' if j == 0 else 'L'}{f.px(x):.1f},{f.py(v):.1f}" for j, (x, v) in enumerate(pts))
        body.append(f'<path class="series" data-label="{esc(s["label"])}" d="{d}" stroke="{color}"{dash}/>')
        body += [f'<circle cx="{f.px(x):.1f}" cy="{f.py(v):.1f}" r="3" fill="{color}">'
                 f'<title>{esc(s["label"])} · {esc(xlabel)} {x}: {esc(fmt(v, 4))}</title></circle>' for x, v in pts]
    for k, s in enumerate(series):
        y = f.top + 4 + 15 * k
        body.append(f'<rect x="{width - 142}" y="{y}" width="10" height="10" rx="2" fill="{PALETTE[k % len(PALETTE)]}"/>'
                    f'<text class="legend" x="{width - 128}" y="{y + 9}">{esc(s["label"])}</text>')
    return _svg(plot_id, width, height, "".join(body), title)


def _int_ticks(steps: list[int], most: int = 12) -> list[int]:
    """At most `most` integer ticks over the steps (a 70-step run labels every 10th)."""
    stride = max(1, -(-len(steps) // most))
    return steps[::stride]


CLUSTER_COLORS = PALETTE + ("#65a30d", "#94a3b8")  # the last: "other" clusters


def stacked_shares(plot_id: str, steps: list[int], clusters: dict[str, list[int]], width: int = 1100,
                   height: int = 300) -> str:
    """A bar per step, stacked by cluster share of the step's rollouts (the reference's mode-collapse
    figure); `clusters` maps label -> rollouts per step, largest first."""
    title = "Idea clusters: share of each step's rollouts"
    if not steps or not clusters:
        return _empty(plot_id, width, height, title, "no finished step yet")
    f = Frame(width, height, (min(steps) - 0.5, max(steps) + 0.5), (0, 100), pad_y=0.0)
    f.right = 320  # the legend (cluster labels can be long) beside the bars
    bw = min(40.0, (f.px(1) - f.px(0)) * 0.75)
    body = [f.axes("step", "rollouts (%)", xticks=_int_ticks(steps), xtick_fmt=lambda v: str(int(v)))]
    labels = list(clusters)
    named = [lab for lab in labels if not lab.startswith("(")]  # "(no idea)", "(other clusters)": greys
    colors = {lab: CLUSTER_COLORS[k % (len(CLUSTER_COLORS) - 1)] for k, lab in enumerate(named)}
    colors |= {lab: "#cbd5e1" if lab == "(no idea)" else CLUSTER_COLORS[-1] for lab in labels if lab not in colors}
    for j, step in enumerate(steps):
        total = sum(clusters[lab][j] for lab in labels) or 1
        acc = 0.0
        for lab in labels:
            n = clusters[lab][j]
            if not n:
                continue
            share = 100.0 * n / total
            y0, y1 = f.py(acc), f.py(acc + share)
            body.append(f'<rect class="stack" data-cluster="{esc(lab)}" x="{f.px(step) - bw / 2:.1f}" y="{y1:.1f}" '
                        f'width="{bw:.1f}" height="{y0 - y1:.1f}" fill="{colors[lab]}"><title>step {step}: {n} of '
                        f'{total} rollouts ({share:.0f}%) · {esc(lab)}</title></rect>')
            acc += share
    y = f.top + 4
    for lab in labels:
        short = lab if len(lab) <= 48 else lab[:47] + "…"
        body.append(f'<rect x="{width - f.right + 12}" y="{y}" width="10" height="10" rx="2" fill="{colors[lab]}"/>'
                    f'<text class="legend" x="{width - f.right + 26}" y="{y + 9}">{esc(short)}</text>')
        y += 15
    return _svg(plot_id, width, height, "".join(body), title)
