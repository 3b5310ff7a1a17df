"""The executor interface every backend implements, and the registry that builds them.

A backend is one module: a class satisfying `Executor` and one `register(name, factory)`
call. The controller (search/campaign.py's TrialRunner) only ever talks to this
protocol; it never asks which backend it has.

Contract, in the controller's words:
- `start(trial_id, trial_dir, gpus)` hands over a prepared trial directory (workspace +
  job.json); `record.json` written by the worker comes back as a `Finished` event.
- `wait(timeout)` sleeps until trials finished or `wake()` was called; nothing polls.
- `attach(trial_id, trial_dir)` re-adopts a trial an earlier (killed) controller started;
  False when its worker is gone, and the controller re-queues it.
- `lease(gpus)` holds a slot for work that is not a trial (a smoke run), so that nothing
  runs beside the trials beyond `slots`.
- `stop_all()` kills what runs (no records); `close()` lets idle workers go.

Ray and other heavy clients are imported only when their backend is built.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Protocol, Sequence, runtime_checkable

from ideaforge.errors import ConfigError, ExecutionError
from ideaforge.execute.events import Finished

# How long `start()` waits for a slot that a smoke lease took between can_start() and start():
# longer than any smoke lease (each ends at its smoke timeout); past it a slot is lost, a bug.
START_WAIT_S = 3600.0


@runtime_checkable
class Executor(Protocol):
    name: str
    slots: int        # trials (and leases) at once
    total_gpus: int   # GPUs this executor can lend in all

    def start(self, trial_id: int, trial_dir: Path, gpus: int = 0) -> int:
        """Launch a prepared trial; returns a local pid, or 0 when there is none (remote)."""

    def wait(self, timeout: float | None = None) -> list[Finished]:
        """Block until trials finished, `wake()` was called, or `timeout` seconds."""

    def wake(self) -> None:
        """Make a waiting `wait()` return: another stage has news."""

    def attach(self, trial_id: int, trial_dir: Path) -> bool:
        """Watch again a trial an earlier controller started. False: its worker is gone."""

    def running(self) -> int:
        """Trials running now (leases not included)."""

    def can_start(self, gpus: int = 0) -> bool:
        """Whether a trial needing `gpus` GPUs would start now."""

    def fits_ever(self, gpus: int) -> bool:
        """Whether a trial needing `gpus` GPUs could ever start here."""

    def lease(self, gpus: int = 0) -> ContextManager[list[str]]:
        """Hold a slot (and `gpus` GPU ids) for a non-trial run; blocks until one is free."""

    def stop_all(self, timeout: float = 10.0) -> None:
        """Kill every running trial's process tree; they write no record."""

    def close(self) -> None:
        """Let idle workers go. Running trials live on for a later `attach`."""

    def __enter__(self) -> "Executor": ...

    def __exit__(self, *exc) -> None: ...


class SlotPool:
    """The slots and GPUs an executor lends, shared by trials and leases (smoke runs).

    One mechanism for every backend: `acquire` takes a slot for a trial (waiting for one a
    lease took meanwhile), `lease` holds one for a non-trial run (waiting leases go before
    queued trials: `can_start` says no while one waits), `release` gives a trial's back.
    GPUs are counted, and lent by id when `gpu_ids` is given (None: the backend's scheduler
    assigns them, as Ray does for real GPUs; acquire then returns None).
    `on_release` runs after every release (the executor wakes its controller there).
    """

    def __init__(self, slots: int, total_gpus: int, gpu_ids: Sequence[str] | None = None,
                 on_release: Callable[[], None] = lambda: None):
        if slots < 1:
            raise ExecutionError(f"slots must be >= 1, got {slots}")
        self.slots, self.total_gpus = slots, total_gpus
        self._ids = None if gpu_ids is None else [str(g) for g in gpu_ids]
        self._used_gpus = 0
        self._trials = 0          # slots held by trials
        self._leased = 0          # slots held by non-trial runs (smoke checks)
        self.lease_waiting = 0    # leases waiting for a slot: trials do not jump ahead of them
        self._on_release = on_release
        self._cond = threading.Condition()

    def _free(self, gpus: int) -> bool:  # holding the lock
        return self._trials + self._leased < self.slots and self._used_gpus + gpus <= self.total_gpus

    def _take(self, gpus: int) -> list[str] | None:  # holding the lock
        self._used_gpus += gpus
        if self._ids is None:
            return None
        ids, self._ids = self._ids[:gpus], self._ids[gpus:]
        return ids

    def _give(self, ids: list[str] | None, gpus: int) -> None:  # holding the lock
        self._used_gpus -= gpus
        if self._ids is not None and ids:
            self._ids.extend(ids)
        self._cond.notify_all()

    def can_start(self, gpus: int = 0) -> bool:
        with self._cond:
            return not self.lease_waiting and self._free(gpus)

    def acquire(self, gpus: int = 0, timeout: float = START_WAIT_S, what: str = "a trial") -> list[str] | None:
        """A slot (and `gpus` GPU ids, returned) for a trial. A smoke lease may have taken the
        slot since `can_start()`; it ends within its own time limit, so wait for it as a lease would."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._free(gpus), timeout=timeout):
                raise ExecutionError(f"no free slot for {what}")
            self._trials += 1
            return self._take(gpus)

    def adopt(self, ids: Sequence[str], gpus: int) -> None:
        """Count a trial an earlier controller started (its GPU ids leave the free list)."""
        with self._cond:
            self._trials += 1
            self._used_gpus += gpus
            if self._ids is not None:
                self._ids = [g for g in self._ids if g not in ids]

    def release(self, ids: list[str] | None, gpus: int) -> None:
        """A trial's slot and GPUs come back."""
        with self._cond:
            self._trials -= 1
            self._give(ids, gpus)
        self._on_release()

    @contextmanager
    def lease(self, gpus: int = 0) -> Iterator[list[str]]:
        """Hold a slot (and `gpus` GPUs) for a run that is not a trial; blocks until one is free.

        Yields the leased GPU ids ([] when the backend assigns GPUs itself). Releasing it runs
        `on_release`, so the controller starts the next trial at once.
        """
        if gpus > self.total_gpus:
            raise ExecutionError(f"a lease of {gpus} GPU(s) can never be served: there are {self.total_gpus}")
        with self._cond:
            self.lease_waiting += 1
            try:
                self._cond.wait_for(lambda: self._free(gpus))
            finally:
                self.lease_waiting -= 1
            self._leased += 1
            ids = self._take(gpus)
        try:
            yield ids or []
        finally:
            with self._cond:
                self._leased -= 1
                self._give(ids, gpus)
            self._on_release()


# A factory builds a backend from the campaign's saved choice and the environment's needs.
#   slots:          trials at once (None: the backend's default for this machine/cluster)
#   gpus:           GPU ids to lend (None: all detected, when the environment needs GPUs)
#   address:        where the backend lives (Ray: "auto", "HOST:6379", "ray://HOST:10001")
#   cpus_per_trial, gpus_per_trial: the environment's [resources]
Factory = Callable[..., Executor]
_REGISTRY: dict[str, Factory] = {}


def register(name: str, factory: Factory) -> None:
    """Make a backend available to `make_executor(name, ...)` (and `--executor name`)."""
    _REGISTRY[name] = factory


def backends() -> list[str]:
    """Registered backends (those of other packages appear once built by name)."""
    return sorted(_REGISTRY)


def make_executor(name: str = "local", *, slots: int | None = None, gpus: Sequence[str] | None = None,
                  address: str | None = None, cpus_per_trial: int = 1, gpus_per_trial: int = 0) -> Executor:
    """Build the backend registered as `name`. Raises ConfigError for an unknown name or bad values."""
    factory = _REGISTRY.get(name) or _entry_point(name)
    if factory is None:
        raise ConfigError(f"unknown executor {name!r}; the executors are {', '.join(backends())}")
    if slots is not None and slots < 1:
        raise ConfigError(f"slots must be at least 1, got {slots}")
    return factory(slots=slots, gpus=None if gpus is None else [str(g) for g in gpus], address=address,
                   cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial)


def _entry_point(name: str) -> Factory | None:
    """A backend shipped by another package: `[project.entry-points."ideaforge.executors"] NAME = "mod:factory"`."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="ideaforge.executors"):
        if ep.name == name:
            register(name, ep.load())
            return _REGISTRY[name]
    return None


def detect_gpus() -> list[str]:
    """GPU ids from nvidia-smi (no CUDA import); empty on machines without one."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def _local(*, slots, gpus, address, cpus_per_trial, gpus_per_trial) -> Executor:
    from ideaforge.execute.local import LocalExecutor

    if address:
        raise ConfigError(f"the local executor takes no address (got {address!r}); did you mean --executor ray?")
    if gpus is None:
        gpus = detect_gpus() if gpus_per_trial else []
    if slots is None:  # as many trials as the machine holds
        slots = len(gpus) // gpus_per_trial if gpus_per_trial else (os.cpu_count() or 1) // max(1, cpus_per_trial)
    return LocalExecutor(slots=max(1, slots), gpus=gpus)


def _ray(*, slots, gpus, address, cpus_per_trial, gpus_per_trial) -> Executor:
    from ideaforge.execute.ray import RayExecutor  # imports ray: only when asked for

    if gpus:
        raise ConfigError("with the Ray executor, GPUs are the cluster's (Ray assigns them); drop --gpus")
    return RayExecutor(address, slots=slots, cpus_per_trial=cpus_per_trial)


register("local", _local)
register("ray", _ray)
