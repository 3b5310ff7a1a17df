"""The `ideaforge` command: a thin layer over the library.

This is the only place that configures process-global state (signal handling, output).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ideaforge.envs.spec import EnvSpec, builtin_names, load_env
from ideaforge.envs.workspace import read_files
from ideaforge.errors import IdeaforgeError
from ideaforge.execute.local import LocalExecutor
from ideaforge.search.campaign import Campaign, TrialRunner


DEFAULT_MODEL = "anthropic:claude-sonnet-4-5"


def _say(msg: str = "") -> None:
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


def make_executor(args, spec: EnvSpec) -> LocalExecutor:
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


def run_trials(campaign: Campaign, executor: LocalExecutor, total: int) -> None:
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "baseline" and not (args.env or args.resume):
        build_parser().error("baseline needs ENV (or --resume DIR)")
    try:
        return args.func(args)
    except IdeaforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
