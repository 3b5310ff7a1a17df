"""A campaign directory: its store, its environment snapshot, and the trials it runs.

`TrialRunner` drives queued trials through an executor and ingests what they wrote.
It survives `kill -9` of the controller at any moment: on restart, finished trials
are collected from their record.json, live workers are re-attached, and trials whose
worker died without a record are re-queued, so no trial completes twice.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

from ideaforge.envs.spec import EnvSpec, load_env
from ideaforge.envs.workspace import build_workspace, ensure_prepared, snapshot_env
from ideaforge.errors import ConfigError, EditRefused, StoreError
from ideaforge.execute.jail import warn_unisolated
from ideaforge.execute.job import Job, write_job
from ideaforge.execute.local import find_worker
from ideaforge.store import Store


class Campaign:
    def __init__(self, store: Store, spec: EnvSpec):
        self.store = store
        self.spec = spec
        self.hidden = {r["path"]: r["sha256"] for r in store.env_files() if r["cls"] == "hidden"}
        self._prepared: Path | None | bool = False

    @classmethod
    def create(cls, root: str | Path, spec: EnvSpec, config: dict | None = None) -> "Campaign":
        root = Path(root)
        if (root / "campaign.db").exists():
            raise ConfigError(f"{root} already holds a campaign; resume it with `ideaforge resume {root}` or pick another --dir")
        store = Store.create_or_open(root)
        rows = snapshot_env(spec, store.env_dir)
        store.set_env_files(rows)
        with store.tx():
            store.set_meta("env_name", spec.name)
            store.set_meta("env_root", str(spec.root))
            store.set_meta("env_fingerprint", spec.fingerprint())
            store.set_meta("created", time.time())
            store.set_meta("config", config or {})
        return cls(store, spec)

    @classmethod
    def open(cls, root: str | Path) -> "Campaign":
        store = Store.open_existing(root)
        env_root = store.get_meta("env_root")
        if env_root is None:
            raise StoreError(f"{root}: the campaign database has no environment recorded")
        # Code comes from the snapshot; the spec is re-read from the environment for its data paths.
        spec = load_env(env_root)
        return cls(store, spec)

    @property
    def root(self) -> Path:
        return self.store.root

    def config(self) -> dict:
        return self.store.get_meta("config", {})

    def env_changed(self) -> bool:
        return self.spec.fingerprint() != self.store.get_meta("env_fingerprint")

    def prepared(self, log=print) -> Path | None:
        if self._prepared is False:
            self._prepared = ensure_prepared(self.spec, log=log)
        return self._prepared  # type: ignore[return-value]

    def changes_for(self, implementation_id: int | None) -> dict[str, str | None]:
        if implementation_id is None:
            return {}
        row = self.store.conn.execute("SELECT files FROM implementations WHERE id=?", (implementation_id,)).fetchone()
        if row is None:
            raise StoreError(f"no implementation {implementation_id}")
        return json.loads(row[0])

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
            budget_clock=self.spec.budget_clock, network=self.spec.network,
        )
        write_job(tdir, job)
        return tdir

    def timeout_for(self, budget_s: float) -> float:
        """The environment's hard timeout, scaled when --budget shrinks or grows the budget."""
        if budget_s == self.spec.budget_s:
            return self.spec.timeout_s
        return max(budget_s + 60.0, self.spec.timeout_s * budget_s / self.spec.budget_s)


Progress = Callable[[str, dict], None]


class TrialRunner:
    """Moves trials queued -> running -> done through one executor."""

    def __init__(self, campaign: Campaign, executor, on_event: Progress | None = None):
        self.campaign = campaign
        self.store = campaign.store
        self.executor = executor
        self.on_event = on_event or (lambda kind, info: None)
        warn_unisolated(lambda msg: self.on_event("log", {"message": msg}))  # once per process, loudly
        if not executor.fits_ever(campaign.spec.gpus):
            raise ConfigError(
                f"{campaign.spec.name} needs {campaign.spec.gpus} GPU(s) per trial; this executor has "
                f"{executor.total_gpus} (pass --gpus 0,1,... to lend them)")

    def recover(self) -> None:
        """After a controller crash: collect, re-attach or re-queue every trial marked running."""
        for trial in self.store.trials(status="running"):
            tdir = self.store.trial_dir(trial["id"])
            record = _read_record(tdir)
            if record is not None:
                self._ingest(trial["id"], record)
                continue
            reattach = getattr(self.executor, "reattach", None)  # the Ray backend finds its actor by name
            if reattach is not None:
                if reattach(trial["id"], tdir):
                    self.on_event("attached", {"trial": trial["id"]})
                    continue
            else:
                pid = find_worker(tdir)
                if pid is not None and self.executor.attach(trial["id"], tdir, pid):
                    self.on_event("attached", {"trial": trial["id"], "pid": pid})
                    continue
            self.store.requeue(trial["id"])
            self.on_event("requeued", {"trial": trial["id"]})

    def start_queued(self) -> int:
        started = 0
        for trial in self.store.trials(status="queued"):
            if not self.executor.can_start(self.campaign.spec.gpus):
                break
            try:
                tdir = self.campaign.prepare_trial_dir(trial, log=lambda m: self.on_event("log", {"message": m}))
            except EditRefused as e:
                self.store.mark_running(trial["id"])
                self._ingest(trial["id"], {"outcome": "invalid", "reason": f"edit refused before running: {e}"})
                continue
            # Mark first, then launch: a crash in between leaves a 'running' trial with no
            # worker, which recover() re-queues; a live worker is found by its command line.
            self.store.mark_running(trial["id"])
            pid = self.executor.start(trial["id"], tdir, self.campaign.spec.gpus)
            self.store.set_pid(trial["id"], pid)
            self.on_event("started", {"trial": trial["id"], "pid": pid})
            started += 1
        return started

    def _ingest(self, trial_id: int, record: dict) -> None:
        if self.store.finish_trial(trial_id, record):
            self.on_event("finished", {"trial": trial_id, **record})

    def pending(self) -> tuple[int, int]:
        q = self.store.conn.execute("SELECT COUNT(*) FROM trials WHERE status='queued'").fetchone()[0]
        r = self.store.conn.execute("SELECT COUNT(*) FROM trials WHERE status='running'").fetchone()[0]
        return q, r

    def step(self, timeout: float | None = None) -> None:
        """Start what fits, then wait for at least one finished trial (or the timeout)."""
        self.start_queued()
        if self.executor.running() == 0:
            return  # everything queued was refused before it could run
        for fin in self.executor.wait(timeout):
            self.handle(fin)

    def handle(self, fin) -> None:
        """One finished worker: ingest its record, or re-queue a trial that left none."""
        if fin.record is None:
            self.store.requeue(fin.trial_id)
            self.on_event("requeued", {"trial": fin.trial_id})
        else:
            self._ingest(fin.trial_id, fin.record)

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


def _read_record(tdir: Path) -> dict | None:
    try:
        return json.loads((tdir / "record.json").read_text())
    except (OSError, ValueError):
        return None
