"""RL from execution reward as resumable stages in the campaign store.

One step, each stage recorded before the next starts (rl_steps.status):

  generating  G rollouts sampled from the ideator for the step's prompt; each is stored
              with its model call (llm_calls, purpose "rl_rollout") as soon as its batch
              is sampled, so a resumed run samples only the missing ones;
  executing   each rollout -> the first idea the ideation parser finds -> an
              implementation (offline realisation, or the implementer model) -> a trial,
              run by the campaign's TrialRunner; then rewards and advantages;
  updating    one policy-gradient step; the adapter (and optimizer state) saved under
              DIR/rl/adapters/step-NNNN; then the step is `done`.

A killed run resumes in the stage it was in: rollouts are never sampled twice, ideas
never implemented twice once recorded, and trials are collected, re-attached or
re-queued by the TrialRunner, never run twice. The policy for step s is the adapter
saved by step s-1 (the base model with a fresh adapter for step 0).
"""

from __future__ import annotations

import random
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from statistics import fmean, stdev
from typing import Callable

from ideaforge.envs.workspace import read_files
from ideaforge.ideate.parse import parse_ideas
from ideaforge.ideate.types import Idea
from ideaforge.implement.implementer import Implementation, Implementer
from ideaforge.llm.client import CallRecord
from ideaforge.rl import records as R
from ideaforge.rl.config import RLConfig
from ideaforge.rl.rewards import Novelty, advantages, max_similarity, trial_reward
from ideaforge.rl.space import ActionSpace
from ideaforge.search.campaign import Campaign, TrialRunner

Emit = Callable[[str, dict], None]
ROLLOUT_PURPOSE = "rl_rollout"


class RLRun:
    def __init__(self, campaign: Campaign, executor, cfg: RLConfig, ideator: str, *,
                 on_event: Emit | None = None, smoke=None, policy_loader=None):
        self.c = campaign
        self.store = campaign.store
        self.spec = campaign.spec
        self.executor = executor
        self.cfg = cfg.check()
        self.ideator = ideator
        self.emit = on_event or (lambda kind, info: None)
        self.runner = TrialRunner(campaign, executor, self.emit)
        self.budget_s = cfg.budget_s or self.spec.budget_s
        files = read_files(self.spec, self.store.env_dir)
        self.space = ActionSpace(self.spec, files)
        self.implementer = Implementer(self.spec, files, cfg.implementer, recorder=self.store.add_llm_call, smoke=smoke)
        self._load = policy_loader or _default_loader(cfg)
        self._policy = None
        self._policy_step = -1  # the policy in memory is the one after this step's update
        self._novelty = Novelty(cfg.novelty) if cfg.novelty_weight else None

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> str:
        self.runner.recover()
        if not self.store.trials(role="baseline") and self.cfg.baseline_seeds:
            with self.store.tx():
                for s in range(self.cfg.baseline_seeds):
                    self.store.add_trial("baseline", seed=s, budget_s=self.budget_s)
        for step in range(self.cfg.steps):
            row = R.step_row(self.store, step) or R.open_step(self.store, step, self.prompt_for(step))
            if row["status"] == "done":
                continue
            self.emit("rl_step", {"step": step, "steps": self.cfg.steps, "stage": row["status"]})
            if row["status"] == "generating":
                self.generate(step, row["prompt"])
                R.set_stage(self.store, step, "executing")
                row["status"] = "executing"
            if row["status"] == "executing":
                self.execute(step)
                self.score(step)
                R.set_stage(self.store, step, "updating")
            self.update(step, row["prompt"])
        self.store.set_meta("rl_finished", True)
        return "finished"

    def prompt_for(self, step: int) -> str:
        """The fixed prompt, plus (dynamic_prompt > 0) past rollouts with their rewards."""
        style = self.cfg.prompt_style
        if style == "auto":
            style = "codebase" if self.cfg.implementer else "settings"
        prompt = self.space.prompt(style)
        past = [r for r in R.rollouts(self.store) if r["step"] < step and r["idea_id"] is not None]
        if self.cfg.dynamic_prompt and past:
            rng = random.Random(f"{self.cfg.seed}:{step}:dynamic")
            shown = rng.sample(past, min(self.cfg.dynamic_prompt, len(past)))
            titles = {i["id"]: i["title"] for i in self.store.ideas()}
            lines = [f"- {titles.get(r['idea_id'], '?')}: reward {r['reward']:.4g}" for r in shown if r["reward"] is not None]
            prompt += "\n\nIdeas tried before and their rewards:\n" + "\n".join(lines)
        return prompt

    # -- stage 1: generation --------------------------------------------------------------------
    def policy_for(self, step: int):
        """The policy that samples step `step` (and is updated by it): the adapter of step-1."""
        if self._policy is not None and self.cfg.frozen:
            return self._policy
        if self._policy is None or self._policy_step != step - 1:
            prev = R.step_row(self.store, step - 1) if step > 0 else None
            adapter = prev["adapter"] if prev else None
            self._policy = self._load(self.ideator, adapter)
            self._policy_step = step - 1
        return self._policy

    def generate(self, step: int, prompt: str) -> None:
        have = len(R.rollouts(self.store, step))
        cfg = self.cfg
        while have < cfg.group:
            n = min(cfg.gen_batch, cfg.group - have)
            policy = self.policy_for(step)
            t0 = time.monotonic()
            seed = cfg.seed * 1_000_003 + step * 1000 + have
            if cfg.use_vllm:
                prev = R.step_row(self.store, step - 1) if step > 0 and not cfg.frozen else None
                outs = self._vllm_sampler(policy).sample(
                    policy.encode_prompt(prompt, cfg.response_prefix), n, max_new_tokens=cfg.max_new_tokens,
                    temperature=cfg.temperature, seed=seed, adapter=prev["adapter"] if prev else None,
                    prefix=cfg.response_prefix)
            else:
                outs = policy.sample(prompt, n, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                     seed=seed, prefix=cfg.response_prefix)
            per = (time.monotonic() - t0) / max(1, n)
            n_in = len(policy.encode_prompt(prompt, cfg.response_prefix))
            with self.store.tx():  # a batch's calls and rollouts together: none or all survive a kill
                for k, o in enumerate(outs):
                    call = self.store.add_llm_call(CallRecord(
                        model=f"local:{self.ideator}", purpose=ROLLOUT_PURPOSE, system=None,
                        messages=[{"role": "user", "content": prompt}], reply=o.text, input_tokens=n_in,
                        output_tokens=len(o.token_ids), latency_s=round(per, 3), attempts=1))
                    R.add_rollout(self.store, step, have + k, call, o.text, o.token_ids, o.thinking_tokens)
            have += n
            self.emit("rl_generated", {"step": step, "rollouts": have, "group": cfg.group})

    def _vllm_sampler(self, policy):
        if getattr(self, "_vllm", None) is None:
            from ideaforge.rl.policy import VLLMSampler
            self._vllm = VLLMSampler(policy.base, self.cfg.lora_r)
        return self._vllm

    # -- stage 2: execution ---------------------------------------------------------------------
    def execute(self, step: int) -> None:
        todo = [r for r in R.rollouts(self.store, step) if r["status"] == "generated"]
        futures: list[Future] = []
        pool = ThreadPoolExecutor(max(1, self.cfg.implement_workers))
        try:
            for r in todo:
                futures.append(pool.submit(self._implement_one, step, r))
            self._pump(futures)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        for f in futures:
            f.result()  # surface a bug in an implementation thread

    def _pump(self, futures: list[Future]) -> None:
        """Start what fits; sleep on the executor's event queue until trials and implementations are done."""
        while True:
            self.runner.start_queued()
            queued, running = self.runner.pending()
            if not queued and not running and all(f.done() for f in futures):
                return
            for fin in self.executor.wait():
                self.runner.handle(fin)

    def _implement_one(self, step: int, r: dict) -> None:
        try:
            ideas = parse_ideas(r["text"])
            if not ideas:
                R.set_rollout(self.store, r["id"], status="no_idea")
                return
            idea = ideas[0]  # a rollout is one idea, as in the reference
            idea_id = r["idea_id"] or self._record_idea(step, r, idea)
            try:
                result, realised = self._implement(idea)
            except Exception as e:  # one idea's failure must not end the run
                result, realised = Implementation(False, error=f"internal error while implementing: {e!r}\n"
                                                               f"{traceback.format_exc(limit=4)}"), []
            with self.store.tx():  # implementation, trial and the rollout's links together
                impl = self.store.add_implementation(idea_id, result.ok, result.diff, result.files,
                                                     result.attempts_json(), result.error)
                self.store.set_idea_status(idea_id, "implemented" if result.ok else "implement_failed")
                trial = self.store.add_trial("candidate", seed=0, budget_s=self.budget_s,
                                             implementation_id=impl) if result.ok else None
                R.set_rollout(self.store, r["id"], implementation_id=impl, trial_id=trial,
                              status="queued" if result.ok else "implement_failed")
            self.emit("implemented", {"idea": idea_id, "title": idea.title, "ok": result.ok, "error": result.error,
                                      "realised": realised})
        finally:
            self.executor.wake()

    def _record_idea(self, step: int, r: dict, idea: Idea) -> int:
        origin = {"ideator": self.ideator, "prompt": "rl", "rollout": r["id"], "llm_call": r["llm_call_id"]}
        if idea.hyperparameters:
            origin["hyperparameters"] = idea.hyperparameters
        with self.store.tx():
            idea_id = self.store.add_idea(step, "rl", idea.title, idea.description, idea.code_changes, [], origin)
            R.set_rollout(self.store, r["id"], idea_id=idea_id)
        return idea_id

    def _implement(self, idea: Idea) -> tuple[Implementation, list[str]]:
        if self.cfg.implementer:
            return self.implementer.implement(idea.text()), []
        got = self.space.realise(idea)
        if got.edit is None:
            return Implementation(False, error=f"offline: {got.error}"), got.names
        return self.implementer.apply_given(got.edit), got.names

    # -- rewards ----------------------------------------------------------------------------------
    def baseline(self) -> tuple[float, float] | None:
        vals = [t["metric"] for t in self.store.trials(role="baseline") if t["outcome"] == "evaluated"]
        if len(vals) < 2:
            return None
        return fmean(vals), stdev(vals)

    def score(self, step: int) -> None:
        cfg = self.cfg
        rows = R.rollouts(self.store, step)
        texts = self._idea_texts()
        prev = [t for s, t in texts.values() if s == step - 1]
        archive = [t for s, t in texts.values() if s < step]
        base = self.baseline()
        rewards, shaped = [], []
        for r in rows:
            trial = self.store.trial(r["trial_id"]) if r["trial_id"] else None
            rew = trial_reward(cfg.reward, self.spec.goal, trial, cfg.failure_reward, base)
            bonus = min(cfg.length_cap, cfg.length_weight * r["n_tokens"] / cfg.max_new_tokens) if cfg.length_weight else 0.0
            text = texts.get(r["idea_id"], (None, ""))[1]
            if text and cfg.diversity_weight:
                bonus -= cfg.diversity_weight * max_similarity(text, prev)
            if text and self._novelty is not None:
                bonus += cfg.novelty_weight * (1.0 - self._novelty.max_similarity(text, archive))
            rewards.append(rew)
            shaped.append(rew + bonus)
        adv = advantages(shaped, cfg.advantage, k=cfg.k, quantile=cfg.quantile)
        with self.store.tx():
            for r, rew, sh, a in zip(rows, rewards, shaped, adv):
                status = r["status"] if r["status"] in ("no_idea", "implement_failed") else "scored"
                R.set_rollout(self.store, r["id"], reward=rew, shaped=sh, advantage=a, status=status)
        self.emit("rl_scored", {"step": step, "mean": fmean(rewards), "max": max(rewards)})

    def _idea_texts(self) -> dict[int, tuple[int, str]]:
        """idea id -> (step, title + description) for every idea of the run."""
        return {i["id"]: (i["epoch"], f"{i['title']} {i['description']}") for i in self.store.ideas() if i["kind"] == "rl"}

    def _analysis(self, step: int) -> dict:
        """The step's figures, kept with it (rewards, rates, lengths, diversity; see rl.analysis)."""
        return {k: v for k, v in _analysis_row(self.store, step).items() if k not in ("step", "status", "loss")}

    # -- stage 3: the update ------------------------------------------------------------------------
    def update(self, step: int, prompt: str) -> None:
        if self.cfg.frozen:  # the control arm: the base ideator samples every step
            R.set_stage(self.store, step, "done", stats={"frozen": True, "analysis": self._analysis(step)})
            self.emit("rl_updated", {"step": step, "frozen": True})
            return
        policy = self.policy_for(step)
        rows = R.rollouts(self.store, step)
        t0 = time.monotonic()
        stats = policy.update(policy.encode_prompt(prompt, self.cfg.response_prefix), [r["token_ids"] for r in rows],
                              [r["advantage"] or 0.0 for r in rows], self.cfg.aggregation, self.cfg.micro_batch)
        dest = self.store.root / "rl" / "adapters" / f"step-{step:04d}"
        policy.save(dest, sampling={"temperature": self.cfg.temperature, "response_prefix": self.cfg.response_prefix,
                                    "max_new_tokens": self.cfg.max_new_tokens})
        stats["update_s"] = round(time.monotonic() - t0, 3)
        stats["analysis"] = self._analysis(step)
        R.set_stage(self.store, step, "done", stats=stats, adapter=str(dest))
        self._policy_step = step
        self.emit("rl_updated", {"step": step, **stats})


def _analysis_row(store, step: int) -> dict:
    from ideaforge.rl.analysis import step_metrics
    return next((m for m in step_metrics(store, only=step) if m["step"] == step), {})


def _default_loader(cfg: RLConfig):
    def load(ideator: str, adapter: str | None):
        from ideaforge.rl.policy import Policy
        return Policy.load(ideator, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lr=cfg.lr, seed=cfg.seed,
                           adapter=Path(adapter) if adapter else None)
    return load


def run_rl(env: str | None, ideator: str | None, steps: int | None = None, group: int = 8, implementer: str | None = None,
           reward: str = "auto", dir: str | Path | None = None, resume: bool = False, *, executor: str | None = None,
           slots: int | None = None, ray_address: str | None = None, on_event: Emit | None = None,
           smoke=None, policy_loader=None, **options) -> Path:
    """Run (or, with resume=True, continue) an RL campaign in `dir`; returns the campaign directory.

    `options` are further RLConfig fields (budget_s, advantage, novelty_weight, ...). On resume
    the campaign's recorded settings are used; `steps` (default: 4 for a new run, the
    recorded number on resume) may raise the number of steps."""
    from ideaforge.envs.spec import load_env
    from ideaforge.errors import ConfigError
    if dir is None:
        raise ConfigError("an RL run needs --dir (or --resume DIR)")
    if resume:
        campaign = Campaign.open(dir)
        meta = campaign.config()
        if meta.get("command") != "rl":
            raise ConfigError(f"{dir} holds a `{meta.get('command', 'run')}` campaign, not an RL run")
        cfg = RLConfig.from_dict(meta["rl"])
        cfg.steps = max(cfg.steps, steps or 0)
        ideator = meta["ideator"]
    else:
        if env is None or ideator is None:
            raise ConfigError("a new RL run needs ENV and --ideator")
        if policy_loader is None:
            from ideaforge.rl.policy import resolve_ideator
            resolve_ideator(ideator)  # a bad --ideator fails here, before a campaign directory exists
        cfg = RLConfig(steps=steps or 4, group=group, implementer=implementer, reward=reward, **options).check()
        if cfg.use_vllm:  # before a campaign directory exists (the vLLM path has never run: docs/rl.md)
            import importlib.util
            if importlib.util.find_spec("vllm") is None:
                raise ConfigError("--vllm needs vLLM (pip install vllm, on a GPU machine); without it, drop --vllm "
                                  "and HF generate samples")
        spec = load_env(env)
        campaign = Campaign.create(dir, spec, {"command": "rl", "rl": cfg.to_dict(), "ideator": ideator})
    if not resume and executor in (None, "local") and slots is None:
        slots = 1  # a new local RL run: one trial at a time unless told
    # The campaign's saved choice (backend, slots, address) with what is given on top, saved for resume.
    ex = campaign.make_executor(executor, slots=slots, address=ray_address)
    try:
        RLRun(campaign, ex, cfg, ideator, on_event=on_event, smoke=smoke, policy_loader=policy_loader).run()
    finally:
        ex.close()
    return campaign.root
