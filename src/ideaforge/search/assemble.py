"""Putting a campaign's parts together from its settings, for the command line and for scripts.

Everything here used to live in the CLI: the smoke check that joins `execute` to
`implement`, the ideator choice, the one way an implementation is recorded (shared with
the loop), the single-idea path of `ideaforge implement`, and the arithmetic of what a
campaign will cost.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ideaforge.envs.spec import EnvSpec
from ideaforge.envs.workspace import read_files
from ideaforge.implement.agent import AgentCall, AgentImplementer, AgentLimits, AgentRun, is_agent
from ideaforge.implement.implementer import Implementation, Implementer
from ideaforge.search.campaign import Campaign, Progress
from ideaforge.store import Store

if TYPE_CHECKING:  # the loop imports this module (record_implementation); import it back lazily
    from ideaforge.search.loop import Search, SearchConfig

Smoke = Callable[[dict[str, "str | None"]], "str | None"]  # changed files -> None (ok) or the failure text


def smoke_checker(spec: EnvSpec, source: Path, prepared: Path | None) -> Smoke:
    """The implementer's check: a few steps of the edited code; None when it ran, else the log tail."""
    from ideaforge.execute.smoke import run_smoke

    def check(changes: dict[str, str | None]) -> str | None:
        result = run_smoke(spec, source, changes, prepared)
        return None if result.ok else result.message
    return check


class AgentSandbox:
    """The `implement.agent.Sandbox` on execute/jail.py: the agent's copy and a fresh HOME writable,
    its program bound read-only, the network on (it must reach its provider), an allow-listed
    environment plus the variables the agent asked for, the whole tree killed at the timeout."""

    def __init__(self) -> None:
        from ideaforge.execute.jail import isolation

        self.isolation = isolation()

    def run(self, call: AgentCall) -> AgentRun:
        from ideaforge.execute import jail
        from ideaforge.execute.worker import run_group

        with tempfile.TemporaryDirectory(prefix="ideaforge-agent-") as tmp:
            home = Path(tmp) / "home"
            home.mkdir()
            box = jail.Jail(writable=(call.workdir, home), readonly=call.readonly, network=True)
            env = {**jail.allowed_environ(os.environ), "HOME": str(home), **call.env}
            run = run_group(shlex.join(call.argv), call.workdir, env, call.timeout_s, Path(tmp) / "agent", jail_=box)
            # CappedLog bounds each stream (head + tail, under 1 MB), so reading it whole is bounded too.
            out, err = ((Path(tmp) / f"agent.{s}").read_text(errors="replace") for s in ("out", "err"))
        return AgentRun(run.rc, run.timed_out, run.seconds, out, err, box.isolation)


def make_implementer(spec: EnvSpec, source: Path, implementer: str | None, model: str | None, *, samples: int,
                     repairs: int, smoke: Smoke | None, recorder, thinking_budget: int | None = None,
                     agent_limits: AgentLimits | None = None) -> Implementer:
    """The model implementer, or with `implementer` = "agent:..." a coding agent in the jail; another
    `implementer` (PROVIDER:NAME) is the model that implements while `model` ideates."""
    baseline = read_files(spec, source)
    if is_agent(implementer):
        return AgentImplementer(spec, baseline, source, implementer, AgentSandbox(), repairs=repairs,
                                limits=agent_limits or AgentLimits.from_environ(), smoke=smoke, recorder=recorder)
    return Implementer(spec, baseline, implementer or model, samples=samples, repairs=repairs, smoke=smoke, recorder=recorder,
                       thinking_budget=thinking_budget)


def build_search(campaign: Campaign, cfg: "SearchConfig", executor, on_event: Progress | None = None,
                 log: Callable[[str], None] = print) -> "Search":
    """The search for `cfg`: the model ideator and a smoke check with a model, the offline ideators without."""
    from ideaforge.ideate import ModelIdeator, offline_ideator
    from ideaforge.search.loop import Search

    spec = campaign.spec
    ideator = ModelIdeator(cfg.model, recorder=campaign.store.add_llm_call) if cfg.model else offline_ideator(spec)
    implements = cfg.model or cfg.implementer
    smoke = smoke_checker(spec, campaign.store.env_dir, campaign.prepared(log=log)) if implements else None
    return Search(campaign, executor, ideator, cfg, on_event=on_event, smoke=smoke)


def record_implementation(store: Store, idea_id: int, result: Implementation, budget_s: float | None) -> int:
    """Store an implementation, the idea's new status and (when it worked and `budget_s` is given)
    its candidate trial, in one transaction: a crash leaves none or all. Returns the implementation id."""
    with store.tx():
        impl_id = store.add_implementation(idea_id, result.ok, result.diff, result.files,
                                           result.attempts_json(), result.error)
        store.set_idea_status(idea_id, "implemented" if result.ok else "implement_failed")
        if result.ok and budget_s is not None:
            store.add_trial("candidate", seed=0, budget_s=budget_s, implementation_id=impl_id)
    return impl_id


@dataclass(frozen=True)
class SingleResult:
    idea_id: int
    implementation_id: int
    result: Implementation


def implement_one(campaign: Campaign, idea: str, model: str | None, *, samples: int, repairs: int,
                  thinking_budget: int | None = None, smoke: bool = True, budget_s: float | None = None,
                  log: Callable[[str], None] = print, implementer: str | None = None,
                  agent_limits: AgentLimits | None = None) -> SingleResult:
    """`ideaforge implement`: one idea from a user, implemented and recorded as the loop records its own.

    With `budget_s`, a working implementation also queues its trial (run it with a TrialRunner).
    `implementer` "agent:..." hands the idea to a coding agent instead of `model`.
    """
    spec, store = campaign.spec, campaign.store
    check = smoke_checker(spec, store.env_dir, campaign.prepared(log=log)) if smoke else None
    impl = make_implementer(spec, store.env_dir, implementer, model, samples=samples, repairs=repairs, smoke=check,
                            recorder=store.add_llm_call, thinking_budget=thinking_budget, agent_limits=agent_limits)
    text = idea.strip()
    idea_id = store.add_idea(0, "manual", text.splitlines()[0][:120], text, origin={"source": "cli"})
    result = impl.implement(text)
    return SingleResult(idea_id, record_implementation(store, idea_id, result, budget_s), result)


@dataclass(frozen=True)
class Plan:
    """What a campaign will run: trials, and the wall time they take if every slot stays busy."""
    trials: int          # baseline seeds (start, per epoch, confirmation) + one trial per idea + confirmation re-runs
    budget_s: float      # training seconds per trial
    slots: int           # trials at once
    wall_s: float        # trials x budget / slots: training time only (evaluation and ideation add to it)


def plan(cfg: "SearchConfig", spec_budget_s: float, slots: int) -> Plan:
    budget = cfg.budget_s or spec_budget_s
    confirmed = min(cfg.confirm_top, cfg.epochs * cfg.ideas)
    trials = cfg.baseline_seeds + cfg.epochs * cfg.ideas + confirmed * max(0, cfg.confirm_seeds - 1)
    every = cfg.baseline_every_epoch  # baselines re-run beside later epochs and the confirmation
    trials += every * max(0, cfg.epochs - 1) + (max(2, cfg.confirm_seeds) if every and confirmed else 0)
    slots = max(1, slots)
    waves = -(-trials // slots)  # ceil: a wave of `slots` trials takes one budget
    return Plan(trials, budget, slots, waves * budget)
