"""The local backend: a pool of slots on this machine, one detached worker per trial.

A slot runs one trial at a time; GPUs are leased by id so none is over-subscribed.
Each running worker has one waiter thread that blocks on the process (or, after a
controller restart, on a pidfd) and posts the finished record to one event queue:
the controller sleeps on that queue, never on a fixed timer.
"""

from __future__ import annotations

import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ideaforge.errors import ExecutionError

WORKER_MODULE = "ideaforge.execute.worker"


@dataclass
class Finished:
    trial_id: int
    record: dict | None  # None: the worker died without a record (stopped, or crashed): re-queue
    gpus: list[str]


class LocalExecutor:
    name = "local"

    def __init__(self, slots: int = 1, gpus: Sequence[str | int] = ()):
        if slots < 1:
            raise ExecutionError(f"slots must be >= 1, got {slots}")
        self.slots = slots
        self._free_gpus = [str(g) for g in gpus]
        self.total_gpus = len(self._free_gpus)
        self._events: queue.Queue[Finished] = queue.Queue()
        self._running: dict[int, tuple[int, list[str]]] = {}  # trial id -> (worker pid, gpu ids)
        self._lock = threading.Lock()

    # -- capacity ------------------------------------------------------------------
    def running(self) -> int:
        return len(self._running)

    def fits_ever(self, gpus: int) -> bool:
        return gpus <= self.total_gpus

    def can_start(self, gpus: int = 0) -> bool:
        with self._lock:
            return len(self._running) < self.slots and len(self._free_gpus) >= gpus

    # -- launching -----------------------------------------------------------------
    def start(self, trial_id: int, trial_dir: Path, gpus: int = 0) -> int:
        """Launch a detached worker for a prepared trial directory; returns its pid."""
        with self._lock:
            if len(self._running) >= self.slots or len(self._free_gpus) < gpus:
                raise ExecutionError(f"no free slot for trial {trial_id}")
            lease, self._free_gpus = self._free_gpus[:gpus], self._free_gpus[gpus:]
        argv = [sys.executable, "-m", WORKER_MODULE, str(trial_dir)] + (["--gpus", ",".join(lease)] if lease else [])
        with open(trial_dir / "worker.log", "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                    cwd=trial_dir)
        with self._lock:
            self._running[trial_id] = (proc.pid, lease)
        threading.Thread(target=self._wait_child, args=(trial_id, trial_dir, proc), daemon=True).start()
        return proc.pid

    def attach(self, trial_id: int, trial_dir: Path, pid: int) -> bool:
        """Re-attach to a worker started by an earlier controller. False when it is gone."""
        gpus = _worker_gpus(trial_dir)
        try:
            fd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            return False
        with self._lock:
            self._free_gpus = [g for g in self._free_gpus if g not in gpus]
            self._running[trial_id] = (pid, gpus)
        threading.Thread(target=self._wait_pidfd, args=(trial_id, trial_dir, fd), daemon=True).start()
        return True

    def _wait_child(self, trial_id: int, trial_dir: Path, proc: subprocess.Popen) -> None:
        proc.wait()
        self._finish(trial_id, trial_dir)

    def _wait_pidfd(self, trial_id: int, trial_dir: Path, fd: int) -> None:
        try:
            select.select([fd], [], [])
        finally:
            os.close(fd)
        self._finish(trial_id, trial_dir)

    def _finish(self, trial_id: int, trial_dir: Path) -> None:
        try:
            record = json.loads((trial_dir / "record.json").read_text())
        except (OSError, ValueError):
            record = None
        with self._lock:
            _, lease = self._running.pop(trial_id, (0, []))
            self._free_gpus.extend(lease)
        self._events.put(Finished(trial_id, record, lease))

    # -- events --------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> list[Finished]:
        """Block until at least one trial finished (or `timeout` seconds); return all finished."""
        out: list[Finished] = []
        try:
            out.append(self._events.get(timeout=timeout))
        except queue.Empty:
            return out
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    def stop_all(self, timeout: float = 10.0) -> None:
        """Stop every running worker; each kills its trial's process tree and writes no record."""
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


def find_worker(trial_dir: Path) -> int | None:
    """The pid of a live worker process for this trial directory, if any (by its command line)."""
    needle = f"{WORKER_MODULE}\0{trial_dir}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if needle in cmd:
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        continue  # a zombie has finished
            except OSError:
                continue
            return int(entry)
    return None


def _worker_gpus(trial_dir: Path) -> list[str]:
    try:
        return list(json.loads((trial_dir / "worker.json").read_text()).get("gpus", []))
    except (OSError, ValueError):
        return []
