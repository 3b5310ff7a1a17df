"""What every executor backend hands the controller: finished trials, on one event queue."""

from __future__ import annotations

import queue
from dataclasses import dataclass

from ideaforge.execute.record import TrialRecord


@dataclass
class Finished:
    trial_id: int
    record: TrialRecord | None  # None: the worker died without a record (stopped, or crashed): re-queue
    gpus: list[str]


class Events:
    """Finished trials plus wake-ups; the controller sleeps here, never on a fixed timer."""

    def __init__(self) -> None:
        self._q: queue.Queue[Finished | None] = queue.Queue()

    def put(self, fin: Finished) -> None:
        self._q.put(fin)

    def wake(self) -> None:
        """Make a waiting `wait()` return (with nothing): another stage has news."""
        self._q.put(None)

    def wait(self, timeout: float | None = None) -> list[Finished]:
        """Block until a trial finished, `wake()` was called, or `timeout` seconds; return all finished."""
        got: list[Finished | None] = []
        try:
            got.append(self._q.get(timeout=timeout))
        except queue.Empty:
            return []
        while True:
            try:
                got.append(self._q.get_nowait())
            except queue.Empty:
                return [f for f in got if f is not None]
