"""The campaign loop: Algorithm 1 of the reference (exploit/explore with an annealed
ratio), or best-of-N as the control, as one resumable pipeline. `--mode evolve-async`
replaces the epochs below with search/async_loop.py (ideas asked as slots free); the
start's baselines, the confirmation, budgets and resume are shared.

Stages per epoch: ideate -> implement (threads) -> trials (executor slots). Ideas
are stored the moment they arrive, implementations the moment they pass or fail,
and each finished implementation queues its trial at once, so ideas are implemented
while others train. The loop sleeps only on the executor's event queue, which trial
completions and finished implementations both wake.

Resume works from the database alone: an epoch that has its ideas is never ideated
again; an idea that has an implementation is never implemented again; trials are
collected, re-attached or re-queued by the TrialRunner.
"""

from __future__ import annotations

import random
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

from ideaforge.envs.workspace import read_files
from ideaforge.errors import ConfigError, DiskFull, StoreError
from ideaforge.ideate import Context, Idea, ScoredIdea
from ideaforge.ideate.catalogue import machine_features
from ideaforge.ideate.dedup import DedupIndex
from ideaforge.implement.implementer import Implementation, Implementer
from ideaforge.search.assemble import make_implementer, record_implementation
from ideaforge.search.campaign import Campaign, Progress, TrialRunner
from ideaforge.stats import EPOCHS_META, Stats, leaderboard, trial_epochs


@dataclass
class SearchConfig:
    mode: str = "evolve"           # evolve | best-of-n | evolve-async (ideas asked as slots free: search/async_loop.py)
    epochs: int = 4
    ideas: int = 8                 # ideas per epoch
    budget_s: float | None = None  # training seconds per trial; None = the environment's
    baseline_seeds: int = 3        # seeds of the baseline measured at the start: the noise floor
    baseline_every_epoch: int = 1  # baseline trials re-run in each later epoch (and per confirm seed at the end),
                                   # so candidates are judged against a baseline measured under the same load
    confirm_top: int = 3           # best ideas re-run at the end ...
    confirm_seeds: int = 3         # ... until each has this many seeds
    model: str | None = None       # None: offline ideators, ideas carry their own edits
    implementer: str | None = None # "agent:..." a coding agent (implement/agent.py); PROVIDER:NAME a model; None: `model`
    samples: int = 3               # implementer: edits sampled in parallel per idea
    repairs: int = 2               # implementer: repairs per sample
    smoke: bool = True             # smoke-check model implementations before a trial
    implement_workers: int = 4     # ideas implemented at once
    explore_sample: int = 20       # history entries shown to an explore prompt
    seed: int = 0
    max_wall_s: float | None = None
    max_usd: float | None = None
    max_cpu_hours: float | None = None
    max_gpu_hours: float | None = None
    ahead: int = 0                 # evolve-async: ideas kept in implementation beyond the free slots (a model
                                   # implementer takes minutes; offline ideas carry their edit, so 0 loses nothing)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown search mode {self.mode!r} (the modes are {', '.join(MODES)})")
        if self.ahead < 0:
            raise ConfigError(f"ahead must be >= 0, got {self.ahead}")
        if self.ahead and self.mode != "evolve-async":
            raise ConfigError(f"ahead ({self.ahead}) applies to --mode evolve-async only, not {self.mode}: "
                              "the epoch modes implement a whole epoch's ideas at once")

    def exploit_count(self, epoch: int) -> int:
        ratio = min(0.5 + 0.1 * (epoch // 2), 0.8)  # the reference's annealing, 50% -> 80%
        return round(self.ideas * ratio)

    def exploit_share(self, finished: int) -> float:
        """evolve-async's annealing by finished ideas (trial done or implementation failed): the line
        through the corners of the reference's steps (0.6 after 2 epochs' worth, 0.7 after 4, 0.8 from 6 on)."""
        return min(0.5 + 0.05 * finished / max(1, self.ideas), 0.8)


MODES = ("evolve", "best-of-n", "evolve-async")


class Search:
    def __init__(self, campaign: Campaign, executor, ideator, config: SearchConfig,
                 on_event: Progress | None = None, smoke=None):
        self.c = campaign
        self.store = campaign.store
        self.spec = campaign.spec
        self.executor = executor
        self.ideator = ideator
        self.cfg = config
        self.emit = on_event or (lambda kind, info: None)
        self.runner = TrialRunner(campaign, executor, self.emit)
        self.budget_s = config.budget_s or self.spec.budget_s
        self.baseline_files = read_files(self.spec, self.store.env_dir)
        self.implementer: Implementer = make_implementer(
            self.spec, self.store.env_dir, config.implementer, config.model, samples=config.samples,
            repairs=config.repairs, smoke=self._leased(smoke) if config.smoke else None, recorder=self.store.add_llm_call)
        self._t0 = time.monotonic()
        self._elapsed_before = float(self.store.get_meta("elapsed_s", 0.0))
        self._dedup: DedupIndex | None = None  # the campaign's ideas, indexed for de-duplication

    def _leased(self, smoke):
        """The smoke check, run only in a slot of the executor: smoke runs and trials together
        never exceed --slots (a crowd of smoke runs would also skew the trials' timings)."""
        if smoke is None:
            return None

        def check(changes):
            with self.executor.lease(self.spec.gpus):
                return smoke(changes)
        return check

    # -- the whole campaign ------------------------------------------------------------------
    def run(self) -> str:
        """Run (or resume) to the end. Returns why it stopped: finished | budget: ...

        On a full disk it stops the running trials (re-queued for the resume) and raises DiskFull."""
        try:
            return self._run()
        except DiskFull:
            try:  # best effort: with no room left, even the re-queue may not be written; resume recovers
                self.runner.stop()
                self._save_elapsed()
            except StoreError:
                pass
            raise

    def _run(self) -> str:
        self.runner.recover()
        self.record_machine()
        if not self.store.trials(role="baseline"):
            with self.store.tx():
                for s in range(self.cfg.baseline_seeds):
                    self.store.add_trial("baseline", seed=s, budget_s=self.budget_s)
        if self.cfg.mode == "evolve-async":
            from ideaforge.search.async_loop import AsyncPhase  # it builds on this module

            why = AsyncPhase(self).run()
        else:
            why = self.epochs()
        if why:
            return self._stop(why)
        if why := self.exhausted():
            return self._stop(why)
        self.confirm()
        self.store.set_meta("finished", True)
        self._save_elapsed()
        return "finished"

    def epochs(self) -> str | None:
        """The search phase of evolve and best-of-N: epoch after epoch. Returns why it stopped early, or None."""
        start = int(self.store.get_meta("epochs_done", 0))
        for epoch in range(start, self.cfg.epochs):
            if why := self.exhausted():
                return why
            self.emit("epoch", {"epoch": epoch, "epochs": self.cfg.epochs})
            if epoch > 0:  # epoch 0 runs beside the start's baseline seeds
                self.queue_baselines(epoch, self.cfg.baseline_every_epoch)
            ideas = self.ideas_for(epoch)
            self.implement_and_run(ideas)
            self.store.set_meta("epochs_done", epoch + 1)
            self.emit("epoch_done", {"epoch": epoch})
            self._save_elapsed()
        return None

    def _stop(self, why: str) -> str:
        self.drain()  # what is already running finishes; nothing new starts
        self.store.set_meta("stopped", why)
        self._save_elapsed()
        return f"budget: {why}"

    def _save_elapsed(self) -> None:
        self.store.set_meta("elapsed_s", self.elapsed())

    def elapsed(self) -> float:
        return self._elapsed_before + time.monotonic() - self._t0

    def exhausted(self) -> str | None:
        cfg = self.cfg
        if cfg.max_wall_s is not None and self.elapsed() >= cfg.max_wall_s:
            return f"wall time {self.elapsed():.0f} s reached the limit of {cfg.max_wall_s:.0f} s"
        if cfg.max_usd is not None and self.store.llm_spend() >= cfg.max_usd:
            return f"model spend ${self.store.llm_spend():.2f} reached the limit of ${cfg.max_usd:.2f}"
        hours = self.store.trial_hours()
        cpu_h, gpu_h = hours * self.spec.cpus, hours * self.spec.gpus
        if cfg.max_cpu_hours is not None and cpu_h >= cfg.max_cpu_hours:
            return f"trial compute {cpu_h:.2f} CPU-hours reached the limit of {cfg.max_cpu_hours:.2f}"
        if cfg.max_gpu_hours is not None and gpu_h >= cfg.max_gpu_hours:
            return f"trial compute {gpu_h:.2f} GPU-hours reached the limit of {cfg.max_gpu_hours:.2f}"
        return None

    def record_machine(self) -> None:
        """The hardware next to the baseline (meta `machine`, once), and the catalogue ideas skipped
        because it lacks what they need (meta `catalogue_skipped`), each said once in the log."""
        if self.store.get_meta("machine") is None:
            self.store.set_meta("machine", machine_features())
        skipped = [{"id": cid, "title": title, "lacks": lacks}
                   for cid, title, lacks in getattr(self.ideator, "skipped", [])]
        for s in skipped:
            self.emit("log", {"message": f"  catalogue idea {s['id']} ({s['title']}) skipped: this machine lacks "
                                         f"{', '.join(s['lacks'])}"})
        self.store.set_meta("catalogue_skipped", skipped)

    def queue_baselines(self, epoch: int, n: int) -> None:
        """Queue `n` baseline trials (fresh seeds) to run beside this epoch's candidates, once per epoch
        even across a resume; their epoch is kept in the meta key stats.EPOCHS_META."""
        recorded = trial_epochs(self.store)
        baselines = self.store.trials(role="baseline")
        if n <= 0 or any(recorded.get(t["id"]) == epoch for t in baselines):
            return
        seed = max((t["seed"] for t in baselines), default=-1) + 1
        with self.store.tx():
            for s in range(seed, seed + n):
                recorded[self.store.add_trial("baseline", seed=s, budget_s=self.budget_s)] = epoch
            self.store.set_meta(EPOCHS_META, recorded)

    # -- ideation ---------------------------------------------------------------------------
    def scored(self) -> list[ScoredIdea]:
        _, rows = leaderboard(self.store, self.spec.goal)
        by_id = {r["idea_id"]: r for r in rows}
        out = []
        for idea in self.store.ideas():
            r = by_id.get(idea["id"])
            st: Stats | None = r["stats"] if r else None
            outcome = r["outcome"] if r else ("implement_failed" if idea["status"] == "implement_failed" else "pending")
            if outcome == "pending":
                continue
            out.append(ScoredIdea(
                id=idea["id"], title=idea["title"], description=idea["description"], code_changes=idea["code_changes"],
                outcome=outcome, metric=st.mean if st else None, std=st.std if st else None, n=st.n if st else 0,
                beats_baseline=bool(r and r["beats"]), edit=idea["origin"].get("edit"), parents=idea["parents"]))
        return out

    def context(self, epoch: int, seed: int | None = None) -> Context:
        base, _ = leaderboard(self.store, self.spec.goal)
        proposed = [i["title"] for i in self.store.ideas()]
        return Context(spec=self.spec, files=self.baseline_files, baseline_mean=base.mean if base else None,
                       baseline_std=base.std if base else None, proposed=proposed, epoch=epoch,
                       seed=self.cfg.seed * 1000 + epoch if seed is None else seed)

    def parents(self, history: list[ScoredIdea]) -> list[ScoredIdea]:
        """What exploit ideas build on: the ideas that beat the baseline, else the best three measured."""
        winners = [s for s in history if s.beats_baseline]
        return winners or sorted((s for s in history if s.metric is not None),
                                 key=lambda s: s.metric if self.spec.goal == "min" else -s.metric)[:3]

    def ideas_for(self, epoch: int) -> list[dict]:
        """This epoch's ideas: each kind of ideation is asked once; a resume reuses what was recorded."""
        done = self.store.ideations(epoch)  # recorded with the ideas, in one transaction
        if self.cfg.mode == "best-of-n" or epoch == 0:
            kind = "best_of_n" if self.cfg.mode == "best-of-n" else "initial"
            if kind not in done:
                ctx = self.context(epoch)
                self._store_ideas(epoch, kind, self.ideator.initial(ctx, self.cfg.ideas), ctx, self.cfg.ideas)
        else:
            n_exploit = 0 if "exploit" in done else self.cfg.exploit_count(epoch)
            n_explore = 0 if "explore" in done else self.cfg.ideas - self.cfg.exploit_count(epoch)
            if n_exploit or n_explore:
                ctx = self.context(epoch)
                history = self.scored()
                parents = self.parents(history)
                rng = random.Random(ctx.seed)
                sample = rng.sample(history, min(len(history), self.cfg.explore_sample))
                with ThreadPoolExecutor(2) as pool:  # both prompts at once
                    f_exploit = pool.submit(self.ideator.exploit, ctx, parents, n_exploit) if n_exploit else None
                    f_explore = pool.submit(self.ideator.explore, ctx, sample, n_explore) if n_explore else None
                    got_exploit = f_exploit.result() if f_exploit else None
                    got_explore = f_explore.result() if f_explore else None
                if got_exploit is not None:
                    self._store_ideas(epoch, "exploit", got_exploit, ctx, n_exploit)
                if got_explore is not None:
                    self._store_ideas(epoch, "explore", got_explore, ctx, n_explore)
        ideas = self.store.ideas(epoch)
        self.emit("ideas", {"epoch": epoch, "count": len(ideas)})
        return ideas

    def _store_ideas(self, epoch: int, kind: str, ideas: list[Idea], ctx: Context, asked: int) -> None:
        kept = self.keep_new(ideas)
        with self.store.tx():
            self.add_ideas(epoch, kind, kept)
            self.store.add_ideation(epoch, kind, asked, len(ideas), len(kept), getattr(self.ideator, "name", "?"))
        self.indexed(kept)

    def keep_new(self, ideas: list[Idea]) -> list[Idea]:
        """`ideas` less near-duplicates of the campaign's ideas and of each other."""
        if self._dedup is None:  # built once per controller, then kept up to date: never a campaign rescan
            self._dedup = DedupIndex(f"{i['title']} {i['description']}" for i in self.store.ideas())
        kept = self._dedup.keep(ideas, add=False)
        if len(kept) < len(ideas):
            self.emit("log", {"message": f"  dropped {len(ideas) - len(kept)} near-duplicate idea(s)"})
        return kept

    def add_ideas(self, epoch: int, kind: str, kept: list[Idea], origin: dict | None = None) -> list[int]:
        """Insert ideas (inside the caller's transaction, with the record of the call that gave them)."""
        ids = []
        for idea in kept:
            o = dict(idea.origin, ideator=getattr(self.ideator, "name", "?"), **(origin or {}))
            if idea.edit:
                o["edit"] = idea.edit
            if idea.hyperparameters:
                o["hyperparameters"] = idea.hyperparameters
            ids.append(self.store.add_idea(epoch, kind, idea.title, idea.description, idea.code_changes,
                                           idea.parents, o))
        return ids

    def indexed(self, kept: list[Idea]) -> None:
        """Once stored: index them as the database holds them, as a resumed controller will index them."""
        assert self._dedup is not None
        for idea in kept:
            self._dedup.add(f"{idea.title} {idea.description}")

    # -- implementation and trials, pipelined --------------------------------------------------
    def implement_and_run(self, ideas: list[dict]) -> None:
        todo = [i for i in ideas if i["status"] in ("new", "implementing")]
        futures: list[Future] = []
        pool = ThreadPoolExecutor(max(1, self.cfg.implement_workers))
        try:
            for idea in todo:
                futures.append(pool.submit(self._implement_one, idea))
            self._pump(futures)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        for f in futures:
            f.result()  # surface a bug in an implementation thread

    def _implement_one(self, idea: dict) -> None:
        try:
            self.store.set_idea_status(idea["id"], "implementing")
            edit = idea["origin"].get("edit")
            try:
                result = self.implementer.apply_given(edit) if edit else self.implementer.implement(_idea_text(idea))
            except Exception as e:  # the per-idea edge: one idea's failure must not end the campaign
                result = Implementation(False, error=f"internal error while implementing: {e!r}\n"
                                                     f"{traceback.format_exc(limit=4)}")
            self._record(idea, result)
        finally:
            self.executor.wake()  # the pump sleeps on the executor's queue

    def _record(self, idea: dict, result: Implementation) -> None:
        record_implementation(self.store, idea["id"], result, self.budget_s)  # one transaction
        self.emit("implemented", {"idea": idea["id"], "title": idea["title"], "ok": result.ok,
                                  "error": result.error, "attempts": len(result.attempts)})

    def _pump(self, futures: list[Future]) -> None:
        """Start what fits; sleep on the event queue until trials and implementations are all done."""
        while True:
            self.runner.start_queued()
            queued, running = self.runner.pending()
            busy = [f for f in futures if not f.done()]
            if not queued and not running and not busy:
                return
            for fin in self.executor.wait():
                self.runner.handle(fin)
            self._save_elapsed()  # so `ideaforge status` shows the wall time of a running campaign

    def drain(self) -> None:
        self._pump([])

    # -- confirmation ------------------------------------------------------------------------------
    def confirm(self) -> None:
        """Re-run the best ideas with more seeds, so the leaderboard shows mean ± std.

        The set is picked once and saved with its trials: a resume confirms the same ideas,
        not a new top picked from a leaderboard that already holds some confirm seeds.
        """
        impl_of = {}
        for impl in self.store.implementations():
            if impl["status"] == "ok":
                impl_of[impl["idea_id"]] = impl["id"]
        chosen = self.store.confirm_set()  # chosen once: the leaderboard moves as confirm seeds land
        if chosen is None:  # a campaign from before the set was stored: its confirm trials name it
            chosen = sorted({t["implementation_id"] for t in self.store.trials(role="confirm")}) or None
        if chosen is None:
            _, rows = leaderboard(self.store, self.spec.goal)
            chosen = [impl_of[r["idea_id"]] for r in rows if r["stats"] is not None][: self.cfg.confirm_top]
        idea_of = {impl_id: idea_id for idea_id, impl_id in impl_of.items()}
        epoch = self.cfg.epochs  # the confirmation runs as one more epoch: its baseline trials are its own
        with self.store.tx():
            self.store.set_confirm_set(chosen)
            recorded = trial_epochs(self.store)
            for impl_id in chosen:
                have = self.store.count_trials(impl_id)
                for seed in range(have, self.cfg.confirm_seeds):
                    tid = self.store.add_trial("confirm", seed=seed, budget_s=self.budget_s, implementation_id=impl_id)
                    recorded[tid] = epoch
            self.store.set_meta(EPOCHS_META, recorded)
        if chosen and self.cfg.baseline_every_epoch > 0:  # the corrected test needs >= 2 baseline seeds beside them
            self.queue_baselines(epoch, max(2, self.cfg.confirm_seeds))
        self.emit("confirm", {"ideas": [idea_of.get(i) for i in chosen]})
        self.drain()


def _idea_text(idea: dict) -> str:
    text = f"{idea['title']}\n\n{idea['description']}"
    if idea["code_changes"]:
        text += f"\n\nCode changes:\n{idea['code_changes']}"
    hp = idea["origin"].get("hyperparameters")
    if hp:
        text += "\n\nHyperparameters:\n" + "\n".join(f"- {k} = {v}" for k, v in hp.items())
    return text


def config_dict(cfg: SearchConfig) -> dict:
    return asdict(cfg)
