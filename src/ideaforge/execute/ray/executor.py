"""The Ray backend's controller side: trials run in detached Ray actors anywhere on a cluster.

Same contract as `LocalExecutor` (slots, GPU accounting, start/wait/wake/stop_all,
`Finished` events), so `TrialRunner` drives either. What differs is where a trial runs:

- **Shipping.** The controller packs the trial's `work/` into a deterministic tar.gz,
  names it by sha256 and `ray.put`s it once (trials with the same workspace share one
  object); the hidden files go as a second object, also content-addressed. Data is
  *not* shipped: the workspace's data links and `job.data` are absolute paths that must
  exist on the worker node too (a shared filesystem, or the same path on every node).
- **Running.** The actor unpacks into node-local scratch, rewrites `hidden_src` to the
  unpacked hidden files, and calls `worker.run_trial` there: timeouts, process-tree
  kills, credential stripping, pristine-hidden-file checks and the record are the local
  executor's own. It returns the record plus the logs (each capped at `LOG_CAP` bytes),
  which the controller writes into the campaign's trial directory.
- **Workers.** A trial runs in a detached, named actor (`ideaforge-worker-<id>`, namespace
  "ideaforge") holding the trial's CPUs, GPUs and memory. Actors are reused from trial to
  trial of the same shape: a fresh Ray worker process costs ~0.5 s of CPU.
- **Crashes.** A detached actor outlives a controller killed with SIGKILL and keeps its
  result until collected; `ray.json` in the trial directory names it, and a new
  controller finds it with `attach()`. A worker process or node that dies fails the
  trial's call: the controller re-runs it once on a fresh actor (wherever Ray places it)
  and marks the record `"retried": 1`; a second loss ends the trial as `failed`.

Ray is imported only when an executor is built: importing ideaforge never imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager

from ideaforge.errors import ExecutionError
from ideaforge.execute.base import SlotPool
from ideaforge.execute.events import Events, Finished
from ideaforge.execute.job import atomic_write_json
from ideaforge.execute.ray.actor import HEARTBEAT_S, LEASE_S, TrialActor, owner_alive, process_identity
from ideaforge.execute.ray.packing import campaign_key, pack_tree, trial_key
from ideaforge.execute.record import TrialRecord

NAMESPACE = "ideaforge"
BLOB_CACHE = 256           # content-addressed objects the controller keeps referenced
WAIT_S = 0.1               # ray.wait's bound, seconds: how soon a newly started trial is watched
DEFAULT_SCRATCH = "/tmp/ideaforge-ray"  # node-local unpack directory on every worker node
ACTOR_PREFIX = "ideaforge-worker-"  # + random hex + "@" + the creating controller's process_identity
IDLE_KEEP_S = 60.0         # an idle worker actor is reused within this many seconds, else killed


@dataclass
class _Run:
    actor: Any
    actor_name: str
    ref: Any                      # resolves to the actor's result
    trial_dir: Path
    key: str
    gpus: int
    lease: list[str] = field(default_factory=list)
    shape: tuple | None = None    # the actor's resources; None: adopted after a restart, not reused
    launch: tuple | None = None   # (order, workspace ref, hidden ref), for the one retry
    info: dict = field(default_factory=dict)  # what ray.json records besides the actor's name


class RayExecutor:
    """Trials on a Ray cluster; the controller keeps its own count of slots and GPUs.

    address:        None starts a local cluster (or uses the one this process is connected
                    to); "auto", "HOST:6379" or "ray://HOST:10001" connect to an existing one.
    slots:          trials at once (default: the cluster's CPUs // cpus_per_trial).
    cpus_per_trial: CPUs each trial asks Ray for (None: the job's `cpus`).
    gpu_resource:   the Ray resource counted as GPUs; tests use a custom one ("fake_gpu"),
                    whose ids the controller leases itself (meaningful on one node only).
    scratch:        node-local directory trials are unpacked into on every worker node.
    """

    name = "ray"

    def __init__(self, address: str | None = None, slots: int | None = None, *, cpus_per_trial: int | None = None,
                 gpu_resource: str = "GPU", scratch: str = DEFAULT_SCRATCH, keep_scratch: bool = False,
                 init_kwargs: dict | None = None):
        import ray

        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            kw: dict[str, Any] = {"namespace": NAMESPACE}
            if not (address or "").startswith("ray://"):  # Ray Client forwards only what its server accepts
                kw["log_to_driver"] = False  # trial output goes to the trial's own files
            if address is None:
                kw["include_dashboard"] = False
            ray.init(address=address, **{**kw, **(init_kwargs or {})})
        self.gpu_resource = gpu_resource
        self.cpus_per_trial = cpus_per_trial
        self.scratch, self.keep_scratch = scratch, keep_scratch
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        total_cpus = sum(n.get("CPU", 0) for n in nodes)
        self.total_gpus = int(sum(n.get(gpu_resource, 0) for n in nodes))
        self._max_node_gpus = int(max((n.get(gpu_resource, 0) for n in nodes), default=0))
        self.slots = slots if slots is not None else max(1, int(total_cpus // max(1, cpus_per_trial or 1)))
        if self.slots < 1:
            raise ExecutionError(f"slots must be >= 1, got {self.slots}")
        # Controller-leased ids exist only for a custom resource; Ray assigns real GPUs itself.
        self._events = Events()
        self._pool = SlotPool(self.slots, self.total_gpus,
                              [str(i) for i in range(self.total_gpus)] if gpu_resource != "GPU" else None,
                              on_release=self._events.wake)
        self.owner = process_identity()  # this controller, as its actors know it
        self._reclaimed: set[str] = set()  # campaigns whose dead controllers' actors were reclaimed
        self._actor_cls = ray.remote(TrialActor)
        self._idle: list[tuple[tuple, Any, float]] = []  # (shape, actor, idle since), reused by shape
        self._blobs: OrderedDict[str, Any] = OrderedDict()  # sha256 -> ObjectRef
        self._hidden_sha: dict[tuple, str] = {}
        self._running: dict[int, _Run] = {}
        self._by_ref: dict[Any, int] = {}
        self._pinged = time.monotonic()
        self._lock = threading.Condition()
        self._stopping = False
        self._closed = False
        self._waiter = threading.Thread(target=self._wait_loop, name="ray-waiter", daemon=True)
        self._waiter.start()

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- capacity ------------------------------------------------------------------
    def running(self) -> int:
        return len(self._running)

    def fits_ever(self, gpus: int) -> bool:
        return gpus <= self._max_node_gpus  # a trial's GPUs are on one node

    def can_start(self, gpus: int = 0) -> bool:
        return self._pool.can_start(gpus)

    def lease(self, gpus: int = 0) -> ContextManager[list[str]]:
        """Hold a slot (and `gpus` GPUs) for a run that is not a trial; see `LocalExecutor.lease`.

        Yields the leased ids for a custom GPU resource, else [] (Ray assigns real GPUs).
        """
        return self._pool.lease(gpus)

    # -- launching -----------------------------------------------------------------
    def start(self, trial_id: int, trial_dir: Path, gpus: int = 0) -> int:
        """Ship a prepared trial directory to a worker actor. Returns 0: there is no local pid."""
        trial_dir = Path(trial_dir).resolve()
        job = json.loads((trial_dir / "job.json").read_text())
        self._reclaim(trial_dir)  # once per campaign: after recover() re-attached what it wanted
        lease = self._pool.acquire(gpus, what=f"trial {trial_id}")
        key = trial_key(trial_dir, trial_id)
        ws_sha, ws_ref = self._blob(pack_tree(trial_dir / "work"))
        hid_sha, hid_ref = self._hidden_blob(job)
        cpus = self.cpus_per_trial if self.cpus_per_trial is not None else job["cpus"]
        shape = (cpus, gpus, job.get("memory_gb"))
        order = {"name": key, "job": job, "gpus": lease, "scratch": self.scratch, "keep_scratch": self.keep_scratch}
        run = _Run(None, "", None, trial_dir, key, gpus, lease or [], shape, (order, ws_ref, hid_ref))
        run.info = {"key": key, "namespace": NAMESPACE, "gpus": lease, "workspace_sha256": ws_sha,
                    "hidden_sha256": hid_sha}
        self._launch(trial_id, run)
        return 0

    def _launch(self, trial_id: int, run: _Run) -> None:
        actor, name = self._take_idle(run.shape) or self._new_actor(run.shape)
        # Named on disk before the trial is handed over: a controller killed in between finds
        # an actor that does not know the trial, and re-queues it.
        atomic_write_json(run.trial_dir / "ray.json", dict(run.info, actor=name, started_at=time.time()), durable=False)
        order, ws_ref, hid_ref = run.launch
        run.actor, run.actor_name = actor, name
        run.ref = actor.run.remote(run.key, order, ws_ref, hid_ref)
        self._track(trial_id, run)

    def _take_idle(self, shape: tuple):
        """A recently idle actor of this shape; else None, after killing every idle actor:
        idle actors hold their CPUs and GPUs, which the new one may need."""
        now = time.monotonic()
        with self._lock:
            found = next((e for e in self._idle if e[0] == shape and now - e[2] < IDLE_KEEP_S), None)
            if found is not None:
                self._idle.remove(found)
                return found[1]
            idle, self._idle = self._idle, []
        for _, (actor, _), _ in idle:
            self._kill(actor)
        return None

    def _new_actor(self, shape: tuple):
        cpus, gpus, memory_gb = shape
        # The name carries the creating controller: an actor still waiting for resources cannot
        # be asked who owns it, and one whose controller is dead is reclaimed by its name alone.
        name = f"{ACTOR_PREFIX}{os.urandom(6).hex()}@{self.owner}"
        # Each re-attaching controller's result() call holds one thread until the trial ends.
        opts: dict[str, Any] = {"name": name, "namespace": NAMESPACE, "lifetime": "detached", "max_restarts": 0,
                                "max_concurrency": 32, "num_cpus": cpus}
        if gpus and self.gpu_resource == "GPU":
            opts["num_gpus"] = gpus
        elif gpus:
            opts["resources"] = {self.gpu_resource: gpus}
        if memory_gb:
            opts["memory"] = int(memory_gb * (1 << 30))
        return self._actor_cls.options(**opts).remote(self.owner), name

    def attach(self, trial_id: int, trial_dir: Path) -> bool:
        """Wait again for a trial an earlier controller started. False when its actor is gone
        or does not know the trial (the caller re-queues it)."""
        trial_dir = Path(trial_dir).resolve()
        if trial_id in self._running:
            return True  # already watched by this executor
        try:
            info = json.loads((trial_dir / "ray.json").read_text())
            actor = self._ray.get_actor(info["actor"], namespace=info.get("namespace", NAMESPACE))
            if self._actor_state(actor) != "ALIVE":
                # Still waiting for resources (or restarting): its controller died before the trial
                # reached it, so it can never know the trial. Nothing is lost by killing it.
                self._kill(actor)
                return False
            # An alive actor answers at once (its calls run in their own threads); the bound is a backstop.
            if not self._ray.get(actor.knows.remote(info["key"]), timeout=30):
                return False
            actor.ping.remote(self.owner)  # adopted: its old controller is gone
        except (OSError, ValueError, KeyError, self._ray.exceptions.RayError):
            return False
        lease = list(info.get("gpus") or [])
        gpus = len(lease) if lease else int(json.loads((trial_dir / "job.json").read_text()).get("gpus", 0))
        self._pool.adopt(lease, gpus)
        self._track(trial_id, _Run(actor, info["actor"], actor.result.remote(info["key"]), trial_dir, info["key"],
                                   gpus, lease))
        return True

    def _track(self, trial_id: int, run: _Run) -> None:
        with self._lock:
            self._running[trial_id] = run
            self._by_ref[run.ref] = trial_id
            self._lock.notify_all()

    def _blob(self, data: bytes) -> tuple[str, Any]:
        sha = hashlib.sha256(data).hexdigest()
        ref = self._blobs.get(sha)
        if ref is None:
            ref = self._blobs[sha] = self._ray.put(data)
            while len(self._blobs) > BLOB_CACHE:
                self._blobs.popitem(last=False)  # running trials hold their own references
        else:
            self._blobs.move_to_end(sha)
        return sha, ref

    def _hidden_blob(self, job: dict) -> tuple[str, Any]:
        """The hidden files, packed once per campaign snapshot (not once per trial)."""
        key = (job["hidden_src"], tuple(sorted(job["hidden"].items())))
        sha = self._hidden_sha.get(key)
        if sha is not None and sha in self._blobs:
            self._blobs.move_to_end(sha)
            return sha, self._blobs[sha]
        sha, ref = self._blob(pack_tree(Path(job["hidden_src"]), list(job["hidden"])))
        self._hidden_sha[key] = sha
        return sha, ref

    def _kill(self, actor) -> None:
        try:
            self._ray.kill(actor)
        except Exception:  # already dead or unreachable: nothing left to free
            pass

    # -- events --------------------------------------------------------------------
    def _wait_loop(self) -> None:
        ray = self._ray
        while True:
            with self._lock:
                while not self._by_ref and not self._closed:
                    self._lock.wait(HEARTBEAT_S if self._idle else None)
                    self._heartbeat()
                if self._closed:
                    return
                refs = list(self._by_ref)
                self._heartbeat()
            # Bounded, so that trials started meanwhile join the watched set within WAIT_S.
            ready, rest = ray.wait(refs, num_returns=1, timeout=WAIT_S)
            if ready and rest:
                more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                ready += more
            for ref in ready:
                self._collect(ref)

    def _heartbeat(self) -> None:  # holding the lock
        """Ping every actor of this controller once per HEARTBEAT_S (fire and forget): an
        actor whose controller falls silent exits once idle (see `TrialActor`)."""
        if time.monotonic() - self._pinged < HEARTBEAT_S:
            return
        self._pinged = time.monotonic()
        for actor in [r.actor for r in self._running.values()] + [a for _, (a, _), _ in self._idle]:
            try:
                actor.ping.remote()
            except Exception:  # a dead actor: its trial's call reports it
                pass

    def _actor_state(self, actor) -> str:
        """ALIVE, PENDING_CREATION, DEPENDENCIES_UNREADY, RESTARTING or DEAD, from the GCS (no call
        to the actor, which would wait for one that is not yet placed)."""
        from ray._private import state

        return state.actors(actor._actor_id.hex()).get("State", "DEAD")

    def _reclaim(self, trial_dir: Path) -> None:
        """Kill the actors of dead controllers that no one will collect from, once per campaign.

        Runs at this campaign's first `start()`, after `recover()` re-attached (and adopted) what
        it wanted. Of the actors no live controller owns, it kills those waiting for resources
        (they never received a trial), the idle ones, and those whose trials are all this
        campaign's: each such trial was collected, re-queued or re-attached elsewhere, so
        finishing it would only run it twice. Actors running another campaign's trials are
        left for that campaign's resume. Dead means: the controller's process is gone (same
        host), or it has not pinged for LEASE_S (another host).
        """
        camp = campaign_key(trial_dir)
        if camp in self._reclaimed:
            return
        self._reclaimed.add(camp)
        ray = self._ray
        with self._lock:
            ours = {r.actor_name for r in self._running.values()} | {n for _, (_, n), _ in self._idle}
        asked: dict[Any, tuple[str, Any]] = {}
        for entry in ray.util.list_named_actors(all_namespaces=True):
            name = entry["name"]
            if entry["namespace"] != NAMESPACE or not name.startswith(ACTOR_PREFIX) or name in ours:
                continue
            try:
                actor = ray.get_actor(name, namespace=NAMESPACE)
                state = self._actor_state(actor)
            except (ValueError, ray.exceptions.RayError):
                continue  # gone meanwhile
            if state == "ALIVE":
                asked[actor.status.remote()] = (name, actor)
            elif state != "DEAD" and owner_alive(name.partition("@")[2]) is False:
                self._kill(actor)  # never placed: it holds no trial
        # Alive actors answer at once (their calls run in their own threads); the bound is a backstop.
        ready, _ = ray.wait(list(asked), num_returns=len(asked), timeout=10) if asked else ([], [])
        prefix = f"ideaforge-trial-{camp}-"
        for ref in ready:
            name, actor = asked[ref]
            try:
                st = ray.get(ref)
            except ray.exceptions.RayError:
                continue
            alive = owner_alive(st["owner"])
            if alive or (alive is None and st["silent_s"] < LEASE_S):
                continue
            keys = st["running"] + st["held"]
            if all(k.startswith(prefix) for k in keys):
                self._kill(actor)

    def _collect(self, ref) -> None:
        ray = self._ray
        with self._lock:
            trial_id = self._by_ref.pop(ref)
            run = self._running[trial_id]
        files: dict[str, bytes] = {}
        gpus, reuse = run.lease, run.shape is not None
        try:
            got = ray.get(ref)
            if got is None:  # an adopted actor that no longer knows the trial
                record, reuse = None, False
            else:
                record, files, gpus = (None if got["stopped"] else got["record"]), got["files"], got["gpus"]
        except ray.exceptions.RayActorError as e:  # the worker process or its node is gone
            reuse = False
            if run.launch is not None and not run.launch[0].get("retried") and not self._stopping:
                run.launch[0]["retried"] = 1
                self._launch(trial_id, run)  # once, on whatever node Ray finds
                return
            record = None if self._stopping or run.launch is None else {
                "trial_id": trial_id, "outcome": "failed", "exit_code": None, "retried": 1, "ended_at": time.time(),
                "reason": f"the Ray worker running this trial died again after one retry (node or worker lost):\n"
                          f"{str(e)[:2000]}"}
        except ray.exceptions.RayError as e:  # lost objects, runtime-env failures: final, not the idea's fault
            reuse = False
            record = None if self._stopping else {
                "trial_id": trial_id, "outcome": "failed", "exit_code": None, "ended_at": time.time(),
                "reason": f"Ray could not run this trial: {e.__class__.__name__}: {str(e)[:2000]}"}
        if record is not None:
            for name, data in files.items():
                (run.trial_dir / name).write_bytes(data)
            atomic_write_json(run.trial_dir / "record.json", record)
        if reuse and not self._stopping:
            run.actor.forget.remote(run.key)  # written down: the actor may drop it
            with self._lock:
                self._idle.append((run.shape, (run.actor, run.actor_name), time.monotonic()))
        else:
            self._kill(run.actor)
        # The event first, then the slot (see LocalExecutor._finish): `running()` counts the trial
        # until its event is out, and the slot's release wakes the controller to fill it.
        self._events.put(Finished(trial_id, None if record is None else TrialRecord.read(run.trial_dir), gpus))
        with self._lock:
            self._running.pop(trial_id, None)
        self._pool.release(run.lease, run.gpus)  # a waiting lease may take the slot

    def wake(self) -> None:
        """Make a waiting `wait()` return (with nothing): another stage has news."""
        self._events.wake()

    def wait(self, timeout: float | None = None) -> list[Finished]:
        """Block until a trial finished, `wake()` was called, or `timeout` seconds; return all finished."""
        return self._events.wait(timeout)

    def close(self) -> None:
        """Let the idle actors go and stop watching; disconnect if this executor connected.

        Actors still running trials live on, for a later controller to `attach()`.
        """
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._lock.notify_all()
        for _, (actor, _), _ in idle:
            self._kill(actor)
        self._waiter.join(timeout=5)
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns_ray = False

    def stop_all(self, timeout: float = 10.0) -> None:
        """Kill every running trial's process tree on its node, then its actor; they write no record."""
        self._stopping = True
        with self._lock:
            actors = [r.actor for r in self._running.values()]
        try:
            self._ray.get([a.stop.remote() for a in actors], timeout=timeout)
        except self._ray.exceptions.RayError:
            pass  # a dead or stuck actor: the kill below takes its worker down
        for a in actors:
            self._kill(a)
        deadline = time.monotonic() + timeout
        while self._running and time.monotonic() < deadline:
            time.sleep(0.05)  # the waiter drains _running as the actors die
        self.close()
