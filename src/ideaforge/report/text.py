"""Plain-text views of a campaign for the terminal: `ideaforge status` and `ideaforge show`."""

from __future__ import annotations

import json
from typing import Callable

from ideaforge.report.analyses import EDIT_KINDS, SIMILARITY_SAMPLE, analyse
from ideaforge.report.data import log_tail
from ideaforge.report.rlview import rl_status_lines
from ideaforge.stats import ALPHA, drift, leaderboard, verdict
from ideaforge.store import Store


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def status_lines(store: Store, env: str | None = None, metric: str | None = None, goal: str | None = None,
                 cpus: int | None = None, gpus: int | None = None, top: int = 10) -> list[str]:
    """Leaderboard (mean ± std, beyond noise or not), per-epoch progress and failures, spend.

    The environment's name, metric, goal and resources default to the facts stored in the campaign.
    """
    facts = store.env_facts()
    env = env or facts.get("name") or store.get_meta("env_name", "?")
    metric = metric or facts.get("metric", "metric")
    goal = goal or facts.get("goal", "min")
    cpus = facts.get("cpus", 1) if cpus is None else cpus
    gpus = facts.get("gpus", 0) if gpus is None else gpus
    base, rows = leaderboard(store, goal)
    out = [f"{env}: {metric} ({'lower' if goal == 'min' else 'higher'} is better)",
           f"baseline: {base.fmt() if base else 'not measured yet'}", "",
           f"{'rank':>4} {'idea':>5} {'epoch':>5}  {metric + ' mean ± std (n)':<28} "
           f"{'contemporaneous baseline':<28} {'vs that baseline':<48} title"]
    for i, r in enumerate([r for r in rows if r["stats"]][:top], 1):
        near = r["baseline"].fmt() if r["baseline"] else "-"
        out.append(f"{i:>4} {r['idea_id']:>5} {r['epoch']:>5}  {r['stats'].fmt():<28} {near:<28} "
                   f"{verdict(r):<48} {r['title'][:60]}")
    n_compared = sum(r["stats"] is not None for r in rows)
    if any(r["test"] == "welch-holm" for r in rows):
        out.append(f"verdicts with p: one-sided Welch t-test against the baseline trials of the same epochs (±1), "
                   f"Holm-corrected over the {n_compared} ideas compared (beyond noise: adjusted p < {ALPHA}); "
                   f"with z: one seed, uncorrected")
    out += drift_lines(store)
    out += ["", f"{'epoch':>5} {'ideas':>5} {'executed':>8} {'best':>10} {'mean':>10}  failures"]
    ideas = store.idea_heads()
    for epoch in sorted({i["epoch"] for i in ideas}):
        ep_rows = [r for r in rows if r["epoch"] == epoch]
        values = [r["stats"].mean for r in ep_rows if r["stats"]]
        fails: dict[str, int] = {}
        for i in ideas:
            if i["epoch"] == epoch and i["status"] == "implement_failed":
                fails["implement_failed"] = fails.get("implement_failed", 0) + 1
        for r in ep_rows:
            if r["outcome"] not in ("evaluated", "pending"):
                fails[r["outcome"]] = fails.get(r["outcome"], 0) + 1
        best = (min(values) if goal == "min" else max(values)) if values else None
        mean = sum(values) / len(values) if values else None
        n_ideas = sum(i["epoch"] == epoch for i in ideas)
        out.append(f"{epoch:>5} {n_ideas:>5} {f'{len(values)}/{n_ideas}':>8} "
                   f"{_fmt(best):>10} {_fmt(mean):>10}  " + (", ".join(f"{k} {v}" for k, v in sorted(fails.items())) or "-"))
    out += analysis_lines(analyse(store, goal, rows), goal)
    if rl := rl_status_lines(store):  # an `ideaforge rl` run: its steps (epoch = step above)
        out += [""] + rl
    hours = store.trial_hours()
    out += ["", f"spend: ${store.llm_spend():.2f} on model calls, {hours * cpus:.2f} CPU-h, {hours * gpus:.2f} GPU-h "
                f"of trials, {store.get_meta('elapsed_s', 0.0) / 60:.1f} min wall"]
    out += isolation_lines(store) + machine_lines(store)
    if store.get_meta("stopped"):
        out.append(f"stopped early: {store.get_meta('stopped')}")
    out += requeue_lines(store)
    return out


def analysis_lines(a: dict, goal: str) -> list[str]:
    """The reference's analyses as text: execution rate per kind of idea, per epoch by kind of edit with
    diversity, and best so far per model."""
    if not a["by_epoch"]:
        return []
    names = {"edit": "kind of edit", "prompt": "prompt", "model": "model"}
    out = ["", "execution rate by kind of idea (hyperparameter: the edit changes only numeric literals; "
               "structural: anything else)",
           f"{'by':<13} {'kind':<24} {'ideas':>5} {'evaluated':>11} {'beats':>5} {'best':>10}"]
    for group, members in a["by_kind"].items():
        for m in members:
            done = f"{m['evaluated']} ({100 * m['exec_rate']:.0f}%)"
            out.append(f"{names[group]:<13} {m['label'][:24]:<24} {m['ideas']:>5} "
                       f"{done:>11} {m['beats']:>5} {_fmt(m['best']):>10}")
    short = {"hyperparameter": "hyperparam", "structural": "structural", "no change": "no change",
             "not implemented": "not impl."}
    out += ["", "per epoch: evaluated/ideas of each kind; diversity: distinct ideas, distinct edit targets, "
                f"mean pairwise similarity of idea texts (1 = all alike; at most {SIMILARITY_SAMPLE} ideas an epoch)",
            f"{'epoch':>5} {'ideas':>5} {'evaluated':>9} " + " ".join(f"{short[k]:>10}" for k in EDIT_KINDS)
            + f" {'distinct':>8} {'targets':>7} {'similar':>7}"]
    for e in a["by_epoch"]:
        kinds = " ".join(f"{f'{ok}/{n}' if n else '-':>10}" for ok, n in (e["kind_rates"][k] for k in EDIT_KINDS))
        sim = "-" if e["similarity"] is None else f"{e['similarity']:.2f}"
        done = f"{e['evaluated']}/{e['ideas']}"
        out.append(f"{e['epoch']:>5} {e['ideas']:>5} {done:>9} {kinds} "
                   f"{e['distinct']:>8} {e['targets']:>7} {sim:>7}")
    out += ["", f"best so far per model ({'lower' if goal == 'min' else 'higher'} is better), by epoch"]
    for s in a["models"]:
        out.append(f"  {s['label'][:28]:<28} " + " ".join(f"{_fmt(v):>10}" for _, v in s["points"]))
    return out


def drift_lines(store: Store) -> list[str]:
    """Baseline re-runs and candidates per epoch, with what they got to do: drift made visible."""
    rows = drift(store)
    if not rows:
        return []
    out = ["", f"{'epoch':>5} {'side':<10} {'trials':>6} {'mean':>10} {'steps':>8} {'tokens':>10} {'CPU s':>7}  "
               "(medians per trial; the last epoch after the search is the confirmation)"]
    for d in rows:
        tokens = "-" if d["tokens"] is None else f"{d['tokens']:.0f}"
        steps = "-" if d["steps"] is None else f"{d['steps']:.0f}"
        cpu = "-" if d["cpu_s"] is None else f"{d['cpu_s']:.1f}"
        done = f"{d['evaluated']}/{d['trials']}"
        out.append(f"{d['epoch']:>5} {d['side']:<10} {done:>6} {_fmt(d['mean']):>10} "
                   f"{steps:>8} {tokens:>10} {cpu:>7}")
    return out


def machine_lines(store: Store) -> list[str]:
    """The hardware the campaign ran on, and the catalogue ideas skipped for lack of it."""
    machine = store.get_meta("machine")
    out = []
    if machine:
        out.append(f"machine: {machine.get('cpu') or '?'}; CPU features {', '.join(machine.get('features', [])) or '-'}; "
                   f"GPUs {', '.join(machine.get('gpus', [])) or 'none'}")
    for s in store.get_meta("catalogue_skipped") or []:
        out.append(f"skipped on this machine: catalogue idea {s['id']} ({s['title']}): lacks {', '.join(s['lacks'])}")
    return out


def requeue_lines(store: Store, limit: int = 10) -> list[str]:
    """Trials whose worker died and that were re-run: never silent (their training so far was lost)."""
    rows = store.requeued_trials()
    if not rows:
        return []
    out = [f"re-queued after their worker died: {len(rows)} trial(s), {sum(r['requeues'] for r in rows)} time(s)"]
    for r in rows[:limit]:
        state = r["outcome"] or r["status"]
        out.append(f"  trial {r['id']}: re-queued {r['requeues']} time{'s' if r['requeues'] != 1 else ''} "
                   f"({r['role']}, now {state})")
    if len(rows) > limit:
        out.append(f"  ... and {len(rows) - limit} more")
    return out


def isolation_lines(store: Store) -> list[str]:
    """How the finished trials were isolated; unjailed ones are said loudly."""
    counts = store.isolation_counts()
    if not counts:
        return []
    line = "isolation: " + ", ".join(f"{n} trial(s) {k}" for k, n in sorted(counts.items()))
    return [line] + (["WARNING: some trials ran UNISOLATED (isolation = none): their code could read this "
                      "user's files and secrets and reach the network"] if counts.get("none") else [])


def show_idea(store: Store, metric: str, idea_id: int, say: Callable[[str], None]) -> bool:
    """One idea: lineage, description, implementation attempts, diff, trials and log tails."""
    ideas = {i["id"]: i for i in store.ideas()}
    idea = ideas.get(idea_id)
    if idea is None:
        say(f"no idea {idea_id} in {store.root}; " + (f"its ideas are numbered {min(ideas)}..{max(ideas)}"
                                                       if ideas else "it has no ideas yet"))
        return False
    say(f"idea {idea['id']} (epoch {idea['epoch']}, {idea['kind']}, {idea['status']}): {idea['title']}")
    if idea["parents"]:
        say("parents: " + "; ".join(f"{p}: {ideas[p]['title']}" for p in idea["parents"] if p in ideas))
    children = [i for i in ideas.values() if idea["id"] in i["parents"]]
    if children:
        say("children: " + "; ".join(f"{c['id']}: {c['title']}" for c in children))
    say("")
    say(idea["description"])
    if idea["code_changes"]:
        say("\ncode changes: " + idea["code_changes"])
    for impl in store.implementations(idea["id"]):
        say(f"\nimplementation {impl['id']}: {impl['status']} after {len(impl['attempts'])} attempt(s)")
        for a in impl["attempts"]:
            err = (a.get("error") or "").strip().splitlines()
            say(f"  sample {a['sample']} round {a['round']}: {a['stage']}" + (f" — {err[0][:100]}" if err else ""))
        if impl["error"]:
            say(impl["error"])
        say(impl["diff"])
        for t in store.trials(implementation_id=impl["id"]):
            value = f"{metric} = {_fmt(t['metric'])}" if t["outcome"] == "evaluated" else (t["outcome"] or t["status"])
            say(f"trial {t['id']} ({t['role']}, seed {t['seed']}): {value}")
            if t["outcome"] not in (None, "evaluated"):
                say("  " + (t["reason"] or "").replace("\n", "\n  "))
            for name in ("train.out", "train.err", "eval.err"):  # the log tails, for every trial that ran
                log = log_tail(store.trial_dir(t["id"]) / name, 10 if t["outcome"] == "evaluated" else 20)
                if log.strip():
                    say(f"  {name} (last lines):\n    " + log.replace("\n", "\n    "))
            if t["curve"]:
                say(f"  learning curve: {len(t['curve'])} points, last {json.dumps(t['curve'][-1])}")
    return True
