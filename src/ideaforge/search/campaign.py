"""A campaign directory: its store, its environment snapshot, and the trials it runs.

`TrialRunner` drives queued trials through an executor and ingests what they wrote.
It survives `kill -9` of the controller at any moment: on restart, finished trials
are collected from their record.json, live workers are re-attached, and trials whose
worker died without a record are re-queued, so no trial completes twice.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable

from ideaforge.envs.spec import EnvSpec, load_env
from ideaforge.envs.workspace import build_workspace, ensure_prepared, snapshot_env
from ideaforge.errors import ConfigError, EditRefused, StoreError
from ideaforge.execute.base import Executor, make_executor
from ideaforge.execute.jail import warn_unisolated
from ideaforge.execute.job import Job, write_job
from ideaforge.execute.record import TrialRecord
from ideaforge.store import ControllerLock, Store


class Campaign:
    def __init__(self, store: Store, spec: EnvSpec):
        self.store = store
        self.spec = spec
        self._lock: ControllerLock | None = None
        self.hidden = {r["path"]: r["sha256"] for r in store.env_files() if r["cls"] == "hidden"}
        self._prepared: Path | None | bool = False

    @classmethod
    def create(cls, root: str | Path, spec: EnvSpec, config: dict | None = None,
               setup: Callable[[Store], None] | None = None) -> "Campaign":
        """A new campaign directory: the environment snapshot, its resolved facts, and what `setup`
        adds (e.g. the first trials), all or nothing.

        It is built in a temporary sibling directory and renamed into place: a controller
        killed while creating leaves no half-made campaign for `resume` to trip on.
        """
        root = Path(root).resolve()
        if (root / "campaign.db").exists():
            raise ConfigError(f"{root} already holds a campaign; resume it with `ideaforge resume {root}` or pick another --dir")
        if root.exists() and any(root.iterdir()):
            raise ConfigError(f"{root} exists and is not empty; pick another --dir")
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = root.parent / f".{root.name}.creating-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        store = Store.create_or_open(tmp)
        try:
            store.set_env_files(snapshot_env(spec, store.env_dir))
            with store.tx():
                store.set_meta("env_name", spec.name)
                store.set_meta("env_root", str(spec.root))
                store.set_meta("env_profile", spec.profile)
                store.set_meta("env_fingerprint", spec.fingerprint())
                store.set_meta("created", time.time())
                store.set_meta("config", config or {})
                store.set_env_facts(env_facts(spec))
            if setup is not None:
                with store.tx():
                    setup(store)
        finally:
            store.close()
        try:
            os.rename(tmp, root)  # onto a missing or empty directory: atomic
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ConfigError(f"{root}: could not create the campaign there ({e.strerror}); "
                              f"another controller may be creating it") from e
        return cls(Store.create_or_open(root), spec)

    @classmethod
    def open(cls, root: str | Path) -> "Campaign":
        store = Store.open_existing(root)
        env_root = store.get_meta("env_root")
        if env_root is None:
            raise StoreError(f"{root}: the campaign database has no environment recorded")
        # Code comes from the snapshot; the spec is re-read from the environment for its data paths.
        spec = load_env(env_root, profile=store.get_meta("env_profile"))
        if not store.env_facts():  # made before the facts were stored
            store.set_env_facts(env_facts(spec))
        return cls(store, spec)

    @property
    def root(self) -> Path:
        return self.store.root

    def lock(self) -> None:
        """Become this campaign's one controller (StoreError naming the holder's pid if another is).

        Held until `close()` or the process ends; readers (status, report) never take it.
        """
        if self._lock is None:
            self._lock = self.store.controller_lock()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self.store.close()

    def config(self) -> dict:
        return self.store.get_meta("config", {})

    def make_executor(self, name: str | None = None, *, slots: int | None = None,
                      gpus: list[str] | None = None, address: str | None = None) -> Executor:
        """The executor this campaign runs on: the saved choice, with what is given (not None) on top.

        The choice (backend, slots, GPU ids, address) is saved once the executor is built,
        so `ideaforge resume DIR` needs no flags. Naming another backend drops the saved
        backend's settings.
        """
        saved = self.store.get_meta("executor") or {"name": "local"}
        choice = dict(saved) if name in (None, saved.get("name")) else {"name": name}
        for key, value in (("slots", slots), ("gpus", gpus), ("address", address)):
            if value is not None:
                choice[key] = value
        executor = make_executor(choice.get("name", "local"), slots=choice.get("slots"), gpus=choice.get("gpus"),
                                 address=choice.get("address"), cpus_per_trial=self.spec.cpus,
                                 gpus_per_trial=self.spec.gpus)
        self.store.set_meta("executor", choice)
        return executor

    def env_changed(self) -> bool:
        return self.spec.fingerprint() != self.store.get_meta("env_fingerprint")

    def prepared(self, log=print) -> Path | None:
        if self._prepared is False:
            self._prepared = ensure_prepared(self.spec, log=log)
        return self._prepared  # type: ignore[return-value]

    def changes_for(self, implementation_id: int | None) -> dict[str, str | None]:
        if implementation_id is None:
            return {}
        return self.store.implementation_files(implementation_id)

    def prepare_trial_dir(self, trial: dict, log=print) -> Path:
        """A fresh trial directory: workspace with the edit applied, job.json. Refuses bad edits."""
        tdir = self.store.trial_dir(trial["id"])
        if tdir.exists():
            shutil.rmtree(tdir)
        tdir.mkdir(parents=True)
        build_workspace(self.spec, self.store.env_dir, tdir / "work", self.changes_for(trial["implementation_id"]))
        prepared = self.prepared(log)
        job = Job(
            trial_id=trial["id"], run_command=self.spec.run_command, evaluate_command=self.spec.evaluate_command,
            budget_s=trial["budget_s"], timeout_s=self.timeout_for(trial["budget_s"]),
            evaluate_timeout_s=self.spec.evaluate_timeout_s, seed=trial["seed"], cpus=self.spec.cpus,
            gpus=self.spec.gpus, metric=self.spec.metric, hidden_src=str(self.store.env_dir), hidden=self.hidden,
            data={rel: str((self.spec.root / rel).resolve()) for rel in self.spec.data_paths},
            prepared=str(prepared) if prepared else None, memory_gb=self.spec.memory_gb, role=trial["role"],
            evaluate_serve=self.spec.evaluate_serve, evaluate_jailed=self.spec.evaluate_jailed,
            env=dict(self.spec.env),
            budget_clock=self.spec.budget_clock, network=self.spec.network,
        )
        write_job(tdir, job)
        return tdir

    def timeout_for(self, budget_s: float) -> float:
        """The environment's hard timeout, scaled when --budget shrinks or grows the budget."""
        if budget_s == self.spec.budget_s:
            return self.spec.timeout_s
        return max(budget_s + 60.0, self.spec.timeout_s * budget_s / self.spec.budget_s)


def env_facts(spec: EnvSpec) -> dict:
    """What views need to know about the environment, resolved once (profile applied)."""
    return {"name": spec.name, "description": spec.description, "metric": spec.metric, "goal": spec.goal,
            "budget_s": spec.budget_s, "timeout_s": spec.timeout_s, "cpus": spec.cpus, "gpus": spec.gpus,
            "profile": getattr(spec, "profile", None)}


Progress = Callable[[str, dict], None]


MAX_REQUEUES = 3  # re-queues of a trial whose worker died, before it ends `failed`


class TrialRunner:
    """Moves trials queued -> running -> done through one executor.

    Only one runs per campaign (it takes the campaign's controller lock), and a trial is
    claimed queued -> running atomically before its directory is prepared, so no trial
    runs twice. A trial whose worker dies without a record is re-queued, at most
    `max_requeues` times; then it ends `failed`, with the reason.
    """

    def __init__(self, campaign: Campaign, executor: Executor, on_event: Progress | None = None,
                 max_requeues: int = MAX_REQUEUES):
        self.campaign = campaign
        self.store = campaign.store
        self.executor = executor
        self.on_event = on_event or (lambda kind, info: None)
        self.max_requeues = max_requeues
        warn_unisolated(lambda msg: self.on_event("log", {"message": msg}))  # once per process, loudly
        if not executor.fits_ever(campaign.spec.gpus):
            raise ConfigError(
                f"{campaign.spec.name} needs {campaign.spec.gpus} GPU(s) per trial; this executor has "
                f"{executor.total_gpus} (pass --gpus 0,1,... to lend them)")
        campaign.lock()

    def recover(self) -> None:
        """After a controller crash: collect, re-attach or re-queue every trial marked running."""
        for trial in self.store.trials(status="running"):
            tdir = self.store.trial_dir(trial["id"])
            record = _read_record(tdir)
            if record is not None:
                self._ingest(trial["id"], record)
                continue
            if self.executor.attach(trial["id"], tdir):  # each backend finds its own worker
                self.on_event("attached", {"trial": trial["id"]})
                continue
            # Claimed but never handed to a worker (the controller died in between) is not
            # the trial's fault; a worker that started and is gone without a record is.
            # (No other controller can hold the claim: this one holds the campaign's lock.)
            self._worker_gone(trial["id"], died=_worker_started(tdir))

    def start_queued(self) -> int:
        started = 0
        for trial in self.store.trials(status="queued"):
            if not self.executor.can_start(self.campaign.spec.gpus):
                break
            self.store.check_space()  # raises DiskFull: a clean stop before the disk fills
            # Claim first, then prepare and launch: a crash in between leaves a 'running'
            # trial with no worker, which recover() re-queues.
            if not self.store.claim(trial["id"]):
                continue  # not queued any more
            try:
                tdir = self.campaign.prepare_trial_dir(trial, log=lambda m: self.on_event("log", {"message": m}))
            except EditRefused as e:
                self._ingest(trial["id"], TrialRecord("invalid", reason=f"edit refused before running: {e}"))
                continue
            pid = self.executor.start(trial["id"], tdir, self.campaign.spec.gpus)
            self.store.set_pid(trial["id"], pid)
            self.on_event("started", {"trial": trial["id"], "pid": pid})
            started += 1
        return started

    def _ingest(self, trial_id: int, record: TrialRecord) -> None:
        if self.store.finish_trial(trial_id, record):
            self.on_event("finished", {"trial": trial_id, **record.to_dict()})

    def pending(self) -> tuple[int, int]:
        counts = self.store.trial_counts()
        return counts["queued"], counts["running"]

    def step(self, timeout: float | None = None) -> None:
        """Start what fits, then wait for at least one finished trial (or the timeout)."""
        self.start_queued()
        if self.executor.running() == 0 and self.pending()[0] == 0:
            # Nothing runs and nothing waits. A trial that just ended is still 'running' in the
            # store: its event was queued before the executor stopped counting it, so take it now.
            for fin in self.executor.wait(0):
                self.handle(fin)
            return
        # Trials run, or queued ones wait for a slot a lease (smoke run) holds: its release wakes us.
        for fin in self.executor.wait(timeout):
            self.handle(fin)

    def handle(self, fin) -> None:
        """One finished worker: ingest its record, or re-queue a trial that left none."""
        if fin.record is None:
            self._worker_gone(fin.trial_id, died=True)
        else:
            self._ingest(fin.trial_id, fin.record)

    def _worker_gone(self, trial_id: int, died: bool) -> None:
        """Re-queue a running trial that has no record, or end it `failed` once re-queued to the cap."""
        requeues = self.store.trial(trial_id)["requeues"]
        if died and requeues >= self.max_requeues:
            self._ingest(trial_id, TrialRecord("failed", reason=f"re-queued {requeues} times: the worker died each time"))
            return
        n = self.store.requeue(trial_id, worker_died=died)
        self.on_event("requeued", {"trial": trial_id, "requeues": n})

    def drain(self) -> None:
        """Run until nothing is queued or running."""
        self.recover()
        while True:
            queued, running = self.pending()
            if not queued and not running:
                return
            self.step()

    def stop(self) -> None:
        self.executor.stop_all()
        for trial in self.store.trials(status="running"):
            record = _read_record(self.store.trial_dir(trial["id"]))
            if record is not None:
                self._ingest(trial["id"], record)
            else:
                self.store.requeue(trial["id"])


def _worker_started(tdir: Path) -> bool:
    """Whether a worker took the trial: the local worker writes worker.json, Ray's executor ray.json."""
    return (tdir / "worker.json").exists() or (tdir / "ray.json").exists()


def _read_record(tdir: Path) -> TrialRecord | None:
    return TrialRecord.read(tdir)
