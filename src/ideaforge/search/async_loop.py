"""`--mode evolve-async`: Algorithm 1 without epoch barriers.

Evolve ideates once per epoch and then waits for the epoch's slowest trial, so slots
idle while an epoch's tail runs. Here the ideator is asked whenever a slot would go
free: a batch of as many ideas as there are free slots, where

    free = slots + ahead - (queued + running trials) - (ideas being implemented) - (ideas being asked for)

conditioned on every result so far (the same prompts as evolve: exploit builds on the
ideas that beat the baseline, explore sees a sample of the history), with the exploit
share annealed by the number of finished candidate ideas (`SearchConfig.exploit_share`)
instead of by the epoch. The budget is evolve's: epochs x ideas ideas asked in all.
Ideation runs on its own thread and implementation (smoke runs included) on the
implementer pool, so trials keep running meanwhile; the controller sleeps only on the
executor's event queue, which trial ends, finished implementations and ideation answers
all wake.

Generations: a batch's ideas carry in `ideas.epoch` its generation = ideas asked before it
// ideas per epoch (0..epochs-1; a batch is cut at a generation's end, so each asks exactly
`ideas`), so the per-epoch views of `status` and the report, and the
contemporaneous-baseline statistics (stats.py), read a generation as an epoch. When a
generation starts, its baseline re-runs are queued, tagged with it, as evolve does at each
epoch's start; meta `epochs_done` counts the leading generations whose ideas have all finished.

Resume: each batch is stored with its ideas in one transaction (table `batches`, one row
per kind), so a batch the ideator answered is never asked for again; ideas not yet
implemented are implemented; trials are collected, re-attached or re-queued by the
TrialRunner, as in evolve.
"""

from __future__ import annotations

import random
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ideaforge.errors import StoreError
from ideaforge.ideate import Context, Idea, ScoredIdea

if TYPE_CHECKING:
    from ideaforge.search.loop import Search

SEED_STRIDE = 1_000_003  # ideator seeds: search seed x stride + batch, distinct for any batch count below it


@dataclass(frozen=True)
class Ask:
    """One batch, decided on the controller thread and answered on the ideation thread."""
    batch: int
    generation: int
    finished: int              # candidate ideas with a result (trial done or implementation failed)
    share: float               # the annealed exploit share at `finished`
    counts: dict[str, int]     # kind -> ideas asked (kinds with > 0 only)
    ctx: Context
    parents: list[ScoredIdea]  # for exploit
    sample: list[ScoredIdea]   # for explore


class AsyncPhase:
    """The search phase of evolve-async, on a `Search` (its store, runner, ideator and implementer)."""

    def __init__(self, search: "Search"):
        self.s = search
        self.cfg = search.cfg
        self.store = search.store
        self.total = self.cfg.epochs * self.cfg.ideas  # ideas asked in all: evolve's budget
        self.epochs_done = int(self.store.get_meta("epochs_done", 0))

    def run(self) -> str | None:
        """Until every idea of the budget is asked for and has finished. Returns why it stopped early, or None."""
        s = self.s
        batches = self.store.batches()
        if batches:  # a crash may have come between a generation's first batch and its baselines
            self._baselines(batches[-1]["generation"])
        pool = ThreadPoolExecutor(max(1, self.cfg.implement_workers))
        asker = ThreadPoolExecutor(1, thread_name_prefix="ideate")
        futures: list[Future] = [pool.submit(s._implement_one, i) for i in self._unimplemented()]
        asking: tuple[Ask, Future] | None = None
        why = None
        try:
            while True:
                if asking is not None and asking[1].done():
                    ask, answer = asking
                    asking = None
                    futures += [pool.submit(s._implement_one, i) for i in self._store(ask, answer.result())]
                if why := s.exhausted():
                    break
                s.runner.start_queued()
                if asking is None and (ask := self._next()) is not None:
                    asking = (ask, asker.submit(self._answer, ask))
                self._progress()
                queued, running = s.runner.pending()
                if not (queued or running or asking or any(not f.done() for f in futures)) \
                        and self._asked() >= self.total:
                    break  # why is None: the search phase is done
                for fin in s.executor.wait():
                    s.runner.handle(fin)
                s._save_elapsed()  # so `ideaforge status` shows the wall time of a running campaign
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # cancelled ones stay `new`: a resume implements them
            asker.shutdown(wait=True)
            if asking is not None and asking[1].exception() is None:
                try:  # answered: stored, so never asked again (best effort on the way out of an error)
                    self._store(asking[0], asking[1].result())
                except StoreError:
                    pass
        for f in futures:
            if not f.cancelled():
                f.result()  # surface a bug in an implementation thread
        return why

    # -- what to ask ---------------------------------------------------------------------------
    def _asked(self) -> int:
        return sum(r["asked"] for r in self.store.batches())

    def _unimplemented(self) -> list[dict]:
        return [i for i in self.store.ideas() if i["status"] in ("new", "implementing")]

    def _next(self) -> Ask | None:
        """The batch to ask for now, or None: the budget is asked for, or no slot would go free."""
        cfg, s = self.cfg, self.s
        rows = self.store.batches()
        asked = sum(r["asked"] for r in rows)
        left = self.total - asked
        if left <= 0:
            return None
        queued, running = s.runner.pending()
        implementing = sum(i["status"] in ("new", "implementing") for i in self.store.idea_heads())
        free = s.executor.slots + cfg.ahead - queued - running - implementing
        if free <= 0:
            return None
        k = min(free, left, cfg.ideas - asked % cfg.ideas)  # a batch never spans two generations: each asks `ideas`
        batch = rows[-1]["batch"] + 1 if rows else 0
        generation = asked // cfg.ideas
        history = s.scored()
        ctx = s.context(generation, seed=cfg.seed * SEED_STRIDE + batch)
        if not history:  # nothing has finished: ideas from the baseline alone, as evolve's epoch 0
            return Ask(batch, generation, 0, 0.0, {"initial": k}, ctx, [], [])
        share = cfg.exploit_share(len(history))
        # Error diffusion over the batches: the exploit ideas asked so far track the annealed share.
        fed = sum(r["asked"] for r in rows if r["kind"] in ("exploit", "explore"))
        exploited = sum(r["asked"] for r in rows if r["kind"] == "exploit")
        parents = s.parents(history)
        n_exploit = max(0, min(k, round(share * (fed + k)) - exploited)) if parents else 0
        rng = random.Random(ctx.seed)
        sample = rng.sample(history, min(len(history), cfg.explore_sample))
        counts = {kind: n for kind, n in (("exploit", n_exploit), ("explore", k - n_exploit)) if n}
        return Ask(batch, generation, len(history), share, counts, ctx, parents, sample)

    def _answer(self, ask: Ask) -> dict[str, list[Idea]]:
        """On the ideation thread: the ideator's answers, by kind (both prompts at once, as evolve)."""
        ideator = self.s.ideator
        try:
            calls = {"initial": lambda n: ideator.initial(ask.ctx, n),
                     "exploit": lambda n: ideator.exploit(ask.ctx, ask.parents, n),
                     "explore": lambda n: ideator.explore(ask.ctx, ask.sample, n)}
            with ThreadPoolExecutor(len(ask.counts)) as pool:
                futures = {kind: pool.submit(calls[kind], n) for kind, n in ask.counts.items()}
                return {kind: f.result() for kind, f in futures.items()}
        finally:
            self.s.executor.wake()  # the controller sleeps on the executor's queue

    # -- recording -------------------------------------------------------------------------------
    def _store(self, ask: Ask, answers: dict[str, list[Idea]]) -> list[dict]:
        """The batch and its ideas, in one transaction; then its generation's baselines. Returns its ideas."""
        s, name = self.s, getattr(self.s.ideator, "name", "?")
        ids: list[int] = []
        with self.store.tx():
            for kind, n in ask.counts.items():
                got = answers[kind]
                kept = s.keep_new(got)
                ids += s.add_ideas(ask.generation, kind, kept, origin={"batch": ask.batch})
                self.store.add_batch(ask.batch, kind, ask.generation, ask.finished, ask.share, n, len(got),
                                     len(kept), name)
                s.indexed(kept)  # the next kind of this batch is de-duplicated against these too
        if ask.batch == 0 or ask.generation > self._generation_before(ask.batch):
            s.emit("epoch", {"epoch": ask.generation, "epochs": self.cfg.epochs})
        self._baselines(ask.generation)
        what = ", ".join(f"{n} {kind}" for kind, n in ask.counts.items())
        s.emit("log", {"message": f"  batch {ask.batch} (generation {ask.generation}, after {ask.finished} "
                                  f"finished, exploit share {ask.share:.2f}): asked {what}; "
                                  f"ideas {', '.join(map(str, ids)) or 'none kept'}"})
        return [i for i in self.store.ideas(ask.generation) if i["id"] in set(ids)]

    def _generation_before(self, batch: int) -> int:
        return max((r["generation"] for r in self.store.batches() if r["batch"] < batch), default=-1)

    def _baselines(self, generation: int) -> None:
        if generation > 0:  # generation 0 runs beside the start's baseline seeds
            self.s.queue_baselines(generation, self.cfg.baseline_every_epoch)

    def _progress(self) -> None:
        """Meta `epochs_done`: the leading generations fully asked for whose ideas have all finished."""
        asked = self._asked()
        done_impl = {t["implementation_id"] for t in self.store.trial_outcomes()
                     if t["role"] == "candidate" and t["status"] == "done"}
        impl_of = {r["idea_id"]: r["id"] for r in self.store.implementation_heads()}
        open_gens = {i["epoch"] for i in self.store.idea_heads()
                     if i["status"] != "implement_failed" and impl_of.get(i["id"]) not in done_impl}
        done = self.epochs_done
        while done < self.cfg.epochs and done not in open_gens \
                and (asked >= (done + 1) * self.cfg.ideas or asked >= self.total):
            done += 1
        for g in range(self.epochs_done, done):
            self.store.set_meta("epochs_done", g + 1)
            self.s.emit("epoch_done", {"epoch": g})
        self.epochs_done = done
