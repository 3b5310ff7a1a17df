"""What ideators exchange with the search loop: ideas, scored ideas, the context of a call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ideaforge.envs.spec import EnvSpec

KINDS = ("initial", "exploit", "explore")


@dataclass
class Idea:
    title: str
    description: str
    code_changes: str = ""  # the code changes the idea needs, in words
    hyperparameters: dict[str, str] = field(default_factory=dict)  # named values, e.g. {"lr": "3e-3"}
    edit: str | None = None  # offline ideas carry their implementation: SEARCH/REPLACE blocks
    parents: list[int] = field(default_factory=list)  # campaign idea ids this one builds on
    kind: str = "initial"  # initial | exploit | explore
    origin: dict = field(default_factory=dict)  # {"ideator": ..., "model": ..., "prompt": ...}

    def text(self) -> str:
        """The idea as the implementer model reads it (the edit, if any, is not part of it)."""
        out = [f"Title: {self.title.strip()}", "", f"Description: {self.description.strip()}"]
        if self.code_changes.strip():
            out += ["", f"Code changes: {self.code_changes.strip()}"]
        if self.hyperparameters:
            out += ["", "Hyperparameters:"] + [f"  {k} = {v}" for k, v in self.hyperparameters.items()]
        return "\n".join(out)


@dataclass
class ScoredIdea:
    """An idea with what the campaign measured for it."""

    id: int
    title: str
    description: str
    code_changes: str
    outcome: str  # one of ideaforge.outcomes.IDEA_OUTCOMES
    metric: float | None  # mean over its evaluated trials
    std: float | None
    n: int  # evaluated trials behind `metric`
    beats_baseline: bool  # judged by the search against the campaign's measured baseline noise
    edit: str | None = None  # for offline ideas
    parents: list[int] = field(default_factory=list)


@dataclass
class Context:
    spec: EnvSpec
    files: dict[str, str]  # editable + visible file texts the models may see
    baseline_mean: float | None
    baseline_std: float | None
    proposed: list[str]  # titles (and short descriptions) already proposed in this campaign: avoid them
    epoch: int
    seed: int  # for deterministic sampling in offline ideators


class Ideator(Protocol):
    name: str

    def initial(self, ctx: Context, n: int) -> list[Idea]: ...

    def exploit(self, ctx: Context, parents: list[ScoredIdea], n: int) -> list[Idea]: ...

    def explore(self, ctx: Context, history: list[ScoredIdea], n: int) -> list[Idea]: ...


def rank(ideas: list[ScoredIdea], goal: str) -> list[ScoredIdea]:
    """Best measured first (by the metric's direction), unmeasured last; ties keep their order."""
    sign = 1.0 if goal == "min" else -1.0
    return sorted(ideas, key=lambda s: (s.metric is None, sign * s.metric if s.metric is not None else 0.0))
