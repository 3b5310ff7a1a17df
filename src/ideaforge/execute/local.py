"""The local backend: a pool of slots on this machine, served by detached workers.

A slot runs one trial at a time; GPUs are leased by id so none is over-subscribed.
Workers live in their own sessions and are reused from trial to trial. Each running
trial has one waiter thread that blocks on its worker's "done" line (or, after a
controller restart, on the worker's pidfd) and posts the record to one event queue:
the controller sleeps on that queue, never on a fixed timer.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ContextManager, Sequence

from ideaforge.execute.base import SlotPool
from ideaforge.execute.events import Events, Finished
from ideaforge.execute.record import TrialRecord

WORKER_MODULE = "ideaforge.execute.worker"
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # the directory holding ideaforge/


class LocalExecutor:
    name = "local"

    def __init__(self, slots: int = 1, gpus: Sequence[str | int] = ()):
        self._events = Events()
        self._pool = SlotPool(slots, len(gpus), [str(g) for g in gpus], on_release=self._events.wake)
        self.slots, self.total_gpus = slots, len(gpus)
        self._running: dict[int, tuple[int, list[str]]] = {}  # trial id -> (worker pid, gpu ids)
        self._lock = threading.Lock()
        # Idle workers, kept between trials: a trial's start is a pipe write, not an
        # interpreter start (which, 8 at a time on 2 cores, cost ~100 ms per trial).
        self._idle: list[subprocess.Popen] = []

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- capacity (the slot mechanism is base.SlotPool, shared with the Ray backend) ------
    def running(self) -> int:
        return len(self._running)

    def fits_ever(self, gpus: int) -> bool:
        return gpus <= self.total_gpus

    def can_start(self, gpus: int = 0) -> bool:
        return self._pool.can_start(gpus)

    @property
    def _lease_waiting(self) -> int:
        return self._pool.lease_waiting

    def lease(self, gpus: int = 0) -> ContextManager[list[str]]:
        """Hold a slot (and `gpus` GPU ids, yielded) for a run that is not a trial, e.g. a smoke run.

        Blocks until one is free; waiting leases go before queued trials. Releasing it
        wakes `wait()`, so the controller starts the next trial at once.
        """
        return self._pool.lease(gpus)

    # -- launching -----------------------------------------------------------------
    def start(self, trial_id: int, trial_dir: Path, gpus: int = 0) -> int:
        """Hand a prepared trial directory to a detached worker; returns the worker's pid."""
        lease = self._pool.acquire(gpus, what=f"trial {trial_id}") or []
        with self._lock:
            proc = self._idle.pop() if self._idle else None
        order = (json.dumps({"dir": str(trial_dir), "gpus": lease}) + "\n").encode()
        try:
            proc = proc or _spawn_worker()
            proc.stdin.write(order)
            proc.stdin.flush()
        except BrokenPipeError:  # an idle worker died (killed from outside): start a fresh one
            proc = _spawn_worker()
            proc.stdin.write(order)
            proc.stdin.flush()
        with self._lock:
            self._running[trial_id] = (proc.pid, lease)
        threading.Thread(target=self._wait_worker, args=(trial_id, trial_dir, proc), daemon=True).start()
        return proc.pid

    def attach(self, trial_id: int, trial_dir: Path) -> bool:
        """Re-attach to the worker an earlier controller started for this trial. False when it is gone.

        The worker is found by its pid file and cwd (`find_worker`). Its stdin is the dead
        controller's pipe: after this trial it reads EOF and exits, which is what we wait for.
        """
        with self._lock:
            if trial_id in self._running:  # already watched: one waiter, one slot, one event per trial
                return True
        pid = find_worker(trial_dir)
        if pid is None:
            return False
        gpus = _worker_gpus(trial_dir)
        try:
            fd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            return False
        self._pool.adopt(gpus, len(gpus))
        with self._lock:
            self._running[trial_id] = (pid, gpus)
        threading.Thread(target=self._wait_pidfd, args=(trial_id, trial_dir, fd), daemon=True).start()
        return True

    def _wait_worker(self, trial_id: int, trial_dir: Path, proc: subprocess.Popen) -> None:
        line = proc.stdout.readline()  # the worker says "done" after writing record.json
        alive = bool(line) and proc.poll() is None
        self._finish(trial_id, trial_dir, proc if alive else None)
        if not alive:
            proc.wait()

    def _wait_pidfd(self, trial_id: int, trial_dir: Path, fd: int) -> None:
        try:
            select.select([fd], [], [])
        finally:
            os.close(fd)
        self._finish(trial_id, trial_dir, None)

    def _finish(self, trial_id: int, trial_dir: Path, reusable: subprocess.Popen | None) -> None:
        record = TrialRecord.read(trial_dir)
        with self._lock:
            entry = self._running.get(trial_id)
            if entry is None:  # already reported (a second waiter on one trial): report it once
                return
            _, lease = entry
            if reusable is not None:
                self._idle.append(reusable)
        # The event goes first: `running()` counts the trial until the controller can see why it
        # ended. Then the slot comes back, and its release wakes the controller to fill it.
        self._events.put(Finished(trial_id, record, lease))
        with self._lock:
            self._running.pop(trial_id, None)
        self._pool.release(lease, len(lease))  # a waiting lease may take the slot

    # -- events --------------------------------------------------------------------
    def wake(self) -> None:
        """Make a waiting `wait()` return (with nothing): another stage has news."""
        self._events.wake()

    def wait(self, timeout: float | None = None) -> list[Finished]:
        """Block until a trial finished, `wake()` was called, or `timeout` seconds; return all finished."""
        return self._events.wait(timeout)

    def close(self) -> None:
        """Let the idle workers go (they exit on EOF)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for proc in idle:
            proc.stdin.close()
        for proc in idle:
            proc.wait()

    def stop_all(self, timeout: float = 10.0) -> None:
        """Stop every running worker; each kills its trial's process tree and writes no record."""
        self.close()
        with self._lock:
            pids = [pid for pid, _ in self._running.values()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while self._running and time.monotonic() < deadline:
            time.sleep(0.05)  # waiter threads drain _running as workers exit


def _spawn_worker() -> subprocess.Popen:
    # -S skips site-packages processing (a third of a worker's start-up); the package is
    # found through PYTHONPATH instead. Output goes to the trial's own files, not here.
    env = dict(os.environ, PYTHONPATH=_PACKAGE_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-S", "-m", WORKER_MODULE], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, env=env)


def find_worker(trial_dir: Path) -> int | None:
    """The pid of a live worker running this trial, if any.

    The worker wrote its pid to worker.json and works in the trial directory; both must
    agree (a recycled pid belongs to another process with another cwd).
    """
    try:
        pid = int(json.loads((trial_dir / "worker.json").read_text())["pid"])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if WORKER_MODULE.encode() not in f.read():
                return None
        if os.readlink(f"/proc/{pid}/cwd") != str(trial_dir):
            return None
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return None  # a zombie has finished
    except (OSError, ValueError, KeyError):
        return None
    return pid


def _worker_gpus(trial_dir: Path) -> list[str]:
    try:
        return list(json.loads((trial_dir / "worker.json").read_text()).get("gpus", []))
    except (OSError, ValueError):
        return []
