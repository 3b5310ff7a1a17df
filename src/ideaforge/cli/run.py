"""`ideaforge run`, `resume` and `baseline`: the commands that run a campaign's trials."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Annotated, Optional

import typer

from ideaforge.cli.common import (
    BUDGET_HELP, DIR_HELP, ENV_HELP, ExecutorChoice, ExecutorOpt, GpusOpt, ProfileOpt, RayAddressOpt, SlotsOpt,
    Mode, app, bound, default_dir, fail, fmt_duration, make_executor, minutes_to_seconds, say,
)
from ideaforge.cli.progress import progress
from ideaforge.envs.spec import load_env
from ideaforge.search.assemble import build_search, plan
from ideaforge.search.campaign import Campaign, TrialRunner
from ideaforge.search.loop import SearchConfig, config_dict

D = SearchConfig()  # the defaults below come from here: one source of truth


def run_trials(campaign: Campaign, executor, planned: int, budget_s: float, resume: str) -> None:
    """Run every queued trial with live progress; Ctrl-C kills and re-queues the running ones."""
    with progress(campaign, planned, executor.slots, budget_s) as tracker:
        runner = TrialRunner(campaign, executor, tracker.on_event)
        try:
            with executor:
                runner.drain()
        except KeyboardInterrupt:
            say("\nstopping: killing running trials (they are re-queued) ...")
            runner.stop()
            say(f"stopped. Resume with: {resume}")
            raise typer.Exit(130)


def say_plan(cfg: SearchConfig, spec_budget_s: float, slots: int) -> None:
    p = plan(cfg, spec_budget_s, slots)
    rerun = p.trials - cfg.baseline_seeds - cfg.epochs * cfg.ideas \
        - min(cfg.confirm_top, cfg.epochs * cfg.ideas) * max(0, cfg.confirm_seeds - 1)
    ideas = (f"{cfg.epochs} x {cfg.ideas} ideas asked as slots free" if cfg.mode == "evolve-async"
             else f"{cfg.epochs} epochs x {cfg.ideas} ideas")
    say(f"plan: {p.trials} trials ({cfg.baseline_seeds} baseline + {rerun} baseline re-runs + {ideas} + "
        f"{min(cfg.confirm_top, cfg.epochs * cfg.ideas)} x {max(0, cfg.confirm_seeds - 1)} confirmation runs) of {p.budget_s:.0f} s on {p.slots} "
        f"slot(s): about {fmt_duration(p.wall_s)} of training, plus evaluation and ideation"
        + (f"; stops after {fmt_duration(cfg.max_wall_s)} of wall time" if cfg.max_wall_s else ""))


def run_search(campaign: Campaign, cfg: SearchConfig, executor) -> int:
    p = plan(cfg, campaign.spec.budget_s, executor.slots)
    with progress(campaign, p.trials, p.slots, p.budget_s, cfg.epochs, cfg.ideas) as tracker:
        search = build_search(campaign, cfg, executor, tracker.on_event, log=say)
        try:
            with executor:
                why = search.run()
        except KeyboardInterrupt:
            say("\nstopping: killing running trials (they are re-queued) ...")
            search.runner.stop()
            search._save_elapsed()
            say(f"stopped. Resume with: ideaforge resume {campaign.root}")
            return 130
    say()
    say(f"campaign {why}.")
    from ideaforge.cli.view import print_status

    print_status(campaign)
    return 0


def _check_model(model: str | None) -> None:
    """Key and server reachability, before anything is created."""
    if model:
        from ideaforge.llm.choose import check_reachable

        check_reachable(model)


REPLAY_HELP = ("answer every model call from the recorded calls of the campaign in DIR (its campaign.db), matched "
               "by prompt: no key, no server, $0; a prompt that was not recorded is an error (docs/replay.md) "
               "[default: none: call the model]")


def replay_choice(replay: Path, model: str | None, offline: bool = False) -> str:
    """The model spec for --replay DIR; refuses --offline or a --model of another kind with it."""
    from ideaforge.errors import LLMError
    from ideaforge.llm.models import parse_model
    from ideaforge.llm.replay import replay_model, replayer

    if offline or (model and not model.strip().lower().startswith("replay:")):
        raise typer.BadParameter("--replay answers from recorded calls: give no --model or --offline with it",
                                 param_hint="--replay")
    try:
        chosen = replay_model(replay)
        if model and replay_model(parse_model(model).name) != chosen:
            raise typer.BadParameter(f"--model {model} and --replay {replay} name different campaigns",
                                     param_hint="--replay")
        replayer(chosen[len("replay:"):], fresh=True)  # this run answers from the first recorded call on
    except LLMError as e:
        raise typer.BadParameter(str(e), param_hint="--replay") from None
    return chosen


def replay_dir(replay: Path | None, model: str | None) -> tuple[Path | None, str | None]:
    """--model replay:DIR is --replay DIR (so the campaign saves DIR made absolute, for `resume`)."""
    if replay is None and model and model.strip().lower().startswith("replay:"):
        return Path(model.strip().split(":", 1)[1]), None
    return replay, model


def replay_verdict(model: str | None, rc: int) -> int:
    """After a replayed run: how many calls were answered, and exit 1 if any request missed."""
    if not model or not model.lower().startswith("replay:"):
        return rc
    from ideaforge.llm.replay import replayer

    r = replayer(model.split(":", 1)[1])
    say(f"replay: {r.answered} model call(s) answered from {r.root}, {len(r.misses)} missed")
    if r.misses:
        say(f"REPLAY FAILED: {r.misses[0]}")
        return rc or 1
    return rc


def _check_agent(implementer: str | None) -> None:
    """A coding-agent implementer's program and key (or an implementer model's key and server), before
    anything is created."""
    if implementer:
        from ideaforge.implement.agent import check_agent, is_agent

        if not is_agent(implementer):
            _check_model(implementer)
            return
        check_agent(implementer)


@app.command(epilog="Cost: (baseline-seeds + epochs x ideas + confirm-top x (confirm-seeds - 1)) trials, each "
             "--budget seconds of training, --slots at a time; with the defaults on nanogpt-cpu and 2 cores, "
             "41 trials x 60 s / 2 slots = about 21 min of training (measured: 22.6 min in all). The plan is "
             "printed when the run starts.")
def run(
    env: Annotated[str, typer.Option(help=ENV_HELP)] = "nanogpt-cpu",
    dir: Annotated[Optional[Path], typer.Option("--dir", help=DIR_HELP.format(kind="MODE"))] = None,
    model: Annotated[Optional[str], typer.Option(
        help="ideator and implementer model, PROVIDER:NAME[@URL], e.g. anthropic:claude-sonnet-4-5, openai:gpt-5, "
        "openai-compatible:NAME@http://127.0.0.1:8000/v1, or local:PATH, a model on this machine: an adapter "
        "saved by `ideaforge rl` (DIR/rl/adapters/step-NNNN, on the base it names, sampled as the RL run "
        "sampled), a transformers model directory, a .gguf file or smollm2; a bare PATH that exists works too; "
        "needs `pip install 'ideaforge[local]'`, runs on the GPU if there is one (docs/rl.md) "
        "[default: $IDEAFORGE_MODEL, else claude-sonnet-4-5 "
        "if ANTHROPIC_API_KEY is set, else gpt-5 if OPENAI_API_KEY is set, else none: the offline ideators]")] = None,
    implementer: Annotated[Optional[str], typer.Option(
        help="agent:claude-code[:MODEL], agent:codex[:MODEL], agent:aider[:MODEL] or agent:COMMAND: a coding "
        "agent implements each idea in a jailed copy (see docs/agents.md); or a model, PROVIDER:NAME[@URL], "
        "that implements while --model ideates (e.g. a local RL-trained ideator with a strong implementer) "
        "[default: --model]")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="use the offline ideators even when a key is set")] = False,
    replay: Annotated[Optional[Path], typer.Option("--replay", metavar="DIR", help=REPLAY_HELP)] = None,
    mode: Annotated[Mode, typer.Option(help="evolve: Algorithm 1 (exploit winners, explore history); best-of-n: "
                                      "the no-feedback control; evolve-async: Algorithm 1 without epoch barriers, "
                                      "ideas asked a few at a time as slots free (the same epochs x ideas in all)")] = Mode(D.mode),
    epochs: Annotated[int, typer.Option(callback=bound(1), help="search epochs (>= 1), numbered 0..epochs-1")] = D.epochs,
    ideas: Annotated[int, typer.Option(callback=bound(1), help="ideas per epoch (>= 1; evolve-async: per generation); each is one trial")] = D.ideas,
    budget: Annotated[Optional[float], typer.Option(callback=bound(0, open_=True, unit="seconds"), help=BUDGET_HELP)] = None,
    baseline_seeds: Annotated[int, typer.Option(callback=bound(1), help="baseline trials at the start, each with "
                                                "its own seed: the noise floor ideas must beat (>= 1)")] = D.baseline_seeds,
    baseline_every_epoch: Annotated[int, typer.Option(callback=bound(0), help="baseline trials re-run beside each "
                                                      "later epoch and the confirmation, so ideas are judged against "
                                                      "a baseline measured under the same load (>= 0)")] = D.baseline_every_epoch,
    confirm_top: Annotated[int, typer.Option(callback=bound(0), help="best ideas re-run with more seeds at the end "
                                             "(>= 0)")] = D.confirm_top,
    confirm_seeds: Annotated[int, typer.Option(callback=bound(1), help="seeds each confirmed idea ends with "
                                               "(>= 1)")] = D.confirm_seeds,
    samples: Annotated[int, typer.Option(callback=bound(1), help="implementer: edits sampled in parallel per idea "
                                         "(>= 1; model runs only)")] = D.samples,
    repairs: Annotated[int, typer.Option(callback=bound(0), help="implementer: repairs per sample from the apply/check "
                                         "error (>= 0; model runs only)")] = D.repairs,
    seed: Annotated[int, typer.Option(help="seed of the ideators' sampling (trial seeds are 0, 1, ...)")] = D.seed,
    ahead: Annotated[int, typer.Option(callback=bound(0), help="evolve-async only: ideas kept in implementation "
                                       "beyond the free slots, so a slot that frees finds a trial ready (a model "
                                       "implementer takes minutes per idea) (>= 0)")] = D.ahead,
    max_wall: Annotated[Optional[str], typer.Option(
        metavar="MINUTES", callback=minutes_to_seconds, help="stop after this much wall time of this controller "
        "(what is running finishes): minutes, or a number with s, m or h (45s, 90m, 1.5h) [default: no limit]")] = None,
    max_usd: Annotated[Optional[float], typer.Option(callback=bound(0, open_=True, unit="USD"),
                                                     help="stop after this many US dollars of model calls "
                                                     "[default: no limit]")] = None,
    max_cpu_hours: Annotated[Optional[float], typer.Option(callback=bound(0, open_=True, unit="CPU-hours"), help="stop "
                             "after this many CPU-hours of trials (trial hours x env cpus) [default: no limit]")] = None,
    max_gpu_hours: Annotated[Optional[float], typer.Option(callback=bound(0, open_=True, unit="GPU-hours"), help="stop "
                             "after this many GPU-hours of trials (trial hours x env gpus) [default: no limit]")] = None,
    profile: ProfileOpt = None, slots: SlotsOpt = None, gpus: GpusOpt = None, executor: ExecutorOpt = None, ray_address: RayAddressOpt = None,
) -> int:
    """Run a research campaign: ideas -> edits -> trials -> search, in a new campaign directory."""
    from ideaforge.llm.choose import choose_model

    choice = ExecutorChoice(executor, slots, gpus, ray_address)
    mode = Mode(mode).value
    if ahead and mode != "evolve-async":
        raise typer.BadParameter(f"--ahead applies to --mode evolve-async only (got --mode {mode}: an epoch's "
                                 "ideas are all implemented at once)", param_hint="--ahead")
    spec = load_env(env, profile=profile)
    replay, model = replay_dir(replay, model)
    chosen = replay_choice(replay, model, offline) if replay is not None else choose_model(model, offline)
    _check_model(chosen)
    _check_agent(implementer)
    cfg = SearchConfig(mode=mode, epochs=epochs, ideas=ideas, budget_s=budget, baseline_seeds=baseline_seeds,
                       baseline_every_epoch=baseline_every_epoch, confirm_top=confirm_top, confirm_seeds=confirm_seeds,
                       model=chosen, implementer=implementer, samples=samples,
                       repairs=repairs, seed=seed, max_wall_s=max_wall, max_usd=max_usd, max_cpu_hours=max_cpu_hours,
                       max_gpu_hours=max_gpu_hours, ahead=ahead)
    campaign = Campaign.create(dir or default_dir(mode, spec.name), spec, {"command": "run", "search": config_dict(cfg)})
    ex = make_executor(choice, campaign)
    if chosen is None:
        say("no model configured (no --model, no ANTHROPIC_API_KEY or OPENAI_API_KEY): using the offline "
            "ideators (the environment's idea catalogue and numeric-setting moves), which need no key.")
    else:
        say(f"model: {chosen} ideates and implements" if not implementer else
            f"model: {chosen} ideates; {implementer} implements")
    say(f"campaign {campaign.root}: {spec.name}, {cfg.mode}, {spec.metric} ({spec.goal})")
    say_plan(cfg, spec.budget_s, ex.slots)
    return replay_verdict(chosen, run_search(campaign, cfg, ex))


@app.command()
def resume(
    dir: Annotated[Path, typer.Argument(metavar="DIR", help="a campaign directory made by `ideaforge run`")],
    slots: SlotsOpt = None, gpus: GpusOpt = None, executor: ExecutorOpt = None, ray_address: RayAddressOpt = None,
) -> int:
    """Continue a stopped or crashed campaign (Ctrl-C, a crash, kill -9): finished trials are collected, live
    ones re-attached, the rest re-queued; no idea is asked for twice. The executor and its address are the ones the campaign was started with."""
    choice = ExecutorChoice(executor, slots, gpus, ray_address)
    campaign = Campaign.open(dir)
    saved = campaign.config()
    if saved.get("command") == "rl":  # an `ideaforge rl` run resumes in the stage it stopped in
        from ideaforge.rl.analysis import summary_text
        from ideaforge.rl.command import print_event
        from ideaforge.rl.loop import run_rl
        from ideaforge.store import Store

        campaign.store.close()
        root = run_rl(None, None, dir=dir, resume=True, executor=choice.executor, slots=slots,
                      ray_address=ray_address, on_event=print_event)
        store = Store.open_readonly(root)
        say(summary_text(store))
        store.close()
        return 0
    if "search" not in saved:
        raise fail(f"{dir} is not a search campaign (it was made by `ideaforge {saved.get('command', '?')}`)")
    cfg = SearchConfig(**saved["search"])
    if campaign.store.get_meta("finished"):
        from ideaforge.cli.view import print_status

        say("this campaign has finished.")
        print_status(campaign)
        return 0
    _check_model(cfg.model)
    _check_agent(cfg.implementer)
    if campaign.env_changed():
        say("note: the environment's files changed since the campaign started; trials keep using the snapshot")
    say(f"resuming {campaign.root}")
    return replay_verdict(cfg.model, run_search(campaign, cfg, make_executor(choice, campaign)))


def summarize(values: list[float]) -> str:
    if not values:
        return "no value"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{mean:.4f} ± {std:.4f}" if not math.isnan(std) else f"{mean:.4f}"


@app.command()
def baseline(
    env: Annotated[Optional[str], typer.Argument(metavar="ENV", help=ENV_HELP + " (not with --resume)")] = None,
    seeds: Annotated[int, typer.Option(callback=bound(1), help="baseline trials, seeds 0..K-1 (>= 1)")] = D.baseline_seeds,
    budget: Annotated[Optional[float], typer.Option(callback=bound(0, open_=True, unit="seconds"), help=BUDGET_HELP)] = None,
    dir: Annotated[Optional[Path], typer.Option("--dir", help=DIR_HELP.format(kind="baseline"))] = None,
    resume: Annotated[Optional[Path], typer.Option(metavar="DIR", help="finish an interrupted baseline campaign")] = None,
    profile: ProfileOpt = None, slots: SlotsOpt = None, gpus: GpusOpt = None, executor: ExecutorOpt = None, ray_address: RayAddressOpt = None,
) -> int:
    """Measure the baseline over several seeds: the noise floor (mean ± std) ideas must beat."""
    choice = ExecutorChoice(executor, slots, gpus, ray_address)
    if bool(env) == bool(resume):
        raise typer.BadParameter("give ENV, or --resume DIR (not both)", param_hint="ENV")
    if resume:
        campaign = Campaign.open(resume)
        spec = campaign.spec
    else:
        spec = load_env(env, profile=profile)
        budget_s = budget or spec.budget_s
        campaign = Campaign.create(dir or default_dir("baseline", spec.name), spec,
                                   {"command": "baseline", "seeds": seeds, "budget_s": budget_s},
                                   setup=lambda store: [store.add_trial("baseline", seed=s, budget_s=budget_s)
                                                        for s in range(seeds)])
        say(f"campaign {campaign.root}: {seeds} baseline trials of {spec.name}, {budget_s:.0f} s each")
    trials = campaign.store.trials(role="baseline")
    ex = make_executor(choice, campaign)
    run_trials(campaign, ex, len(trials), trials[0]["budget_s"] if trials else spec.budget_s,
               f"ideaforge baseline --resume {campaign.root}")
    trials = campaign.store.trials(role="baseline")
    values = [t["metric"] for t in trials if t["outcome"] == "evaluated"]
    say()
    say(f"baseline {spec.metric} over {len(values)} seed(s): {summarize(values)}")
    say("values: " + ", ".join(f"{v:.4f}" for v in values))
    failed = [t for t in trials if t["outcome"] != "evaluated"]
    if failed:
        say(f"{len(failed)} trial(s) did not evaluate: " + ", ".join(f"{t['id']}={t['outcome']}" for t in failed))
    say(f"database: {campaign.store.root / 'campaign.db'}")
    return 0 if values else 1
