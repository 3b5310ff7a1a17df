"""ModelIdeator: ideas from a language model, with the reference's prompts (paper §3-4).

Every prompt shows the environment (description, rules, metric, direction, the
measured baseline, the time budget) and its codebase with line numbers; hidden
files are only named. Initial prompts ask for novel ideas; exploit prompts show the
ideas that beat the baseline with their scores and ask to combine and refine them;
explore prompts show a random sample of history, failures included, and ask for new
directions. Each call asks for a batch of ideas; batches run in parallel.
"""

from __future__ import annotations

import math
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from string import Template

from ideaforge.envs.workspace import render_codebase
from ideaforge.ideate.parse import parse_ideas
from ideaforge.ideate.types import Context, Idea, ScoredIdea, rank
from ideaforge.llm import Recorder, complete

PROMPTS = Path(__file__).parent / "prompts"
HISTORY_K = 100  # most ideas shown to an explore call (the reference's sample_k)
HISTORY_CHARS = 60_000  # and at most this much history text, so the prompt fits a context window
PARENTS_K = 100  # most parents shown to an exploit call (the reference's top_k)
DESCRIPTION_CHARS = 1200  # an earlier idea's description is cut to this in prompts
AVOID_CHARS = 40_000  # the avoid list keeps the most recent proposals that fit in this many characters


def template(name: str) -> Template:
    return Template((PROMPTS / name).read_text())


def baseline_text(ctx: Context) -> str:
    if ctx.baseline_mean is None:
        return "not measured yet"
    std = f" ± {ctx.baseline_std:.3g}" if ctx.baseline_std is not None else ""
    return f"{ctx.spec.metric} = {ctx.baseline_mean:.4g}{std} (mean ± std over seeds)"


def context_text(ctx: Context) -> str:
    spec = ctx.spec
    return template("context.txt").substitute(
        description=spec.description,
        metric=spec.metric,
        direction="lower" if spec.goal == "min" else "higher",
        baseline=baseline_text(ctx),
        budget_s=f"{spec.budget_s:g}",
        codebase=render_codebase(spec, ctx.files),
        editable=", ".join(spec.editable_files),
        rules="".join(f"- {r}\n" for r in spec.rules),
    )


def avoid_text(ctx: Context) -> str:
    lines, used = [], 0
    for p in reversed(ctx.proposed):
        line = f"- {' '.join(p.split())}"
        if used + len(line) > AVOID_CHARS:
            break
        lines.append(line)
        used += len(line) + 1
    if not lines:
        return ""
    return "Avoid ideas similar to these already proposed:\n" + "\n".join(reversed(lines)) + "\n"


def result_text(s: ScoredIdea, ctx: Context) -> str:
    if s.outcome != "evaluated" or s.metric is None:
        return f"failed: {s.outcome}"
    std = f" ± {s.std:.3g}" if s.std is not None else ""
    verdict = "beats the baseline" if s.beats_baseline else "does not beat the baseline"
    return f"{ctx.spec.metric} = {s.metric:.4g}{std} over {s.n} run{'s' if s.n != 1 else ''} ({verdict})"


def idea_text(s: ScoredIdea, ctx: Context, details: bool = True) -> str:
    desc = s.description.strip()
    if len(desc) > DESCRIPTION_CHARS:
        desc = desc[:DESCRIPTION_CHARS].rsplit(" ", 1)[0] + " ..."
    out = [f"## Idea {s.id}: {s.title.strip()}", desc]
    if details and s.code_changes.strip():
        out.append(f"Code changes: {s.code_changes.strip()}")
    out.append(f"Result: {result_text(s, ctx)}")
    return "\n".join(out)


def initial_prompt(ctx: Context, n: int) -> str:
    return _fill("initial.txt", ctx, n)


def exploit_prompt(ctx: Context, parents: list[ScoredIdea], n: int) -> tuple[str, list[int]]:
    """The prompt and the ids of the parents it shows."""
    winners = [p for p in parents if p.beats_baseline]
    shown = rank(winners or [p for p in parents if p.metric is not None] or parents, ctx.spec.goal)[:PARENTS_K]
    base = baseline_text(ctx)
    if winners:
        summary = f"These {len(shown)} ideas beat the baseline ({base}); best first."
    elif shown:
        summary = (f"No idea has beaten the baseline ({base}) yet. These are the best ideas so far, best first: "
                   "refine them so that they do.")
    else:
        summary = f"No idea has beaten the baseline ({base}) yet, and there are no results to show."
    text = _fill("exploit.txt", ctx, n, summary=summary, parents="\n\n".join(idea_text(p, ctx) for p in shown))
    return text, [p.id for p in shown]


def explore_prompt(ctx: Context, history: list[ScoredIdea], n: int, rng: random.Random) -> str:
    sample = rng.sample(history, min(HISTORY_K, len(history)))
    parts, used = [], 0
    for s in sample:
        t = idea_text(s, ctx, details=False)
        if used + len(t) > HISTORY_CHARS:
            break
        parts.append(t)
        used += len(t) + 2
    return _fill("explore.txt", ctx, n, history="\n\n".join(parts) or "(no ideas have been tried yet)")


def _fill(name: str, ctx: Context, n: int, **extra: str) -> str:
    fmt = template("format.txt").substitute(metric=ctx.spec.metric)
    return template(name).substitute(
        context=context_text(ctx), n=n, metric=ctx.spec.metric,
        direction="lower" if ctx.spec.goal == "min" else "higher",
        format=fmt, avoid=avoid_text(ctx), **extra,
    )


class ModelIdeator:
    name = "model"

    def __init__(self, model: str, recorder: Recorder | None = None, batch_size: int = 10, parallel: int = 4,
                 thinking_budget: int | None = None, temperature: float | None = None, max_tokens: int = 8000):
        self.model = model
        self.recorder = recorder
        self.batch_size = max(1, batch_size)
        self.parallel = max(1, parallel)
        self.thinking_budget = thinking_budget
        self.temperature = temperature
        self.max_tokens = max(max_tokens, (thinking_budget or 0) + 4000)  # the reply needs room beyond thinking
        self.system = template("system.txt").substitute().strip()

    def initial(self, ctx: Context, n: int) -> list[Idea]:
        return self._run("initial", n, lambda k, i: (initial_prompt(ctx, k), []))

    def exploit(self, ctx: Context, parents: list[ScoredIdea], n: int) -> list[Idea]:
        return self._run("exploit", n, lambda k, i: exploit_prompt(ctx, parents, k))

    def explore(self, ctx: Context, history: list[ScoredIdea], n: int) -> list[Idea]:
        # each call sees its own random sample of history, reproducible from the seed
        def build(k: int, i: int):
            return explore_prompt(ctx, history, k, random.Random(f"{ctx.seed}:{ctx.epoch}:explore:{i}")), []

        return self._run("explore", n, build)

    def _run(self, kind: str, n: int, build) -> list[Idea]:
        """ceil(n / batch_size) calls in parallel; an LLMError of any call propagates."""
        if n <= 0:
            return []
        sizes = [min(self.batch_size, n - i * self.batch_size) for i in range(math.ceil(n / self.batch_size))]
        prompts = [build(k, i) for i, k in enumerate(sizes)]
        with ThreadPoolExecutor(max_workers=min(self.parallel, len(sizes)), thread_name_prefix="ideate") as pool:
            futures = [pool.submit(self._call, kind, text) for text, _ in prompts]
            replies = [f.result() for f in futures]
        ideas: list[Idea] = []
        for i, (reply, k, (_, parents)) in enumerate(zip(replies, sizes, prompts)):
            for idea in parse_ideas(reply)[:k]:
                idea.kind = kind
                idea.parents = list(parents)
                idea.origin = {"ideator": self.name, "model": self.model, "prompt": kind, "call": i}
                ideas.append(idea)
        return ideas[:n]

    def _call(self, kind: str, prompt: str) -> str:
        c = complete(self.model, [{"role": "user", "content": prompt}], system=self.system, max_tokens=self.max_tokens,
                     temperature=self.temperature, thinking_budget=self.thinking_budget, recorder=self.recorder,
                     purpose=f"ideate:{kind}")
        return c.text
