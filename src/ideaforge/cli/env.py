"""`ideaforge env list | show | check`: the research environments."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from ideaforge.cli.common import (
    ENV_HELP, ExecutorChoice, ExecutorOpt, GpusOpt, ProfileOpt, RayAddressOpt, SlotsOpt, bound, env_app, make_executor, say,
)
from ideaforge.envs.spec import builtin_names, load_env
from ideaforge.envs.workspace import read_files

CHECK_BUDGET_S = 15.0  # `env check` trains at most this long by default: it checks the wiring, not the score


def machine_line(machine: dict) -> str:
    return (f"machine: {machine.get('cpu') or 'CPU model unknown'}; features: "
            f"{', '.join(machine.get('features', [])) or 'none of ' + 'avx2/avx512f/avx512_bf16/amx_bf16'}; "
            f"GPUs: {', '.join(machine.get('gpus', [])) or 'none'}")


@env_app.command("list")
def env_list() -> int:
    """The built-in environments: metric, budget and resources of each."""
    for name in builtin_names():
        spec = load_env(name)
        say(f"{name:16s} {spec.metric} ({spec.goal}), budget {spec.budget_s:.0f} s, "
            f"{spec.cpus} cpu / {spec.gpus} gpu  — {spec.description.splitlines()[0][:80]}")
    return 0


@env_app.command("show")
def env_show(env: Annotated[str, typer.Argument(metavar="ENV", help=ENV_HELP)], profile: ProfileOpt = None) -> int:
    """What a model will see of an environment, and what it will not."""
    spec = load_env(env, profile=profile)
    say(f"{spec.name}  ({spec.root})")
    say(spec.description)
    say()
    say(f"metric:    {spec.metric} ({'lower' if spec.goal == 'min' else 'higher'} is better)")
    say(f"run:       {spec.run_command}   budget {spec.budget_s:.0f} s, hard timeout {spec.timeout_s:.0f} s")
    say(f"evaluate:  {spec.evaluate_command}   (trusted, after training, fresh process)")
    if spec.smoke_command:
        bound = f"{spec.smoke_steps} steps" if spec.smoke_steps is not None else f"budget {spec.smoke_budget_s:.0f} s"
        say(f"smoke:     {spec.smoke_command}   {bound}" + (", then the evaluator's smoke mode" if spec.smoke_evaluate else ""))
    if spec.prepare_command:
        say(f"prepare:   {spec.prepare_command}   (once per machine, cached)")
    say(f"resources: {spec.cpus} cpu, {spec.gpus} gpu per trial")
    if spec.profiles:
        say(f"profiles:  {', '.join(sorted(spec.profiles))}" + (f"   (this view: {spec.profile})" if spec.profile else ""))
    say()
    texts = read_files(spec)
    say("shown to the models:")
    for cls in ("editable", "visible"):
        for rel in spec.files[cls]:
            n = texts[rel].count("\n") + 1 if rel in texts else 0
            say(f"  {cls:9s} {rel}  ({n} lines)" if rel in texts else f"  {cls:9s} {rel}  (binary, not shown)")
    say("never shown, never in the training workspace:")
    for rel in spec.hidden_files:
        say(f"  hidden    {rel}")
    for rel in spec.data_paths:
        say(f"  data      {rel}/  (linked read-only into each trial)")
    if spec.rules:
        say("rules given to the models:")
        for r in spec.rules:
            say(f"  - {r}")
    return 0


@env_app.command("prepare")
def env_prepare(env: Annotated[str, typer.Argument(metavar="ENV", help=ENV_HELP)], profile: ProfileOpt = None) -> int:
    """Fetch what an environment needs once per machine (its pinned source, data, weights), with
    progress, resume and checksums, into $IDEAFORGE_CACHE (default ~/.cache/ideaforge)."""
    from ideaforge.envs.prepare import prepare_by_name

    spec, prepared = prepare_by_name(env, profile=profile, log=say)
    say(f"ok: {spec.name} prepared" + (f" in {prepared}" if prepared else " (nothing to prepare)"))
    return 0


@env_app.command("check")
def env_check(
    env: Annotated[str, typer.Argument(metavar="ENV", help=ENV_HELP)],
    budget: Annotated[Optional[float], typer.Option(callback=bound(0, open_=True, unit="seconds"), help="seconds of "
                      f"training (> 0) [default: the environment's budget_s, at most {CHECK_BUDGET_S:.0f} s]")] = None,
    dir: Annotated[Optional[Path], typer.Option("--dir", help="keep the check's campaign here [default: a "
                                                "temporary directory, removed afterwards]")] = None,
    keep: Annotated[bool, typer.Option(help="keep the temporary campaign directory")] = False,
    profile: ProfileOpt = None, slots: SlotsOpt = None, gpus: GpusOpt = None, executor: ExecutorOpt = None, ray_address: RayAddressOpt = None,
) -> int:
    """Validate an environment and run its baseline once."""
    from ideaforge.cli.run import run_trials
    from ideaforge.search.campaign import Campaign

    choice = ExecutorChoice(executor, slots, gpus, ray_address)
    spec = load_env(env, profile=profile)
    budget_s = budget or min(spec.budget_s, CHECK_BUDGET_S)
    say(f"{spec.name}: spec valid ({len(spec.editable_files)} editable, {len(spec.visible_files)} visible, "
        f"{len(spec.hidden_files)} hidden files, {len(spec.data_paths)} data paths)")
    from ideaforge.execute.jail import isolation_line

    say(isolation_line())
    tmp = None
    root = dir if dir else Path(tmp := tempfile.mkdtemp(prefix=f"ideaforge-check-{spec.name}-"))
    try:
        campaign = Campaign.create(root, spec, {"command": "env check", "budget_s": budget_s})
        tid = campaign.store.add_trial("check", seed=0, budget_s=budget_s)
        from ideaforge.ideate.catalogue import machine_features

        machine = machine_features()
        campaign.store.set_meta("machine", machine)  # next to the baseline it measures: scores depend on it
        say(machine_line(machine))
        say(f"running the baseline once with a {budget_s:.0f} s budget ...")
        run_trials(campaign, make_executor(choice, campaign), 1, budget_s, f"ideaforge env check {env}")
        t = campaign.store.trial(tid)
        if t["outcome"] != "evaluated":
            say(f"FAILED: the baseline ended {t['outcome']}; logs in {campaign.store.trial_dir(tid)}")
            return 1
        say(f"ok: baseline {spec.metric} = {t['metric']:.4f} after {budget_s:.0f} s of training")
        return 0
    finally:
        if tmp and not keep:
            shutil.rmtree(tmp, ignore_errors=True)
