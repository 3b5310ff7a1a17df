"""A campaign, read once (read-only) into one plain, JSON-serialisable dict.

Everything the HTML report and the live view show comes from `load_campaign(dir)`;
the renderers never touch the database. Shape (keys that matter):

    summary      env, metric, goal, mode, models, ideas per epoch, epochs, budget used
    baseline     {mean, std, n, values} | None           (evaluated baseline trials)
    epochs       [{epoch, ideas, evaluated, exec_rate, values, best_so_far, outcomes}]
    series       best-so-far per epoch, one entry per search arm (evolve / best-of-N)
    leaderboard  rows of stats.leaderboard, best first, Stats flattened to mean/std/n, with the
                 contemporaneous baseline, the Welch p, its Holm-adjusted p and the verdict's words
    drift        stats.drift: per epoch, baseline re-runs and candidates with median steps/tokens/CPU s
    analyses     analyses.analyse: execution rate per epoch and per kind of idea (hyper-parameter-only vs
                 structural, prompt, model), diversity per epoch, best-so-far per model
    ideas        every idea with parents, children, implementations, trials, log tails
    state        what the live view polls (see `campaign_state`)

`load_campaign(dir, details=False)` leaves out what only an opened idea shows (diffs,
attempts, curves, log tails: most of a large campaign's bytes); `idea_details(store, id)`
loads those for one idea, with indexed queries, when the page asks for them.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from ideaforge.stats import ALPHA, Stats, drift, leaderboard, trial_work, verdict
from ideaforge.outcomes import IDEA_OUTCOMES
from ideaforge.store import Store
from ideaforge.report.analyses import analyse
from ideaforge.report.rlview import rl_data

LOG_TAIL_LINES = 30      # lines of train.out / train.err shown per trial
LOG_TAIL_BYTES = 16_384  # read at most this much from the end of a log (a run may write gigabytes)
ERROR_CHARS = 2_000      # implementation errors shown per attempt
LOGS = ("train.err", "train.out")

# Where an idea ended, in the order the stacked bars draw them (the closed vocabulary).
OUTCOME_ORDER = IDEA_OUTCOMES


def load_campaign(campaign_dir: str | Path, details: bool = True) -> dict[str, Any]:
    store = Store.open_readonly(campaign_dir)
    try:
        return _load(store, details)
    finally:
        store.close()


def _load(store: Store, details: bool = True) -> dict[str, Any]:
    facts = store.env_facts()  # the environment as resolved when the campaign was made
    goal = facts.get("goal", "min")
    config = store.get_meta("config", {}) or {}
    search = config.get("search", {}) or {}

    ideas = store.ideas()
    if details:
        impls, trials = store.implementations(), store.trials()
    else:  # slim rows; the baseline's few trials in full (the page shows their logs)
        full = {t["id"]: t for t in store.trials(role="baseline")}
        impls, trials = store.implementation_heads(), [full.get(t["id"], t) for t in store.trial_outcomes()]
    base, rows = leaderboard(store, goal)

    ideas_out = _ideas(store, ideas, impls, trials, rows, details)
    analyses = analyse(store, goal, rows)
    for i in ideas_out:  # the idea list shows each idea's kind of edit and model
        i.update({k: analyses["ideas"][i["id"]][k] for k in ("edit_kind", "model")})
    epochs = _epochs(ideas_out, goal)
    data: dict[str, Any] = {
        "dir": str(store.root),
        "generated": time.time(),
        "summary": _summary(store, facts, config, search, ideas, trials),
        "baseline": _baseline(base, trials),
        "epochs": epochs,
        "series": _series(ideas_out, goal, label_prefix=""),
        "leaderboard": [_row(r) for r in rows],
        "compared": sum(r["stats"] is not None for r in rows),  # the number Holm corrects for
        "alpha": ALPHA,
        "drift": drift(store),
        "analyses": analyses,
        "ideas": ideas_out,
        "baseline_trials": [_trial(store, t) for t in trials if t["role"] == "baseline"],
        "state": campaign_state(store),
        "rl": rl_data(store),  # None unless an `ideaforge rl` run (report/rlview.py)
    }
    return data


# -- summary ----------------------------------------------------------------------------
def _summary(store: Store, facts: dict, config: dict, search: dict, ideas: list[dict],
             trials: list[dict]) -> dict[str, Any]:
    cpus, gpus = int(facts.get("cpus", 1)), int(facts.get("gpus", 0))
    trial_s = store.trial_hours() * 3600
    models = store.llm_usage_by_model()
    configured = search.get("model") or config.get("model")
    status = {s: 0 for s in ("queued", "running", "done")}
    for t in trials:
        status[t["status"]] = status.get(t["status"], 0) + 1
    return {
        "env": store.get_meta("env_name") or facts.get("name", "?"),
        "env_description": (facts.get("description") or "").strip(),
        "metric": facts.get("metric", "metric"),
        "goal": facts.get("goal", "min"),
        "profile": facts.get("profile"),
        "executor": store.get_meta("executor"),
        "command": config.get("command"),
        "mode": search.get("mode"),
        "model": configured,
        "models": models,
        "ideas_per_epoch": search.get("ideas"),
        "epochs_planned": search.get("epochs"),
        "epochs_done": store.get_meta("epochs_done", 0),
        "finished": bool(store.get_meta("finished", False)),
        "stopped": store.get_meta("stopped"),
        "created": store.get_meta("created"),
        "wall_s": float(store.get_meta("elapsed_s", 0.0) or 0.0),
        "spend_usd": store.llm_spend(),
        "cpus": cpus,
        "gpus": gpus,
        "trial_hours": trial_s / 3600,
        "cpu_hours": trial_s / 3600 * cpus,
        "gpu_hours": trial_s / 3600 * gpus,
        "ideas": len(ideas),
        "trials": status,
        "requeues": sum(t.get("requeues", 0) for t in trials),
        "isolation": store.isolation_counts(),
        "machine": store.get_meta("machine"),  # {features, cpu, gpus}: scores depend on it
        "catalogue_skipped": store.get_meta("catalogue_skipped") or [],  # [{id, title, lacks}]
        "budget_s": search.get("budget_s") or facts.get("budget_s"),
        "config": config,
    }


def _baseline(base: Stats | None, trials: list[dict]) -> dict[str, Any] | None:
    if base is None:
        return None
    values = [t["metric"] for t in trials if t["role"] == "baseline" and t["outcome"] == "evaluated"]
    return {"mean": base.mean, "std": base.std, "n": base.n, "values": values}


def _row(r: dict) -> dict[str, Any]:
    st: Stats | None = r["stats"]
    return {
        "idea_id": r["idea_id"], "title": r["title"], "epoch": r["epoch"], "kind": r["kind"],
        "parents": r["parents"], "outcome": r["outcome"], "trials": r["trials"], "beats": r["beats"],
        "z": r["z"], "mean": st.mean if st else None, "std": st.std if st else None, "n": st.n if st else 0,
        "test": r["test"], "p": r["welch"].p if r["welch"] else None, "p_adj": r["p_adj"], "verdict": verdict(r),
        "near": ({"mean": r["baseline"].mean, "std": r["baseline"].std, "n": r["baseline"].n}
                 if r["baseline"] else None),
    }


# -- ideas ------------------------------------------------------------------------------
def _ideas(store: Store, ideas: list[dict], impls: list[dict], trials: list[dict],
           rows: list[dict], details: bool = True) -> list[dict]:
    impls_of: dict[int, list[dict]] = {}
    for impl in impls:
        impls_of.setdefault(impl["idea_id"], []).append(impl)
    idea_of_impl = {impl["id"]: impl["idea_id"] for impl in impls}
    trials_of: dict[int, list[dict]] = {}
    for t in trials:
        if t["implementation_id"] is not None:
            trials_of.setdefault(idea_of_impl.get(t["implementation_id"]), []).append(t)
    children: dict[int, list[int]] = {}
    for idea in ideas:
        for p in idea["parents"]:
            children.setdefault(p, []).append(idea["id"])
    by_row = {r["idea_id"]: _row(r) for r in rows}

    out = []
    for idea in ideas:
        its_impls = impls_of.get(idea["id"], [])
        its_trials = trials_of.get(idea["id"], [])
        row = by_row.get(idea["id"])
        out.append({
            "id": idea["id"], "epoch": idea["epoch"], "kind": idea["kind"], "title": idea["title"],
            "description": idea["description"], "code_changes": idea["code_changes"],
            "parents": idea["parents"], "children": children.get(idea["id"], []),
            "origin": {k: v for k, v in idea["origin"].items() if k != "edit"},  # the edit is the diff below
            "status": idea["status"],
            "implementations": [_impl(i) if details else _head(i, IMPL_HEAD) for i in its_impls],
            "trials": [_trial(store, t) if details else _head(t, TRIAL_HEAD) for t in its_trials],
            "mean": row["mean"] if row else None, "std": row["std"] if row else None,
            "n": row["n"] if row else 0, "beats": bool(row and row["beats"]), "z": row["z"] if row else None,
            "outcome": _outcome(idea, its_impls, its_trials),
        })
    return out


IMPL_HEAD = ("id", "status")
TRIAL_HEAD = ("id", "role", "seed", "status", "outcome", "metric")


def _head(row: dict, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: row[k] for k in keys}


def idea_details(store: Store, idea_id: int) -> dict[str, Any] | None:
    """What an opened idea shows beyond the list: implementations (diffs, attempts) and trials (curves,
    log tails), as in `load_campaign(details=True)`; None when there is no such idea."""
    if store.idea(idea_id) is None:
        return None
    impls = store.implementations(idea_id)
    trials = store.trials_of_implementations(i["id"] for i in impls)
    return {"id": idea_id, "implementations": [_impl(i) for i in impls],
            "trials": [_trial(store, t) for t in trials]}


def _impl(impl: dict) -> dict[str, Any]:
    attempts = [{"sample": a.get("sample"), "round": a.get("round"), "stage": a.get("stage"),
                 "seconds": a.get("seconds"), "error": _clip(a.get("error"))}
                for a in impl["attempts"] if isinstance(a, dict)]
    return {"id": impl["id"], "status": impl["status"], "diff": impl["diff"], "error": _clip(impl["error"]),
            "files": sorted(impl["files"]), "attempts": attempts}


def _trial(store: Store, t: dict) -> dict[str, Any]:
    tdir = store.trial_dir(t["id"])
    return {
        "id": t["id"], "role": t["role"], "seed": t["seed"], "status": t["status"], "outcome": t["outcome"],
        "metric": t["metric"], "metrics": t["metrics"], "reason": t["reason"], "exit_code": t["exit_code"],
        "train_s": t["train_s"], "eval_s": t["eval_s"], "budget_s": t["budget_s"], "curve": t["curve"],
        "requeues": t.get("requeues", 0), "isolation": t.get("isolation"),
        **trial_work(t),  # steps, tokens, cpu_s: what this trial got to do in its budget
        "logs": {name: tail for name in LOGS if (tail := log_tail(tdir / name))},
    }


def _outcome(idea: dict, impls: list[dict], trials: list[dict]) -> str:
    """Where one idea ended: evaluated, implement_failed, a trial outcome, or pending."""
    if any(t["outcome"] == "evaluated" for t in trials):
        return "evaluated"
    if idea["status"] == "implement_failed" or (impls and all(i["status"] != "ok" for i in impls)):
        return "implement_failed"
    done = [t for t in trials if t["status"] == "done" and t["role"] in ("candidate", "confirm")]
    if done:
        return done[-1]["outcome"] or "failed"
    return "pending"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - LOG_TAIL_BYTES))
            raw = f.read()
    except OSError:
        return ""
    text = raw.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _clip(text: str | None, n: int = ERROR_CHARS) -> str | None:
    if text is None or len(text) <= n:
        return text
    return text[:n] + f"\n… ({len(text) - n} more characters)"


# -- per epoch --------------------------------------------------------------------------
def _epochs(ideas: list[dict], goal: str) -> list[dict]:
    if not ideas:
        return []
    last = max(i["epoch"] for i in ideas)
    out, best, best_id = [], None, None
    for e in range(last + 1):
        mine = [i for i in ideas if i["epoch"] == e]
        values = [{"idea_id": i["id"], "value": i["mean"]} for i in mine if i["mean"] is not None]
        for v in values:
            if best is None or _better(v["value"], best, goal):
                best, best_id = v["value"], v["idea_id"]
        outcomes = {k: 0 for k in OUTCOME_ORDER}
        for i in mine:
            outcomes[i["outcome"]] = outcomes.get(i["outcome"], 0) + 1
        evaluated = outcomes["evaluated"]
        out.append({
            "epoch": e, "ideas": len(mine), "evaluated": evaluated,
            "exec_rate": evaluated / len(mine) if mine else None,
            "values": values, "best_so_far": best, "best_so_far_idea": best_id,
            "outcomes": {k: v for k, v in outcomes.items() if v},
        })
    return out


def _series(ideas: list[dict], goal: str, label_prefix: str) -> list[dict]:
    """Best-so-far per epoch for each search arm present: best-of-N ideas vs the rest (evolve)."""
    arms = {"best-of-N": [i for i in ideas if i["kind"] == "best_of_n"],
            "evolve": [i for i in ideas if i["kind"] != "best_of_n"]}
    out = []
    for label, members in arms.items():
        if not members:
            continue
        points, best = [], None
        for e in range(max(i["epoch"] for i in members) + 1):
            for i in members:
                if i["epoch"] == e and i["mean"] is not None and (best is None or _better(i["mean"], best, goal)):
                    best = i["mean"]
            points.append([e, best])
        out.append({"label": f"{label_prefix}{label}", "points": points})
    return out


def compare_series(campaign_dir: str | Path, goal: str) -> list[dict]:
    """Best-so-far series of another campaign, labelled with its directory, for overlaying."""
    other = load_campaign(campaign_dir)
    if other["summary"]["goal"] != goal:
        return []  # a max-campaign on a min-plot would read upside down
    return _series(other["ideas"], goal, label_prefix=f"{Path(campaign_dir).name}: ")


def _better(a: float, b: float, goal: str) -> bool:
    return a < b if goal == "min" else a > b


# -- live state -------------------------------------------------------------------------
def campaign_state(store: Store) -> dict[str, Any]:
    """A few cheap counters, and a hash of them that changes whenever the report would."""
    c = store.progress_counters()
    meta = {k: store.get_meta(k) for k in ("epochs_done", "finished", "stopped")}
    state = {k: c[k] for k in ("trials", "trials_done", "trials_running", "trials_queued", "last_trial", "ideas",
                               "implementations", "llm_calls", "requeues")} | meta
    key = json.dumps([state, c["last_ended"], c["last_started"], c["idea_statuses"], c["llm_cost"], c["rl_updated"]],
                     sort_keys=True, default=str)
    state["version"] = hashlib.sha256(key.encode()).hexdigest()[:16]
    return state


def read_state(campaign_dir: str | Path) -> dict[str, Any]:
    store = Store.open_readonly(campaign_dir)
    try:
        return campaign_state(store)
    finally:
        store.close()
