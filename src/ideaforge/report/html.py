"""The campaign report: one self-contained HTML file (inline CSS, JS and SVG; nothing remote).

`render(data)` turns the dict of `data.load_campaign(dir, details=False)` into the page;
`write_report` writes it next to the campaign. The page lists every idea; what an opened
idea shows beyond that (implementations, diffs, trials, curves, logs) is one small
script per idea, `<page>_ideas/<id>.js`, loaded when the idea opens: a 2,000-idea
campaign is a page of a few MB, not tens, and rendering it costs seconds, not minutes.
The live view (`server.py`) serves the same page with `live=True`, which adds a poller
that swaps in the fresh page when the campaign moves, and renders each idea's script on
request. Every string from the database passes through `esc` (model-written text is
untrusted), and a Content-Security-Policy forbids the page from loading anything from
elsewhere (scripts only inline or from beside the page).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any, Iterable

from ideaforge.report import svg
from ideaforge.report.analyses import EDIT_KINDS, HYPERPARAMETER, SIMILARITY_SAMPLE, STRUCTURAL, compare_models
from ideaforge.report.assets import CSS, JS
from ideaforge.report.data import OUTCOME_ORDER, compare_series, idea_details, load_campaign
from ideaforge.report.rlview import rl_section
from ideaforge.report.svg import esc, fmt
from ideaforge.store import Store

REPORT_NAME = "report.html"
CHUNK = 32  # ideas per detail script of a written report: a few files per hundred ideas, each ~0.5 MB
CURVE_POINTS = 160  # points per learning curve drawn in a 320 px plot (the stored curve keeps up to 2,000)
# Inline styles and scripts, plus the per-idea scripts beside the page ('self'); the live view
# may fetch its own origin (connect-src 'self').
CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'self' 'unsafe-inline'; img-src data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'")


def write_report(campaign_dir: str | Path, out_path: str | Path | None = None,
                 compare: Iterable[str | Path] = ()) -> Path:
    """Write the report of `campaign_dir` (default DIR/report.html, its ideas' details in
    DIR/report_ideas/); `compare` campaigns are overlaid on the best-so-far plot (e.g. a
    best-of-N control beside an evolve run), and their models' curves on the per-model plot."""
    campaign_dir = Path(campaign_dir)
    data = load_campaign(campaign_dir, details=False)
    compare = list(compare)
    goal = data["summary"]["goal"]
    for other in compare:
        data["series"] += compare_series(other, goal)
    if compare:
        data["analyses"]["models"] = compare_models(compare, goal, data["analyses"], campaign_dir)
        data["analyses"]["compared"] = [str(d) for d in compare]
    out = Path(out_path) if out_path else campaign_dir / REPORT_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    details = out.with_name(details_dir_name(out))
    tmp_details = details.with_name(details.name + ".tmp")
    shutil.rmtree(tmp_details, ignore_errors=True)
    tmp_details.mkdir()
    chunks: dict[int, list[int]] = {}
    for idea in data["ideas"]:
        chunks.setdefault(idea["id"] // CHUNK, []).append(idea["id"])
    store = Store.open_readonly(campaign_dir)
    try:  # one chunk at a time: memory stays flat however large the campaign
        for chunk, ids in chunks.items():
            text = "".join(detail_script(store, i) for i in ids)
            (tmp_details / f"{chunk}.js").write_text(text, encoding="utf-8")
    finally:
        store.close()
    shutil.rmtree(details, ignore_errors=True)
    tmp_details.replace(details)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(data, detail_src=lambda i: f"{details.name}/{i // CHUNK}.js"), encoding="utf-8")
    tmp.replace(out)  # a browser reloading the file never sees half a page
    return out


def details_dir_name(page: Path) -> str:
    """Where a page's per-idea scripts live: report.html -> report_ideas/."""
    return f"{page.stem}_ideas"


def detail_script(store: Store, idea_id: int) -> str:
    """The script that fills in one opened idea (JSON string literal: safe whatever the text)."""
    d = idea_details(store, idea_id)
    html = detail_html(d) if d else '<p class="empty">This idea is gone from the database.</p>'
    return f"ideaforgeDetail({int(idea_id)}, {json.dumps(html)});\n"


def render(data: dict[str, Any], live: bool = False, detail_src=None) -> str:
    """The page; `detail_src(idea_id)` is the URL of the script holding an idea's details."""
    s = data["summary"]
    title = f"ideaforge · {s['env']} · {Path(data['dir']).name}"
    return "".join([
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head>",
        f'<body data-live="{int(live)}" data-version="{esc(data["state"]["version"])}">',
        f'<div id="content">{content(data, live, detail_src)}</div>',
        f"<script>{JS}</script></body></html>",
    ])


def content(data: dict[str, Any], live: bool = False, detail_src=None) -> str:
    """Everything inside #content: the part the live view swaps on each change."""
    src = detail_src or (lambda i: f"report_ideas/{i // CHUNK}.js")
    return "".join([_header(data, live), _summary(data), rl_section(data.get("rl")), _plots(data), _analyses(data),
                    _leaderboard(data),
                    _ideas(data, src), _baseline_trials(data)])


# -- header and summary ---------------------------------------------------------------
def _header(data: dict, live: bool) -> str:
    s = data["summary"]
    when = dt.datetime.fromtimestamp(data["generated"]).strftime("%Y-%m-%d %H:%M:%S")
    status = "finished" if s["finished"] else (f"stopped: {s['stopped']}" if s["stopped"] else "in progress")
    livebadge = '<span id="live-status" class="badge live">live</span>' if live else ""
    desc = f'<p class="envdesc">{esc(s["env_description"])}</p>' if s["env_description"] else ""
    return (f'<header><h1>{esc(s["env"])} <span class="sub">{esc(Path(data["dir"]).name)}</span> {livebadge}</h1>'
            f'<p class="meta">{esc(data["dir"])} · {esc(status)} · rendered {esc(when)}</p>{desc}</header>')


def _summary(data: dict) -> str:
    s, b = data["summary"], data["baseline"]
    models = ", ".join(m["model"] for m in s["models"]) or s["model"] or "offline ideators (no model)"
    epochs = f'{s["epochs_done"]}' + (f' / {s["epochs_planned"]}' if s["epochs_planned"] else "")
    t = s["trials"]
    cards = [
        ("metric", f'{s["metric"]} ({"lower" if s["goal"] == "min" else "higher"} is better)'),
        ("mode", s["mode"] or s["command"] or "–"),
        ("model(s)", models),
        ("ideas per epoch", s["ideas_per_epoch"] if s["ideas_per_epoch"] is not None else "–"),
        ("epochs done", epochs),
        ("ideas", s["ideas"]),
        ("trials", f'{t.get("done", 0)} done · {t.get("running", 0)} running · {t.get("queued", 0)} queued'
                   + (f' · {s["requeues"]} re-queued (worker died)' if s.get("requeues") else "")),
        ("isolation", ", ".join(f"{n} {k}" for k, n in sorted(s.get("isolation", {}).items())) or "–"),
        ("baseline", f'{fmt(b["mean"], 5)} ± {fmt(b["std"], 3)} (n={b["n"]})' if b else "not measured yet"),
        ("model spend", f'${s["spend_usd"]:.2f}'),
        ("CPU-hours", f'{s["cpu_hours"]:.2f} ({s["cpus"]} CPU/trial)'),
        ("GPU-hours", f'{s["gpu_hours"]:.2f} ({s["gpus"]} GPU/trial)'),
        ("wall time", _duration(s["wall_s"])),
        ("training budget", f'{fmt(s["budget_s"], 4)} s/trial' if s["budget_s"] else "–"),
    ]
    if s.get("machine"):
        m = s["machine"]
        cards.append(("machine", f'{m.get("cpu") or "?"}; {", ".join(m.get("features", [])) or "no avx2/avx512"}; '
                                 f'GPUs: {", ".join(m.get("gpus", [])) or "none"}'))
    for k in s.get("catalogue_skipped", []):  # flagged: a hardware-dependent idea this machine could not test
        cards.append(("skipped: needs " + ", ".join(k["lacks"]), f'catalogue idea {k["id"]}: {k["title"]}'))
    body = "".join(f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div></div>'
                   for k, v in cards)
    table = ""
    if s["models"]:
        rows = "".join(f'<tr><td>{esc(m["model"])}</td><td class="num">{m["calls"]}</td>'
                       f'<td class="num">{m["input_tokens"] or 0:,}</td><td class="num">{m["output_tokens"] or 0:,}</td>'
                       f'<td class="num">${(m["cost_usd"] or 0):.2f}</td></tr>' for m in s["models"])
        table = ('<table class="small" id="models"><thead><tr><th>model</th><th>calls</th><th>input tokens</th>'
                 f'<th>output tokens</th><th>cost</th></tr></thead><tbody>{rows}</tbody></table>')
    warn = ""
    if s.get("isolation", {}).get("none"):
        warn = (f'<p class="warn"><b>WARNING: {s["isolation"]["none"]} trial(s) ran UNISOLATED</b> (isolation = none, '
                'no bubblewrap jail): their code could read this user\'s files and secrets and reach the network, '
                'so their scores are not protected against forgery.</p>')
    return f'<section id="summary"><h2>Summary</h2>{warn}<div class="cards">{body}</div>{table}</section>'


def _duration(seconds: float) -> str:
    seconds = int(round(seconds or 0))
    h, rem = divmod(seconds, 3600)
    m, sec = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else (f"{m} min {sec:02d} s" if m else f"{sec} s")


# -- plots ----------------------------------------------------------------------------
def _plots(data: dict) -> str:
    metric, base, epochs = data["summary"]["metric"], data["baseline"], data["epochs"]
    figs = [
        ("Best so far", svg.best_so_far("plot-best-so-far", data["series"], base, metric),
         "Best idea mean up to each epoch; grey band: baseline mean ± 2·std."),
        ("Distribution", svg.distribution("plot-distribution", epochs, base, metric),
         "Every evaluated idea (click a dot to open it); boxes: quartiles."),
        ("Execution rate", svg.rate_bars("plot-execution-rate", epochs),
         "Ideas whose code ran and was scored by the evaluator."),
        ("Failure kinds", svg.stacked_outcomes("plot-failure-kinds", epochs, OUTCOME_ORDER),
         "Where each idea ended."),
    ]
    body = "".join(f'<figure><figcaption><b>{esc(t)}</b> <span>{esc(c)}</span></figcaption>{plot}</figure>'
                   for t, plot, c in figs)
    return f'<section id="plots"><h2>Search</h2><div class="plots">{body}</div></section>'


# -- the reference's analyses -----------------------------------------------------------
EDIT_COLORS = {HYPERPARAMETER: "#0891b2", STRUCTURAL: "#7c3aed", "no change": "#94a3b8", "not implemented": "#e2e8f0"}


def _analyses(data: dict) -> str:
    a = data.get("analyses")
    if not a or not a["by_epoch"]:
        return ""
    metric, epochs = data["summary"]["metric"], a["by_epoch"]
    xs = [e["epoch"] for e in epochs]

    def rate(e: dict, kind: str | None) -> float | None:
        ok, n = (e["evaluated"], e["ideas"]) if kind is None else e["kind_rates"][kind]
        return ok / n if n else None

    rates = [{"label": label, "points": [[e["epoch"], rate(e, kind)] for e in epochs]}
             for label, kind in (("all ideas", None), (HYPERPARAMETER, HYPERPARAMETER), (STRUCTURAL, STRUCTURAL))]
    diversity = [
        {"label": "mean pairwise similarity", "points": [[e["epoch"], e["similarity"]] for e in epochs]},
        {"label": "distinct targets / ideas", "points": [[e["epoch"], e["targets"] / e["ideas"]] for e in epochs]},
    ]
    many = bool(a.get("compared"))  # several campaigns: each has its own baseline, so no band
    figs = [
        ("Kinds of idea", svg.stacked_outcomes("plot-edit-kinds", epochs, EDIT_KINDS, colors=EDIT_COLORS, key="kinds",
                                               title="Hyper-parameter-only vs structural ideas, per epoch"),
         "From each idea's applied edit: only numeric literals changed (hyperparameter) or anything else."),
        ("Execution rate by kind", svg.step_lines("plot-exec-by-kind", xs, rates, "ideas evaluated (share)", (0, 1),
                                                  xlabel="epoch", title="Execution rate per epoch, by kind of idea",
                                                  empty="no ideas yet"),
         "Share of each epoch's ideas (of that kind) whose code ran and was scored."),
        ("Diversity", svg.step_lines("plot-diversity", xs, diversity, "share / similarity", (0, 1), xlabel="epoch",
                                     title="Idea diversity per epoch", empty="no ideas yet"),
         "Token-Jaccard similarity of the epoch's idea texts (1 = all alike); distinct edit targets per idea."),
        ("Best so far per model", svg.best_so_far("plot-models", a["models"], data["baseline"] if not many else None,
                                                  metric),
         "Best idea mean up to each epoch, one curve per model" + (" and campaign." if many else "; grey band: "
                                                                   "this campaign's baseline mean ± 2·std.")),
    ]
    body = "".join(f'<figure><figcaption><b>{esc(t)}</b> <span>{esc(c)}</span></figcaption>{plot}</figure>'
                   for t, plot, c in figs)
    return (f'<section id="analyses"><h2>Analyses</h2><div class="plots">{body}</div>'
            f'{_kind_table(a["by_kind"], metric)}{_epoch_table(epochs)}</section>')


def _kind_table(by_kind: dict, metric: str) -> str:
    names = {"edit": "kind of edit", "prompt": "prompt", "model": "model"}
    rows = []
    for group, members in by_kind.items():
        for m in members:
            rows.append(f'<tr data-group="{esc(group)}" data-label="{esc(m["label"])}"><td>{esc(names[group])}</td>'
                        f'<td>{esc(m["label"])}</td><td class="num">{m["ideas"]}</td>'
                        f'<td class="num">{m["evaluated"]} ({100 * m["exec_rate"]:.0f}%)</td>'
                        f'<td class="num">{m["beats"]}</td><td class="num">{fmt(m["best"], 5)}</td></tr>')
    return ('<table class="small" id="exec-by-kind"><caption>Execution rate per kind of idea: ideas whose code '
            'ran and was scored; beats: ideas that beat their same-epoch baseline.</caption><thead><tr><th>by</th>'
            f'<th>kind</th><th>ideas</th><th>evaluated</th><th>beats</th><th>best {esc(metric)}</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _epoch_table(epochs: list[dict]) -> str:
    def cell(ok_n: list[int]) -> str:
        ok, n = ok_n
        return f"{ok}/{n}" if n else "–"
    rows = "".join(
        f'<tr><td class="num">{e["epoch"]}</td><td class="num">{e["ideas"]}</td>'
        f'<td class="num">{e["evaluated"]} ({100 * e["exec_rate"]:.0f}%)</td>'
        + "".join(f'<td class="num">{cell(e["kind_rates"][k])}</td>' for k in EDIT_KINDS)
        + f'<td class="num">{e["distinct"]}</td><td class="num">{e["targets"]}</td>'
          f'<td class="num">{fmt(e["similarity"], 3)}</td></tr>' for e in epochs)
    heads = "".join(f"<th>{esc(k)}<br>evaluated/ideas</th>" for k in EDIT_KINDS)
    return (f'<table class="small" id="analyses-per-epoch"><caption>Per epoch: execution rate overall and per kind of '
            f'idea; diversity as distinct ideas (title token sets), distinct edit targets (the names an edit '
            f'changes) and mean pairwise similarity of the idea texts (over at most {SIMILARITY_SAMPLE} ideas of an epoch, '
            'evenly spread).</caption><thead><tr><th>epoch</th>'
            f'<th>ideas</th><th>evaluated</th>{heads}<th>distinct ideas</th><th>distinct targets</th>'
            f'<th>similarity</th></tr></thead><tbody>{rows}</tbody></table>')


# -- leaderboard ------------------------------------------------------------------------
def _leaderboard(data: dict) -> str:
    rows = data["leaderboard"]
    if not rows:
        return '<section id="leaderboard-section"><h2>Leaderboard</h2><p class="empty">No implemented ideas yet.</p></section>'
    out = []
    for rank, r in enumerate(rows, 1):
        meanstd = (f'{fmt(r["mean"], 5)}' + (f' ± {fmt(r["std"], 3)}' if r["n"] > 1 else "")) if r["mean"] is not None else "–"
        mean_attr = repr(r["mean"]) if r["mean"] is not None else ""
        out.append(
            f'<tr class="lb-row{" beats" if r["beats"] else ""}" data-idea-id="{r["idea_id"]}" data-mean="{mean_attr}">'
            f'<td class="num">{rank}</td><td><a href="#idea-{r["idea_id"]}">#{r["idea_id"]}</a></td>'
            f'<td class="title">{esc(r["title"])}</td><td class="num">{r["epoch"]}</td><td>{esc(r["kind"])}</td>'
            f'<td class="num mean">{esc(meanstd)}</td><td class="num">{r["n"]}</td>'
            f'<td class="num">{fmt(r["z"], 3) if r["z"] is not None else "–"}</td>'
            f'<td class="num near">{_near(r.get("near"))}</td>'
            f'<td class="num p">{_p(r)}</td>'
            f'<td title="{esc(r.get("verdict", ""))}">{"✔" if r["beats"] else ""}</td><td>{_outcome_badge(r["outcome"])}</td></tr>')
    b = data["baseline"]
    cap = (f'Baseline {fmt(b["mean"], 5)} ± {fmt(b["std"], 3)} (n={b["n"]}, all epochs). Each idea is compared with the '
           f'baseline trials of its own epochs (±1; "same-epoch baseline"). With one seed it beats it when better by '
           f'more than 2 standard errors (z &gt; 2, uncorrected); with several (confirmation), when a one-sided Welch '
           f't-test is significant after Holm\'s correction over the {data.get("compared", 0)} ideas compared '
           f'(adjusted p &lt; {data.get("alpha", 0.05)}).') if b else "Baseline not measured yet."
    return ('<section id="leaderboard-section"><h2>Leaderboard</h2><table id="leaderboard">'
            f'<caption>{cap}</caption><thead><tr><th>#</th><th>idea</th><th>title</th><th>epoch</th><th>kind</th>'
            f'<th>{esc(data["summary"]["metric"])} mean ± std</th><th>n</th><th>z</th><th>same-epoch baseline</th>'
            f'<th>p (Holm)</th><th>beats</th><th>outcome</th>'
            f'</tr></thead><tbody>{"".join(out)}</tbody></table></section>') + _drift(data)


def _near(near: dict | None) -> str:
    if not near:
        return "–"
    return esc(f'{fmt(near["mean"], 5)}' + (f' ± {fmt(near["std"], 3)}' if near["n"] > 1 else "") + f' (n={near["n"]})')


def _p(r: dict) -> str:
    return "–" if r.get("p") is None else esc(f'{r["p"]:.3g} ({r["p_adj"]:.3g})')


def _drift(data: dict) -> str:
    """Baseline re-runs beside candidates, epoch by epoch: load drift shows as steps and CPU seconds."""
    rows = data.get("drift") or []
    if not rows:
        return ""
    num = lambda v, d=1: "–" if v is None else fmt(v, d)
    body = "".join(
        f'<tr class="drift-{esc(d["side"])}"><td class="num">{d["epoch"]}</td><td>{esc(d["side"])}</td>'
        f'<td class="num">{d["evaluated"]}/{d["trials"]}</td><td class="num">{num(d["mean"], 5)}</td>'
        f'<td class="num">{num(d["steps"], 4)}</td><td class="num">{num(d["tokens"], 4)}</td>'
        f'<td class="num">{num(d["cpu_s"], 3)}</td></tr>' for d in rows)
    return ('<section id="drift-section"><h2>Baseline re-runs and drift</h2><table id="drift" class="small">'
            '<caption>Per epoch (the last, after the search, is the confirmation): evaluated trials, mean metric, and '
            'the median steps, tokens and training CPU seconds per trial.</caption><thead><tr><th>epoch</th>'
            '<th>side</th><th>evaluated</th><th>mean</th><th>steps</th><th>tokens</th><th>CPU s</th></tr></thead>'
            f'<tbody>{body}</tbody></table></section>')


def _outcome_badge(outcome: str | None) -> str:
    o = outcome or "pending"
    return f'<span class="badge o-{esc(o)}">{esc(o)}</span>'


# -- ideas ---------------------------------------------------------------------------------
def _ideas(data: dict, src) -> str:
    ideas = data["ideas"]
    if not ideas:
        return '<section id="ideas"><h2>Ideas</h2><p class="empty">No ideas yet.</p></section>'
    titles = {i["id"]: i["title"] for i in ideas}
    body = "".join(_idea(i, titles, src(i["id"])) for i in ideas)
    return (f'<section id="ideas"><h2>Ideas <span class="sub">{len(ideas)}</span></h2>'
            '<p class="hint"><button type="button" id="expand-all">expand all</button> '
            f'<button type="button" id="collapse-all">collapse all</button></p>{body}</section>')


def _idea(i: dict, titles: dict[int, str], src: str) -> str:
    score = ""
    if i["mean"] is not None:
        score = f'<span class="score">{esc(fmt(i["mean"], 5))}' + (f' ± {esc(fmt(i["std"], 3))}' if i["n"] > 1 else "") + "</span>"
    win = ' <span class="badge win">beats baseline</span>' if i["beats"] else ""
    head = (f'<summary><span class="iid">#{i["id"]}</span> <span class="ititle">{esc(i["title"])}</span> '
            f'<span class="badge kind">{esc(i["kind"])}</span> <span class="badge">epoch {i["epoch"]}</span> '
            + (f'<span class="badge edit">{esc(i["edit_kind"])}</span> ' if i.get("edit_kind") else "")
            + f'{_outcome_badge(i["outcome"])} {score}{win}'
            '</summary>')
    parts = [_lineage(i, titles), f'<div class="desc">{esc(i["description"])}</div>']
    if i["code_changes"]:
        parts.append(f'<h4>Code changes (as proposed)</h4><div class="desc">{esc(i["code_changes"])}</div>')
    if i["origin"]:
        parts.append('<p class="origin">' + " · ".join(
            f"{esc(k)}: {esc(v if isinstance(v, str) else json.dumps(v))}" for k, v in i["origin"].items()) + "</p>")
    parts.append(f'<div class="detail" id="detail-{i["id"]}" data-src="{esc(src)}">'
                 f'<p class="hint">{len(i["implementations"])} implementation(s), {len(i["trials"])} trial(s): '
                 'loading diffs, trials and logs …</p></div>')
    return f'<details class="idea" id="idea-{i["id"]}">{head}<div class="body">{"".join(parts)}</div></details>'


def detail_html(d: dict) -> str:
    """An opened idea's implementations, trials, curve and logs (from `data.idea_details`)."""
    parts = [_implementation(impl) for impl in d["implementations"]]
    if d["trials"]:
        parts.append(_trials_table(d["trials"]))
        drawn = [dict(t, curve=_thin(t.get("curve") or [], CURVE_POINTS)) for t in d["trials"]]
        if (plot := svg.curve(f'curve-{d["id"]}', drawn)) is not None:
            parts.append(f'<div class="curve">{plot}</div>')
        parts.append(_logs(d["trials"]))
    return "".join(parts)


def _thin(points: list, n: int) -> list:
    """At most n evenly strided points of a curve, the last always among them."""
    if len(points) <= n:
        return points
    step = len(points) / (n - 1)
    return [points[int(k * step)] for k in range(n - 1)] + [points[-1]]


def _lineage(i: dict, titles: dict[int, str]) -> str:
    def links(ids: list[int]) -> str:
        return ", ".join(f'<a class="lineage" href="#idea-{int(p)}" title="{esc(titles.get(p, ""))}">#{int(p)}</a>'
                         for p in ids) or "none"
    return f'<p class="lineage-row">parents: {links(i["parents"])} · children: {links(i["children"])}</p>'


def _implementation(impl: dict) -> str:
    parts = [f'<h4>Implementation {impl["id"]} {_outcome_badge(impl["status"])}'
             f'{" · " + esc(", ".join(impl["files"])) if impl["files"] else ""}</h4>']
    if impl["error"]:
        parts.append(f'<pre class="error">{esc(impl["error"])}</pre>')
    if impl["attempts"]:
        rows = "".join(f'<tr><td class="num">{esc(a["sample"])}</td><td class="num">{esc(a["round"])}</td>'
                       f'<td>{esc(a["stage"])}</td><td class="num">{fmt(a["seconds"], 3) if a["seconds"] is not None else "–"}</td>'
                       f'<td><pre class="cell">{esc(a["error"] or "")}</pre></td></tr>' for a in impl["attempts"])
        parts.append(f'<details class="attempts" id="attempts-{impl["id"]}"><summary>{len(impl["attempts"])} attempt(s)</summary>'
                     '<table class="small"><thead><tr><th>sample</th><th>round</th><th>stage</th><th>s</th><th>error</th>'
                     f'</tr></thead><tbody>{rows}</tbody></table></details>')
    if impl["diff"]:
        parts.append(diff_html(impl["diff"]))
    return "".join(parts)


def diff_html(diff: str) -> str:
    """A unified diff with one span per line, classed by kind (escaped line by line)."""
    out = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---")):
            cls = "d-file"
        elif line.startswith("@@"):
            cls = "d-hunk"
        elif line.startswith("+"):
            cls = "d-add"
        elif line.startswith("-"):
            cls = "d-del"
        else:
            cls = "d-ctx"
        out.append(f'<span class="{cls}">{esc(line) or " "}</span>')
    return f'<pre class="diff">{"".join(out)}</pre>'


def _trials_table(trials: list[dict]) -> str:
    rows = "".join(
        f'<tr data-trial-id="{t["id"]}"><td class="num">{t["id"]}</td><td>{esc(t["role"])}</td><td class="num">{t["seed"]}</td>'
        f'<td>{_outcome_badge(t["outcome"] or t["status"])}'
        + (f' <span class="small">re-queued ×{t["requeues"]}</span>' if t.get("requeues") else "") + '</td>'
        f'<td class="num">{fmt(t["metric"], 5) if t["metric"] is not None else "–"}</td>'
        f'<td class="num">{fmt(t["train_s"], 3) if t["train_s"] is not None else "–"}</td>'
        f'<td class="num">{fmt(t["eval_s"], 3) if t["eval_s"] is not None else "–"}</td>'
        f'<td class="num">{fmt(t.get("cpu_s"), 3)}</td><td class="num">{fmt(t.get("steps"), 6)}</td>'
        f'<td class="num">{fmt(t.get("tokens"), 4)}</td>'
        f'<td class="reason">{esc(t["reason"] or "")}</td></tr>' for t in trials)
    return ('<table class="small trials"><thead><tr><th>trial</th><th>role</th><th>seed</th><th>outcome</th>'
            f'<th>metric</th><th>train s</th><th>eval s</th><th>CPU s</th><th>steps</th><th>tokens</th><th>reason</th></tr></thead><tbody>{rows}</tbody></table>')


def _logs(trials: list[dict]) -> str:
    return "".join(f'<details class="log" id="log-{t["id"]}-{esc(name)}"><summary>trial {t["id"]} · {esc(name)} (last lines)</summary>'
                   f'<pre class="log">{esc(text)}</pre></details>'
                   for t in trials for name, text in t["logs"].items())


def _baseline_trials(data: dict) -> str:
    trials = data["baseline_trials"]
    if not trials:
        return ""
    return (f'<section id="baseline"><h2>Baseline trials</h2>{_trials_table(trials)}'
            f'{_logs(trials)}</section>')
