"""The `ideaforge` command: a thin layer over the library.

This is the only place that configures process-global state (signal handling, output).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ideaforge.envs.spec import EnvSpec, builtin_names, load_env
from ideaforge.envs.workspace import read_files
from ideaforge.errors import IdeaforgeError
from ideaforge.execute.local import LocalExecutor
from ideaforge.search.campaign import Campaign, TrialRunner


DEFAULT_MODEL = "anthropic:claude-sonnet-4-5"


_SAY = threading.Lock()  # progress comes from implementation threads too


def _say(msg: str = "") -> None:
    with _SAY:
        print(msg, flush=True)


# -- shared helpers ---------------------------------------------------------------------
def detect_gpus() -> list[str]:
    """GPU ids from nvidia-smi (no CUDA import); empty on machines without one."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def make_executor(args, spec: EnvSpec):
    if getattr(args, "executor", "local") == "ray":
        from ideaforge.execute.ray_backend import RayExecutor  # imports ray: only when asked for

        return RayExecutor(args.ray_address, slots=getattr(args, "slots", None), cpus_per_trial=spec.cpus)
    gpus = [g for g in args.gpus.split(",") if g] if getattr(args, "gpus", None) else (detect_gpus() if spec.gpus else [])
    if spec.gpus:
        default_slots = max(1, len(gpus) // spec.gpus)
    else:
        default_slots = max(1, (os.cpu_count() or 1) // spec.cpus)
    return LocalExecutor(slots=getattr(args, "slots", None) or default_slots, gpus=gpus)


def default_dir(kind: str, env: str) -> Path:
    return Path("runs") / f"{env}-{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def fmt_metric(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def print_trial(info: dict, spec: EnvSpec) -> None:
    outcome = info.get("outcome")
    if outcome == "evaluated":
        _say(f"  trial {info['trial']}: {spec.metric} = {fmt_metric(info.get('metric'))}  "
             f"(train {info.get('train_s', 0):.1f} s, eval {info.get('eval_s', 0):.1f} s)")
    else:
        reason = (info.get("reason") or "").strip().splitlines()
        _say(f"  trial {info['trial']}: {outcome}: {reason[0] if reason else ''}")
        for line in reason[1:][-8:]:
            _say(f"      {line}")


def run_trials(campaign: Campaign, executor, total: int) -> None:
    done = [0]
    t0 = time.monotonic()

    def on_event(kind: str, info: dict) -> None:
        if kind == "finished":
            done[0] += 1
            _say(f"[{done[0]}/{total}] {time.monotonic() - t0:5.0f} s")
            print_trial(info, campaign.spec)
        elif kind == "log":
            _say(info["message"])
        elif kind in ("attached", "requeued"):
            _say(f"  trial {info['trial']}: {kind}")

    runner = TrialRunner(campaign, executor, on_event)
    try:
        with executor:
            runner.drain()
    except KeyboardInterrupt:
        _say("\nstopping: killing running trials (they are re-queued) ...")
        runner.stop()
        _say(f"stopped. Resume with: ideaforge baseline --resume {campaign.root}")
        raise SystemExit(130)


def summarize(values: list[float]) -> str:
    if not values:
        return "no value"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{mean:.4f} ± {std:.4f}" if not math.isnan(std) else f"{mean:.4f}"


# -- commands -----------------------------------------------------------------------------
def cmd_env_list(args) -> int:
    for name in builtin_names():
        spec = load_env(name)
        _say(f"{name:16s} {spec.metric} ({spec.goal}), budget {spec.budget_s:.0f} s, "
             f"{spec.cpus} cpu / {spec.gpus} gpu  — {spec.description.splitlines()[0][:80]}")
    return 0


def cmd_env_show(args) -> int:
    spec = load_env(args.env)
    _say(f"{spec.name}  ({spec.root})")
    _say(spec.description)
    _say()
    _say(f"metric:    {spec.metric} ({'lower' if spec.goal == 'min' else 'higher'} is better)")
    _say(f"run:       {spec.run_command}   budget {spec.budget_s:.0f} s, hard timeout {spec.timeout_s:.0f} s")
    _say(f"evaluate:  {spec.evaluate_command}   (trusted, after training, fresh process)")
    if spec.smoke_command:
        _say(f"smoke:     {spec.smoke_command}   budget {spec.smoke_budget_s:.0f} s")
    if spec.prepare_command:
        _say(f"prepare:   {spec.prepare_command}   (once per machine, cached)")
    _say(f"resources: {spec.cpus} cpu, {spec.gpus} gpu per trial")
    _say()
    texts = read_files(spec)
    _say("shown to the models:")
    for cls in ("editable", "visible"):
        for rel in spec.files[cls]:
            n = texts[rel].count("\n") + 1 if rel in texts else 0
            _say(f"  {cls:9s} {rel}  ({n} lines)" if rel in texts else f"  {cls:9s} {rel}  (binary, not shown)")
    _say("never shown, never in the training workspace:")
    for rel in spec.hidden_files:
        _say(f"  hidden    {rel}")
    for rel in spec.data_paths:
        _say(f"  data      {rel}/  (linked read-only into each trial)")
    if spec.rules:
        _say("rules given to the models:")
        for r in spec.rules:
            _say(f"  - {r}")
    return 0


def cmd_env_check(args) -> int:
    spec = load_env(args.env)
    budget = args.budget if args.budget else min(spec.budget_s, 15.0)
    _say(f"{spec.name}: spec valid ({len(spec.editable_files)} editable, {len(spec.visible_files)} visible, "
         f"{len(spec.hidden_files)} hidden files, {len(spec.data_paths)} data paths)")
    _say(__import__("ideaforge.execute.jail", fromlist=["isolation_line"]).isolation_line())
    tmp = None
    root = Path(args.dir) if args.dir else Path(tmp := tempfile.mkdtemp(prefix=f"ideaforge-check-{spec.name}-"))
    try:
        campaign = Campaign.create(root, spec, {"command": "env check", "budget_s": budget})
        tid = campaign.store.add_trial("check", seed=0, budget_s=budget)
        _say(f"running the baseline once with a {budget:.0f} s budget ...")
        run_trials(campaign, make_executor(args, spec), 1)
        t = campaign.store.trial(tid)
        if t["outcome"] != "evaluated":
            _say(f"FAILED: the baseline ended {t['outcome']}; logs in {campaign.store.trial_dir(tid)}")
            return 1
        _say(f"ok: baseline {spec.metric} = {t['metric']:.4f} after {budget:.0f} s of training")
        return 0
    finally:
        if tmp and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def cmd_baseline(args) -> int:
    if args.resume:
        campaign = Campaign.open(args.resume)
        spec = campaign.spec
    else:
        spec = load_env(args.env)
        root = Path(args.dir) if args.dir else default_dir("baseline", spec.name)
        budget = args.budget or spec.budget_s
        campaign = Campaign.create(root, spec, {"command": "baseline", "seeds": args.seeds, "budget_s": budget})
        with campaign.store.tx():
            for seed in range(args.seeds):
                campaign.store.add_trial("baseline", seed=seed, budget_s=budget)
        _say(f"campaign {campaign.root}: {args.seeds} baseline trials of {spec.name}, {budget:.0f} s each")
    trials = campaign.store.trials(role="baseline")
    run_trials(campaign, make_executor(args, spec), len(trials))
    trials = campaign.store.trials(role="baseline")
    values = [t["metric"] for t in trials if t["outcome"] == "evaluated"]
    _say()
    _say(f"baseline {spec.metric} over {len(values)} seed(s): {summarize(values)}")
    _say("values: " + ", ".join(f"{v:.4f}" for v in values))
    failed = [t for t in trials if t["outcome"] != "evaluated"]
    if failed:
        _say(f"{len(failed)} trial(s) did not evaluate: " + ", ".join(f"{t['id']}={t['outcome']}" for t in failed))
    _say(f"database: {campaign.store.root / 'campaign.db'}")
    return 0 if values else 1


def smoke_check(spec: EnvSpec, source: Path, prepared: Path | None):
    from ideaforge.execute.smoke import run_smoke

    def check(changes: dict[str, str | None]) -> str | None:
        result = run_smoke(spec, source, changes, prepared)
        return None if result.ok else result.message
    return check


def cmd_implement(args) -> int:
    from ideaforge.envs.workspace import ensure_prepared
    from ideaforge.implement.implementer import Implementer
    from ideaforge.llm import check_key

    spec = load_env(args.env)
    check_key(args.model)  # a missing key is an error before any work starts
    idea = Path(args.idea[1:]).read_text() if args.idea.startswith("@") else args.idea
    root = Path(args.dir) if args.dir else default_dir("implement", spec.name)
    campaign = Campaign.create(root, spec, {"command": "implement", "model": args.model, "samples": args.samples,
                                            "repairs": args.repairs})
    store = campaign.store
    prepared = ensure_prepared(spec, log=_say) if spec.smoke_command or args.run else None
    smoke = None if args.no_smoke else smoke_check(spec, store.env_dir, prepared)
    baseline = read_files(spec, store.env_dir)
    impl = Implementer(spec, baseline, args.model, samples=args.samples, repairs=args.repairs, smoke=smoke,
                       recorder=store.add_llm_call, thinking_budget=args.thinking_budget)
    idea_id = store.add_idea(0, "manual", idea.strip().splitlines()[0][:120], idea.strip(), origin={"source": "cli"})
    _say(f"implementing with {args.model}: {args.samples} sample(s), up to {args.repairs} repair(s) each ...")
    t0 = time.monotonic()
    result = impl.implement(idea)
    impl_id = store.add_implementation(idea_id, result.ok, result.diff, result.files, result.attempts_json(), result.error)
    store.set_idea_status(idea_id, "implemented" if result.ok else "implement_failed")
    for a in result.attempts:
        first = (a.error or "").strip().splitlines()
        _say(f"  sample {a.sample} round {a.round}: {a.stage}" + (f" — {first[0][:100]}" if first else ""))
    calls = store.execute("SELECT COUNT(*), COALESCE(SUM(cost_usd),0), COALESCE(SUM(input_tokens),0), "
                          "COALESCE(SUM(output_tokens),0) FROM llm_calls").fetchone()
    _say(f"{calls[0]} model call(s), {calls[2]} tokens in, {calls[3]} out, ${calls[1]:.4f}, {time.monotonic() - t0:.1f} s")
    if not result.ok:
        _say(f"FAILED: {result.error}")
        _say(f"every attempt is stored in {store.root / 'campaign.db'}")
        return 1
    _say(result.summary)
    _say(result.diff)
    if not args.run:
        _say(f"stored in {store.root}; add --run to train and evaluate it")
        return 0
    tid = store.add_trial("candidate", seed=0, budget_s=args.budget or spec.budget_s, implementation_id=impl_id)
    run_trials(campaign, make_executor(args, spec), 1)
    t = store.trial(tid)
    _say(f"result: {t['outcome']}" + (f", {spec.metric} = {t['metric']:.4f}" if t["metric"] is not None else ""))
    return 0 if t["outcome"] == "evaluated" else 1


# -- the research loop ----------------------------------------------------------------------
def pick_model(args) -> str | None:
    """--model wins; --offline forces none; otherwise the first provider whose key is set."""
    from ideaforge.llm import check_key

    if getattr(args, "offline", False):
        return None
    if args.model:
        check_key(args.model)
        return args.model
    if os.environ.get("IDEAFORGE_MODEL"):
        check_key(os.environ["IDEAFORGE_MODEL"])
        return os.environ["IDEAFORGE_MODEL"]
    if os.environ.get("ANTHROPIC_API_KEY"):
        return DEFAULT_MODEL
    if os.environ.get("OPENAI_API_KEY"):
        return "openai:gpt-5"
    return None


def build_search(campaign: Campaign, cfg, executor, on_event):
    from ideaforge.ideate import ModelIdeator, offline_ideator
    from ideaforge.search.loop import Search

    spec = campaign.spec
    if cfg.model:
        ideator = ModelIdeator(cfg.model, recorder=campaign.store.add_llm_call)
    else:
        ideator = offline_ideator(spec)
    smoke = smoke_check(spec, campaign.store.env_dir, campaign.prepared(log=_say)) if cfg.model else None
    return Search(campaign, executor, ideator, cfg, on_event=on_event, smoke=smoke)


def search_events(campaign: Campaign, cfg):
    spec = campaign.spec
    t0 = time.monotonic()
    state = {"done": 0}

    def on_event(kind: str, info: dict) -> None:
        stamp = f"{time.monotonic() - t0:6.0f}s"
        if kind == "epoch":
            _say(f"{stamp} == epoch {info['epoch'] + 1}/{info['epochs']} ==")
        elif kind == "ideas":
            _say(f"{stamp}   {info['count']} ideas")
        elif kind == "implemented":
            status = "implemented" if info["ok"] else f"implement_failed ({(info['error'] or '').splitlines()[0][:90]})"
            _say(f"{stamp}   idea {info['idea']}: {status}: {info['title'][:70]}")
        elif kind == "finished":
            state["done"] += 1
            t = campaign.store.trial(info["trial"])
            what = "baseline" if t["role"] == "baseline" else f"{t['role']} (impl {t['implementation_id']})"
            value = f"{spec.metric} = {fmt_metric(info.get('metric'))}" if info["outcome"] == "evaluated" else info["outcome"]
            _say(f"{stamp}   trial {info['trial']} {what}: {value}")
        elif kind == "epoch_done":
            print_progress(campaign, prefix=f"{stamp}   ")
        elif kind == "confirm":
            _say(f"{stamp} == confirming the top {len(info['ideas'])} idea(s) with {cfg.confirm_seeds} seeds ==")
        elif kind in ("attached", "requeued"):
            _say(f"{stamp}   trial {info['trial']}: {kind}")
        elif kind == "log":
            _say(info["message"])
    return on_event


def print_progress(campaign: Campaign, prefix: str = "") -> None:
    from ideaforge.search.judge import leaderboard

    spec = campaign.spec
    base, rows = leaderboard(campaign.store, spec.goal)
    best = next((r for r in rows if r["stats"]), None)
    q = campaign.store.execute("SELECT status, COUNT(*) FROM trials GROUP BY status").fetchall()
    counts = {r[0]: r[1] for r in q}
    _say(f"{prefix}baseline {base.fmt() if base else '-'} | best {best['stats'].mean:.4f} ({best['title'][:40]})"
         if best else f"{prefix}baseline {base.fmt() if base else '-'} | no evaluated idea yet")
    _say(f"{prefix}trials: {counts.get('done', 0)} done, {counts.get('running', 0)} running, "
         f"{counts.get('queued', 0)} queued | model spend ${campaign.store.llm_spend():.2f}")


def run_search(campaign: Campaign, cfg, args) -> int:
    executor = make_executor(args, campaign.spec)
    search = build_search(campaign, cfg, executor, search_events(campaign, cfg))
    try:
        with executor:
            why = search.run()
    except KeyboardInterrupt:
        _say("\nstopping: killing running trials (they are re-queued) ...")
        search.runner.stop()
        search._save_elapsed()
        _say(f"stopped. Resume with: ideaforge resume {campaign.root}")
        return 130
    _say()
    _say(f"campaign {why}.")
    print_status(campaign)
    return 0


def cmd_run(args) -> int:
    from ideaforge.search.loop import SearchConfig, config_dict

    spec = load_env(args.env)
    model = pick_model(args)
    if model is None:
        _say("no model configured (no --model, no ANTHROPIC_API_KEY or OPENAI_API_KEY): using the offline "
             "ideators (the environment's idea catalogue and numeric-setting moves), which need no key.")
    else:
        _say(f"model: {model} ideates and implements")
    cfg = SearchConfig(mode=args.mode, epochs=args.epochs, ideas=args.ideas, budget_s=args.budget,
                       baseline_seeds=args.baseline_seeds, confirm_top=args.confirm_top,
                       confirm_seeds=args.confirm_seeds, model=model, samples=args.samples, repairs=args.repairs,
                       seed=args.seed, max_wall_s=args.max_wall * 60 if args.max_wall else None,
                       max_usd=args.max_usd, max_cpu_hours=args.max_cpu_hours, max_gpu_hours=args.max_gpu_hours)
    root = Path(args.dir) if args.dir else default_dir(args.mode, spec.name)
    campaign = Campaign.create(root, spec, {"command": "run", "search": config_dict(cfg)})
    budget = cfg.budget_s or spec.budget_s
    _say(f"campaign {campaign.root}: {spec.name}, {cfg.mode}, {cfg.epochs} epochs x {cfg.ideas} ideas, "
         f"{budget:.0f} s per trial, baseline x{cfg.baseline_seeds}")
    return run_search(campaign, cfg, args)


def cmd_resume(args) -> int:
    from ideaforge.search.loop import SearchConfig

    campaign = Campaign.open(args.dir)
    saved = campaign.config()
    if "search" not in saved:
        _say(f"{args.dir} is not a search campaign (it was made by `ideaforge {saved.get('command', '?')}`)")
        return 2
    cfg = SearchConfig(**saved["search"])
    if cfg.model:
        from ideaforge.llm import check_key
        check_key(cfg.model)
    if campaign.env_changed():
        _say("note: the environment's files changed since the campaign started; trials keep using the snapshot")
    if campaign.store.get_meta("finished"):
        _say("this campaign has finished.")
        print_status(campaign)
        return 0
    _say(f"resuming {campaign.root}")
    return run_search(campaign, cfg, args)


def print_status(campaign: Campaign, top: int = 10) -> None:
    from ideaforge.report.text import status_lines

    for line in status_lines(campaign.store, campaign.spec.name, campaign.spec.metric, campaign.spec.goal,
                             campaign.spec.cpus, campaign.spec.gpus, top):
        _say(line)


def cmd_status(args) -> int:
    campaign = Campaign.open(args.dir)
    print_status(campaign, top=args.top)
    return 0


def cmd_show(args) -> int:
    from ideaforge.report.text import show_idea

    campaign = Campaign.open(args.dir)
    return 0 if show_idea(campaign.store, campaign.spec.metric, args.idea, _say) else 2


def cmd_report(args) -> int:
    from ideaforge.report import write_report

    out = write_report(Path(args.dir), Path(args.out) if args.out else None, compare=[Path(d) for d in args.compare])
    _say(f"wrote {out}")
    return 0


def cmd_ui(args) -> int:
    from ideaforge.report import serve

    try:
        serve(Path(args.dir), host=args.host, port=args.port,
              ready=lambda url: _say(f"live view of {args.dir} at {url} (read-only; Ctrl-C to stop)"))
    except KeyboardInterrupt:
        pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ideaforge", description="Execution-grounded automated AI research.")
    sub = p.add_subparsers(dest="command", required=True)

    env = sub.add_parser("env", help="list, show and check research environments")
    esub = env.add_subparsers(dest="env_command", required=True)
    esub.add_parser("list", help="the built-in environments").set_defaults(func=cmd_env_list)
    show = esub.add_parser("show", help="what a model will see of an environment, and what it will not")
    show.add_argument("env", help="a built-in name or a directory with an ideaforge.toml")
    show.set_defaults(func=cmd_env_show)
    check = esub.add_parser("check", help="validate an environment and run its baseline once")
    check.add_argument("env")
    check.add_argument("--budget", type=float, help="training seconds (default: min(env budget, 15))")
    check.add_argument("--dir", help="keep the check's campaign here instead of a temporary directory")
    check.add_argument("--keep", action="store_true", help="keep the temporary campaign directory")
    _executor_args(check)
    check.set_defaults(func=cmd_env_check)

    base = sub.add_parser("baseline", help="measure the baseline over several seeds: the noise floor")
    base.add_argument("env", nargs="?", help="a built-in name or a directory with an ideaforge.toml")
    base.add_argument("--seeds", type=int, default=3)
    base.add_argument("--budget", type=float, help="training seconds per trial (default: the environment's)")
    base.add_argument("--dir", help="campaign directory (default: runs/ENV-baseline-TIME)")
    base.add_argument("--resume", metavar="DIR", help="finish an interrupted baseline campaign")
    _executor_args(base)
    base.set_defaults(func=cmd_baseline)

    run = sub.add_parser("run", help="run a research campaign: ideas -> edits -> trials -> search")
    run.add_argument("--env", default="nanogpt-cpu", help="a built-in name or a directory (default nanogpt-cpu)")
    run.add_argument("--dir", help="campaign directory (default: runs/ENV-MODE-TIME)")
    run.add_argument("--model", help="ideator and implementer model (default: from ANTHROPIC_API_KEY / OPENAI_API_KEY; none: offline)")
    run.add_argument("--offline", action="store_true", help="use the offline ideators even when a key is set")
    run.add_argument("--mode", choices=["evolve", "best-of-n"], default="evolve")
    run.add_argument("--epochs", type=int, default=4)
    run.add_argument("--ideas", type=int, default=8, help="ideas per epoch")
    run.add_argument("--budget", type=float, help="training seconds per trial (default: the environment's)")
    run.add_argument("--baseline-seeds", type=int, default=3)
    run.add_argument("--confirm-top", type=int, default=3, help="best ideas re-run with more seeds at the end")
    run.add_argument("--confirm-seeds", type=int, default=3, help="seeds each confirmed idea ends with")
    run.add_argument("--samples", type=int, default=3, help="implementer samples per idea")
    run.add_argument("--repairs", type=int, default=2, help="implementer repairs per sample")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--max-wall", type=float, help="minutes of wall time, then stop")
    run.add_argument("--max-usd", type=float, help="dollars of model spend, then stop")
    run.add_argument("--max-cpu-hours", type=float, help="CPU-hours of trials, then stop")
    run.add_argument("--max-gpu-hours", type=float, help="GPU-hours of trials, then stop")
    _executor_args(run)
    run.set_defaults(func=cmd_run)

    res = sub.add_parser("resume", help="continue a stopped or crashed campaign")
    res.add_argument("dir")
    _executor_args(res)
    res.set_defaults(func=cmd_resume)

    st = sub.add_parser("status", help="leaderboard, per-epoch progress and spend of a campaign")
    st.add_argument("dir")
    st.add_argument("--top", type=int, default=10)
    st.set_defaults(func=cmd_status)

    sh = sub.add_parser("show", help="one idea: parents, diff, trials, log tails")
    sh.add_argument("dir")
    sh.add_argument("idea", type=int)
    sh.set_defaults(func=cmd_show)

    rep = sub.add_parser("report", help="write a self-contained HTML report of a campaign")
    rep.add_argument("dir")
    rep.add_argument("--out", help="output file (default DIR/report.html)")
    rep.add_argument("--compare", nargs="*", default=[], help="other campaign directories to overlay (e.g. best-of-N)")
    rep.set_defaults(func=cmd_report)

    ui = sub.add_parser("ui", help="serve the report live while a campaign runs (read-only)")
    ui.add_argument("dir")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=8765)
    ui.set_defaults(func=cmd_ui)

    imp = sub.add_parser("implement", help="implement one idea as a checked edit (and optionally run it)")
    imp.add_argument("env", help="a built-in name or a directory with an ideaforge.toml")
    imp.add_argument("idea", help="the idea in words, or @FILE to read it from a file")
    imp.add_argument("--model", default=os.environ.get("IDEAFORGE_MODEL", DEFAULT_MODEL),
                     help="e.g. anthropic:claude-sonnet-4-5, openai:gpt-5, openai-compatible:NAME@http://127.0.0.1:8000/v1")
    imp.add_argument("--samples", type=int, default=3, help="edits sampled in parallel (default 3)")
    imp.add_argument("--repairs", type=int, default=2, help="repairs per sample from the apply/check error (default 2)")
    imp.add_argument("--thinking-budget", type=int, help="Anthropic extended-thinking tokens")
    imp.add_argument("--no-smoke", action="store_true", help="skip the smoke run (syntax is still checked)")
    imp.add_argument("--run", action="store_true", help="train and evaluate the implementation as a trial")
    imp.add_argument("--budget", type=float, help="training seconds for --run (default: the environment's)")
    imp.add_argument("--dir", help="campaign directory (default: runs/ENV-implement-TIME)")
    _executor_args(imp)
    imp.set_defaults(func=cmd_implement)
    return p


def _executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slots", type=int, help="trials at once (default: cores / env cpus, or GPUs / env gpus)")
    p.add_argument("--gpus", help="GPU ids to lend to trials, e.g. 0,1,2,3 (default: all that nvidia-smi lists)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where trials run: this machine, or a Ray cluster (see docs/ray.md)")
    p.add_argument("--ray-address", help="with --executor ray: auto, HOST:6379 or ray://HOST:10001 "
                                         "(default: a local Ray instance)")


def _stop_cleanly(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Ctrl-C and `kill` stop a campaign cleanly (running trials killed and re-queued). Set
    # explicitly: a shell that starts us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGINT, _stop_cleanly)
    signal.signal(signal.SIGTERM, _stop_cleanly)
    if args.command == "baseline" and not (args.env or args.resume):
        build_parser().error("baseline needs ENV (or --resume DIR)")
    try:
        return args.func(args)
    except IdeaforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ideaforge show ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
