"""`ideaforge implement`: one idea, implemented as a checked edit, and optionally trained and scored."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ideaforge.cli.common import (
    BUDGET_HELP, DIR_HELP, ENV_HELP, ExecutorChoice, ExecutorOpt, GpusOpt, ProfileOpt, RayAddressOpt, SlotsOpt, app, bound,
    default_dir, make_executor, say,
)
from ideaforge.cli.run import D, REPLAY_HELP, replay_choice, replay_dir, replay_verdict, run_trials
from ideaforge.envs.spec import load_env
from ideaforge.search.campaign import Campaign


@app.command()
def implement(
    env: Annotated[str, typer.Argument(metavar="ENV", help=ENV_HELP)],
    idea: Annotated[str, typer.Argument(metavar="IDEA", help="the idea in words, or @FILE to read it from a file")],
    model: Annotated[Optional[str], typer.Option(
        help="implementer model, PROVIDER:NAME[@URL], e.g. anthropic:claude-sonnet-4-5, openai:gpt-5, "
        "openai-compatible:NAME@http://127.0.0.1:8000/v1 [default: $IDEAFORGE_MODEL, else "
        "anthropic:claude-sonnet-4-5]")] = None,
    replay: Annotated[Optional[Path], typer.Option("--replay", metavar="DIR", help=REPLAY_HELP)] = None,
    samples: Annotated[int, typer.Option(callback=bound(1), help="edits sampled in parallel (>= 1)")] = D.samples,
    repairs: Annotated[int, typer.Option(callback=bound(0), help="repairs per sample from the apply/check error "
                                         "(>= 0)")] = D.repairs,
    thinking_budget: Annotated[Optional[int], typer.Option(callback=bound(1), help="Anthropic extended-thinking "
                                                           "tokens per call [default: off]")] = None,
    implementer: Annotated[Optional[str], typer.Option(
        help="agent:claude-code[:MODEL], agent:codex[:MODEL], agent:aider[:MODEL] or agent:COMMAND: a coding "
        "agent implements the idea in a jailed copy (see docs/agents.md) [default: --model]")] = None,
    no_smoke: Annotated[bool, typer.Option("--no-smoke", help="skip the smoke run (syntax is still checked)")] = False,
    run: Annotated[bool, typer.Option("--run", help="train and evaluate the implementation as one trial")] = False,
    budget: Annotated[Optional[float], typer.Option(callback=bound(0, open_=True, unit="seconds"),
                                                    help=BUDGET_HELP + "; with --run")] = None,
    dir: Annotated[Optional[Path], typer.Option("--dir", help=DIR_HELP.format(kind="implement"))] = None,
    profile: ProfileOpt = None, slots: SlotsOpt = None, gpus: GpusOpt = None, executor: ExecutorOpt = None, ray_address: RayAddressOpt = None,
) -> int:
    """Implement one idea as a checked edit: print the diff and what it took (model calls, tokens, dollars)."""
    from ideaforge.llm.choose import DEFAULT_MODEL, check_reachable
    from ideaforge.search.assemble import implement_one

    choice = ExecutorChoice(executor, slots, gpus, ray_address)
    spec = load_env(env, profile=profile)
    replay, model = replay_dir(replay, model)
    if implementer:  # a coding agent: its program and key, before any work starts
        from ideaforge.implement.agent import check_agent

        check_agent(implementer)
        model = None
    else:
        model = replay_choice(replay, model) if replay is not None else model or os.environ.get("IDEAFORGE_MODEL") or DEFAULT_MODEL
        check_reachable(model)  # the key, then the server: before any work starts
    if idea.startswith("@"):
        try:
            idea = Path(idea[1:]).read_text()
        except OSError as e:
            raise typer.BadParameter(f"cannot read the idea from {idea[1:]}: {e.strerror}", param_hint="IDEA")
    if not idea.strip():
        raise typer.BadParameter("the idea is empty", param_hint="IDEA")
    campaign = Campaign.create(dir or default_dir("implement", spec.name), spec,
                               {"command": "implement", "model": model, "samples": samples, "repairs": repairs,
                                "implementer": implementer})
    store = campaign.store
    say(f"implementing with {implementer}: up to {repairs} repair round(s) ..." if implementer else
        f"implementing with {model}: {samples} sample(s), up to {repairs} repair(s) each ...")
    t0 = time.monotonic()
    budget_s = (budget or spec.budget_s) if run else None
    one = implement_one(campaign, idea, model, samples=samples, repairs=repairs, thinking_budget=thinking_budget,
                        smoke=not no_smoke, budget_s=budget_s, log=say, implementer=implementer)
    result = one.result
    for a in result.attempts:
        first = (a.error or "").strip().splitlines()
        say(f"  sample {a.sample} round {a.round}: {a.stage}" + (f" — {first[0][:100]}" if first else ""))
    use = store.llm_totals()
    say(f"{use['calls']} model call(s), {use['input_tokens']} tokens in, {use['output_tokens']} out, "
        f"${use['cost_usd']:.4f}, {time.monotonic() - t0:.1f} s")
    say(f"idea {one.idea_id}, implementation {one.implementation_id} in {store.root}")
    if not result.ok:
        say(f"FAILED: {result.error}")
        say(f"every attempt is stored in {store.root / 'campaign.db'}")
        return replay_verdict(model, 1)
    say(result.summary)
    say(result.diff)
    if replay_verdict(model, 0):
        return 1
    if not run:
        say(f"stored in {store.root}; add --run to train and evaluate it")
        return 0
    run_trials(campaign, make_executor(choice, campaign), 1, budget_s, f"ideaforge baseline --resume {campaign.root}")
    t = store.trials()[0]
    say(f"result: {t['outcome']}" + (f", {spec.metric} = {t['metric']:.4f}" if t["metric"] is not None else ""))
    return 0 if t["outcome"] == "evaluated" else 1
