"""The worker side of the Ray backend: a reusable actor that runs trials on its node.

The actor unpacks a trial into node-local scratch and calls `worker.run_trial` there,
so timeouts, process-tree kills and the record are the local executor's own.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

from ideaforge.execute.job import atomic_write_json
from ideaforge.execute.ray.packing import unpack

LOG_FILES = ("train.out", "train.err", "eval.out", "eval.err", "worker.json")
LOG_CAP = 1 << 20          # bytes of each log brought back (the tail: errors are at the end)
HEARTBEAT_S = 5.0          # the controller pings each of its actors this often
LEASE_S = 60.0             # an idle actor whose controller was silent this long exits by itself
RESULT_KEEP_S = 86400.0    # ... or this long, when it holds a result no controller has collected
CHECK_S = 1.0              # how often an actor looks at its controller (one /proc read)


def process_identity(pid: int | None = None) -> str:
    """`HOST/PID/START`: names one process for ever (a recycled pid has another start time)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}/{pid}/{_start_ticks(pid)}"


def owner_alive(owner: str) -> bool | None:
    """Whether the controller `owner` (a `process_identity`) still runs; None when it ran on
    another host (then only its silence tells)."""
    try:
        host, pid, start = owner.rsplit("/", 2)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    return _start_ticks(int(pid)) == start


def _start_ticks(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return "gone"
    return "gone" if fields[0] in "ZX" else fields[19]  # field 22 of stat: start time in clock ticks


class TrialActor:
    """A reusable worker on a Ray node, wrapped with `ray.remote` by the executor.

    It runs one trial at a time in a thread (so `stop()` is served while it trains) and
    keeps each result until the controller has written it down and calls `forget()`: a
    controller that crashed in between collects it with `result()`. Reuse matters: a new
    Ray worker process costs ~0.5 s of CPU (measured on 2 cores).

    It belongs to one controller (`owner`, a `process_identity`), which pings it every
    HEARTBEAT_S; a controller that re-attaches a trial adopts the actor with `ping(owner)`.
    An idle actor whose controller is gone exits by itself: at once when that controller
    ran on this host and its process is dead, else after LEASE_S without a ping. An actor
    running a trial never exits on its own (a resumed controller re-attaches to it); one
    holding an uncollected result waits RESULT_KEEP_S for it. A resumed controller kills
    the dead controller's actors it does not re-attach (`RayExecutor`'s reclaim).
    """

    def __init__(self, owner: str = ""):
        self.trials: dict[str, dict] = {}  # key -> {"done": Event, "result": dict | None, "stopping": bool}
        self.owner = owner
        self.last_active = self.last_ping = time.monotonic()
        threading.Thread(target=self._exit_when_idle, daemon=True).start()

    def ping(self, owner: str | None = None) -> None:
        """The controller is alive; with `owner`, a new controller adopts this actor."""
        if owner:
            self.owner = owner
        self.last_ping = time.monotonic()

    def status(self) -> dict:
        """Who owns this actor, how long it has been silent, and the trials it runs or holds."""
        return {"owner": self.owner, "silent_s": time.monotonic() - self.last_ping,
                "running": [k for k, st in list(self.trials.items()) if not st["done"].is_set()],
                "held": [k for k, st in list(self.trials.items()) if st["done"].is_set()]}

    def run(self, key: str, order: dict, workspace: bytes, hidden: bytes) -> dict:
        """Run one trial to its end and return its result (also kept until `forget(key)`)."""
        state: dict = {"done": threading.Event(), "result": None, "stopping": False}
        state["thread"] = threading.Thread(target=self._run, args=(state, order, workspace, hidden), daemon=True)
        self.trials[key] = state
        state["thread"].start()
        return self.result(key)

    def result(self, key: str) -> dict | None:
        state = self.trials.get(key)
        if state is None:
            return None
        state["done"].wait()
        return state["result"]

    def knows(self, key: str) -> bool:
        return key in self.trials

    def forget(self, key: str) -> None:
        self.trials.pop(key, None)
        self.last_active = time.monotonic()

    def stop(self) -> None:
        """Kill the running trial's process tree (again, until run_trial gives up); no result counts."""
        from ideaforge.execute import worker

        for state in list(self.trials.values()):
            state["stopping"] = True
            while state["thread"].is_alive():
                worker.kill_current_trial()
                state["thread"].join(0.05)

    def _run(self, state: dict, order: dict, workspace: bytes, hidden: bytes) -> None:
        import ray  # on the worker, ray is already loaded
        from ideaforge.execute import worker

        # Custom-resource "GPUs" (tests) carry ids leased by the controller; real GPUs are
        # the ones Ray assigned to this actor (it has set CUDA_VISIBLE_DEVICES to them).
        gpus = [str(g) for g in (order["gpus"] if order["gpus"] is not None else ray.get_gpu_ids())]
        root = Path(order["scratch"]) / order["name"]
        tdir = root / "trial"
        record: dict
        try:
            _kill_leftovers(root)  # an earlier attempt on this node, orphaned by a worker crash
            shutil.rmtree(root, ignore_errors=True)
            unpack(workspace, tdir / "work")
            job = dict(order["job"], hidden_src=str(_hidden_cache(Path(order["scratch"]), hidden)))
            atomic_write_json(tdir / "job.json", job, durable=False)
            missing = _missing_data(job)
            if missing:
                record = {"trial_id": job["trial_id"], "outcome": "failed", "exit_code": None, "reason":
                          f"data path {missing} does not exist on Ray node {socket.gethostname()}: the Ray "
                          f"backend ships workspaces, not data; data must be on a shared filesystem mounted "
                          f"at the same path on every node", "ended_at": time.time()}
            elif state["stopping"]:
                record = {"outcome": "failed", "reason": "stopped before it started", "ended_at": time.time()}
            else:
                record = worker.run_trial(tdir, gpus)
        except Exception as e:  # the edge of a trial on the worker: report it, never hang the controller
            import traceback

            record = {"outcome": "failed", "reason": f"ideaforge Ray worker error: {e!r}\n"
                      + traceback.format_exc(limit=5), "ended_at": time.time()}
        record["node"] = socket.gethostname()
        if order.get("retried"):
            record["retried"] = order["retried"]
        files = {name: _read_tail(tdir / name, LOG_CAP) for name in LOG_FILES if (tdir / name).exists()}
        if not order.get("keep_scratch"):
            shutil.rmtree(root, ignore_errors=True)
        # A trial stopped by the controller left a record of its killing: not a result.
        state["result"] = {"record": record, "files": files, "gpus": gpus, "stopped": state["stopping"]}
        self.last_active = time.monotonic()
        state["done"].set()

    def _exit_when_idle(self) -> None:
        while True:
            time.sleep(CHECK_S)  # a watchdog's period, not a wait for a condition
            states = list(self.trials.values())
            if any(not st["done"].is_set() for st in states):
                continue  # a running trial: a resumed controller will re-attach to it
            silent = time.monotonic() - max(self.last_ping, self.last_active)
            if states:  # a result nobody collected yet waits longer: its controller may be resumed
                if silent > RESULT_KEEP_S:
                    os._exit(0)
            elif owner_alive(self.owner) is False or silent > LEASE_S:
                os._exit(0)


def _hidden_cache(scratch: Path, blob: bytes) -> Path:
    """Unpack the hidden files once per node and content hash; run_trial checks each file's sha256."""
    dest = scratch / f"hidden-{hashlib.sha256(blob).hexdigest()[:16]}"
    if not dest.is_dir():
        tmp = scratch / f".hidden-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(tmp, ignore_errors=True)
        unpack(blob, tmp)
        try:
            os.rename(tmp, dest)
        except OSError:  # another trial on this node got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _missing_data(job: dict) -> str | None:
    paths = list(job.get("data", {}).values()) + ([job["prepared"]] if job.get("prepared") else [])
    return next((p for p in paths if not os.path.exists(p)), None)


def _kill_leftovers(root: Path) -> None:
    """SIGKILL every process working under `root` (found by its cwd)."""
    if not root.exists():
        return
    prefix = str(root) + os.sep
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if (os.readlink(f"/proc/{entry}/cwd") + os.sep).startswith(prefix):
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def _read_tail(path: Path, cap: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - cap))
        data = f.read()
    return (f"[... first {size - cap} bytes not kept ...]\n".encode() + data) if size > cap else data
