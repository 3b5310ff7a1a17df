"""What a running command prints: one line per event, and in a terminal a live view below them.

`Tracker` turns the loop's `on_event(kind, info)` callbacks into counts (trials done, running,
queued; this epoch's ideas; spend) and an ETA. Every event becomes at most a line or two of
plain text, printed in a terminal and in a log alike; in a terminal a rich Live panel under
those lines shows the running and queued trials with their elapsed time, the epoch's progress,
spend and the ETA. Ideas are named by their ids and epochs are numbered from 0, as in
`ideaforge status`, `show` and the report.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator

from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ideaforge.cli.common import console, fmt_duration, say
from ideaforge.search.campaign import Campaign

EVAL_SHARE = 0.15  # first guess of evaluation + start-up time, as a share of the budget, before a trial finishes


def _metric(v) -> str:
    return "-" if v is None else f"{v:.4f}"


class Tracker:
    """Counts behind both views. Events arrive on the controller thread and on implementation
    threads; all state sits behind one lock and the live view reads only this object."""

    def __init__(self, campaign: Campaign, planned: int, slots: int, budget_s: float, epochs: int | None = None,
                 ideas: int | None = None):
        self.c, self.spec, self.store = campaign, campaign.spec, campaign.store
        self.slots, self.budget_s, self.epochs, self.ideas_per_epoch = max(1, slots), budget_s, epochs, ideas
        self.lock = threading.Lock()
        self.t0 = time.monotonic()
        counts = self._counts()
        self.done = counts.get("done", 0)
        self.failed_impl = sum(i["status"] == "implement_failed" for i in self.store.ideas())
        self.planned = max(planned - self.failed_impl, self.done + counts.get("running", 0) + counts.get("queued", 0))
        self.n_queued = counts.get("queued", 0)
        self.running: dict[int, tuple[str, float]] = {}  # trial id -> (label, monotonic start)
        self.queued: list[str] = []
        self.durations: list[float] = []  # controller-seen wall seconds of trials started here
        self.epoch: int | None = None
        self.epoch_ideas = 0
        self.epoch_implemented = 0
        self.spend_usd = self.store.llm_spend()
        self.cpu_h = self.store.trial_hours() * self.spec.cpus
        self._idea_of: dict[int, int] = {}  # implementation id -> idea id

    def _counts(self) -> dict[str, int]:
        """Trials per status."""
        return {st: len(self.store.trials(status=st)) for st in ("queued", "running", "done")}

    # -- labels ------------------------------------------------------------------------------
    def _idea(self, impl_id: int | None) -> int | None:
        if impl_id is None:
            return None
        if impl_id not in self._idea_of:
            self._idea_of = {i["id"]: i["idea_id"] for i in self.store.implementations()}
        return self._idea_of.get(impl_id)

    def label(self, trial_id: int) -> str:
        t = self.store.trial(trial_id)
        idea = self._idea(t["implementation_id"])
        who = t["role"] if idea is None else f"idea {idea}, {t['role']}"
        return f"trial {trial_id} ({who}, seed {t['seed']})"

    def _refresh(self) -> None:
        self.queued = [self.label(t["id"]) for t in self.store.trials(status="queued")[:8]]
        self.n_queued = self._counts().get("queued", 0)
        self.spend_usd = self.store.llm_spend()
        self.cpu_h = self.store.trial_hours() * self.spec.cpus

    # -- events -> lines -------------------------------------------------------------------------
    def handle(self, kind: str, info: dict) -> list[str]:
        """Update the counts for one event; return the lines to print for it."""
        with self.lock:
            if kind in ("started", "finished", "requeued", "attached", "implemented", "ideas"):
                self._refresh()  # the store already holds what this event reports
            return self._lines(kind, info)

    def _lines(self, kind: str, info: dict) -> list[str]:
        stamp = f"{time.monotonic() - self.t0:6.0f}s "
        if kind == "epoch":
            self.epoch, self.epoch_ideas, self.epoch_implemented = info["epoch"], 0, 0
            return [f"{stamp}== epoch {info['epoch']} (epochs 0..{info['epochs'] - 1}) =="]
        if kind == "ideas":
            self.epoch_ideas = info["count"]
            self.epoch_implemented = sum(i["status"] in ("implemented", "implement_failed")
                                         for i in self.store.ideas(info["epoch"]))  # after a resume, not 0
            if self.ideas_per_epoch is not None and info["count"] < self.ideas_per_epoch:
                self.planned -= self.ideas_per_epoch - info["count"]
            return [f"{stamp}  {info['count']} ideas for epoch {info['epoch']}"]
        if kind == "implemented":
            self.epoch_implemented += 1
            if not info["ok"]:
                self.failed_impl += 1
                self.planned -= 1
                first = (info.get("error") or "").strip().splitlines()
                return [f"{stamp}  idea {info['idea']}: implement_failed ({first[0][:90] if first else '?'}): "
                        f"{info['title'][:70]}"]
            return [f"{stamp}  idea {info['idea']}: implemented: {info['title'][:70]}"]
        if kind in ("started", "attached"):
            self.running[info["trial"]] = (self.label(info["trial"]), time.monotonic())
            return [f"{stamp}  {self.running[info['trial']][0]}: attached"] if kind == "attached" else []
        if kind == "requeued":
            self.running.pop(info["trial"], None)
            return [f"{stamp}  trial {info['trial']}: re-queued"]
        if kind == "finished":
            return self._finished(stamp, info)
        if kind == "epoch_done":
            return [f"{stamp}  epoch {info['epoch']} done | " + self.summary()]
        if kind == "confirm":
            ids = ", ".join(str(i) for i in info["ideas"]) or "none"
            return [f"{stamp}== confirming the top idea(s) ({ids}) with more seeds =="]
        if kind == "log":
            return [info["message"]]
        return []

    def _finished(self, stamp: str, info: dict) -> list[str]:
        label, started = self.running.pop(info["trial"], (None, None))
        label = label or self.label(info["trial"])
        if started is not None:  # a trial attached after a resume was seen for only part of its run
            ran = (info.get("train_s") or 0) + (info.get("eval_s") or 0)
            self.durations.append(max(time.monotonic() - started, ran))
        self.done += 1
        self.planned = max(self.planned, self.done)
        if info.get("outcome") == "evaluated":
            out = [f"{stamp}  {label}: {self.spec.metric} = {_metric(info.get('metric'))} "
                   f"(train {info.get('train_s') or 0:.1f} s, eval {info.get('eval_s') or 0:.1f} s)"]
        else:
            reason = (info.get("reason") or "").strip().splitlines()
            out = [f"{stamp}  {label}: {info.get('outcome')}: {reason[0] if reason else ''}"]
            out += [f"        {line}" for line in reason[1:][-8:]]
        return out + [f"{stamp}  [{self.summary()}]"]

    # -- counts ----------------------------------------------------------------------------------
    def trial_seconds(self) -> float:
        """Expected wall seconds of one trial (start-up, training, evaluation): the mean of those
        seen here, else the budget plus a margin, and never less than the oldest running one so far."""
        if self.durations:
            per = sum(self.durations) / len(self.durations)
        else:
            per = self.budget_s * (1 + EVAL_SHARE)
        now = time.monotonic()
        return max([per] + [now - t0 for _, t0 in self.running.values()])

    def eta_s(self) -> float:
        """Seconds until the planned trials are done, if every slot stays busy (ideation not counted)."""
        per = self.trial_seconds()
        now = time.monotonic()
        left_running = sum(max(0.0, per - (now - t0)) for _, t0 in self.running.values())
        waiting = max(0, self.planned - self.done - len(self.running))
        return (left_running + waiting * per) / self.slots

    def summary(self) -> str:
        return (f"{self.done}/{self.planned} trials done, {len(self.running)} running, "
                f"{self.n_queued} queued | ${self.spend_usd:.2f}, {self.cpu_h:.2f} CPU-h | "
                f"elapsed {fmt_duration(time.monotonic() - self.t0)}, ETA {fmt_duration(self.eta_s())}")

    # -- the live panel -----------------------------------------------------------------------------
    def render(self) -> Group:
        with self.lock:
            now = time.monotonic()
            head = Text(self.summary(), style="bold")
            rows = []
            if self.epoch is not None and self.epochs:
                n = self.epoch_ideas or self.ideas_per_epoch or 0
                rows.append(Text(f"epoch {self.epoch} (0..{self.epochs - 1}): {self.epoch_implemented}/{n} ideas "
                                 f"implemented, {self.failed_impl} failed in all"))
            per = self.trial_seconds()  # a trial's expected wall time: the bar's full length
            table = Table(box=None, pad_edge=False, show_header=True, header_style="dim")
            for col in ("running", "elapsed", "expected", ""):
                table.add_column(col)
            for label, t0 in sorted(self.running.values(), key=lambda r: r[1]):
                el = now - t0
                table.add_row(label, fmt_duration(el), fmt_duration(per),
                              ProgressBar(total=per, completed=min(el, per), width=30))
            queued = [Text("queued: " + ("; ".join(self.queued[:4]) + (" ..." if len(self.queued) > 4 else "")
                                         if self.queued else "none"), style="dim")]
            return Group(head, *rows, table, *queued)


@contextlib.contextmanager
def progress(campaign: Campaign, planned: int, slots: int, budget_s: float, epochs: int | None = None,
             ideas: int | None = None) -> Iterator[Tracker]:
    """A Tracker whose events print; in a terminal, with a live panel refreshed once a second."""
    tracker = Tracker(campaign, planned, slots, budget_s, epochs, ideas)
    live = Live(get_renderable=tracker.render, console=console, refresh_per_second=1, transient=True) \
        if console.is_terminal else None

    def on_event(kind: str, info: dict) -> None:
        for line in tracker.handle(kind, info):
            say(line)
    tracker.on_event = on_event  # type: ignore[attr-defined]
    if live is None:
        yield tracker
        return
    with live:
        yield tracker
