"""The campaign database: SQLite in WAL mode, numbered migrations, one per campaign directory.

The Store is the only writer of campaign state. Workers write files in their trial
directories; the controller ingests them here. Readers (status, report, ui) open the
database read-only with `Store.open_readonly`.

Layout of a campaign directory:

    DIR/campaign.db      this database
    DIR/env/             snapshot of the environment's editable, visible and hidden files
    DIR/trials/<id>/     one directory per trial (workspace, logs, job.json, record.json)
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

from ideaforge.errors import DiskFull, StoreError
from ideaforge.outcomes import OUTCOMES
from ideaforge.store.lock import LOCK_NAME, ControllerLock
from ideaforge.store.migrations import MIGRATIONS

DB_NAME = "campaign.db"
# Free space kept on the campaign's disk (bytes): the database and its WAL, the logs and
# outputs of running trials. Below it (plus one workspace), no new trial starts.
MIN_FREE_BYTES = 64 * 2**20

TRIAL_FIELDS = (
    "id", "implementation_id", "role", "seed", "budget_s", "status", "outcome", "metric",
    "metrics", "curve", "reason", "exit_code", "train_s", "eval_s", "pid", "attempt",
    "created", "started", "ended", "requeues", "isolation", "train_cpu_s",
)


class Store:
    """Read/write access to one campaign directory."""

    def __init__(self, root: Path, conn: sqlite3.Connection, readonly: bool = False):
        self.root = root
        self.conn = conn
        self.readonly = readonly
        # One connection shared by the controller's threads (parallel model calls record
        # themselves); the lock keeps a transaction from interleaving with other writes.
        self.lock = threading.RLock()
        self.min_free_bytes = MIN_FREE_BYTES
        self._workspace_bytes: int | None = None

    # -- opening ---------------------------------------------------------------
    @classmethod
    def create_or_open(cls, root: str | Path) -> "Store":
        root = Path(root).resolve()
        root.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(root / DB_NAME, timeout=30, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process kill
        conn.execute("PRAGMA foreign_keys=ON")
        store = cls(root, conn)
        store._migrate()
        return store

    @classmethod
    def open_existing(cls, root: str | Path) -> "Store":
        root = Path(root).resolve()
        if not (root / DB_NAME).is_file():
            raise StoreError(f"{root}: no campaign here (no {DB_NAME}); start one with `ideaforge run` or `ideaforge baseline`")
        return cls.create_or_open(root)

    @classmethod
    def open_readonly(cls, root: str | Path) -> "Store":
        root = Path(root).resolve()
        db = root / DB_NAME
        if not db.is_file():
            raise StoreError(f"{root}: no campaign here (no {DB_NAME})")
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(f"{db} has schema version {version}; this ideaforge knows up to {len(MIGRATIONS)}: upgrade ideaforge")
        return cls(root, conn, readonly=True)

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(f"{self.root / DB_NAME} has schema version {version}; this ideaforge knows up to {len(MIGRATIONS)}: upgrade ideaforge")
        for i in range(version, len(MIGRATIONS)):
            with self.tx():
                for stmt in _split_sql(MIGRATIONS[i]):
                    self.conn.execute(stmt)
                self.conn.execute(f"PRAGMA user_version={i + 1}")

    def tx(self):
        return _Tx(self.conn, self.lock, self._disk_errors)

    def execute(self, sql: str, args: tuple | list = ()) -> sqlite3.Cursor:
        with self.lock, self._disk_errors():
            return self.conn.execute(sql, args)

    # -- disk space: a full disk is a clean, resumable stop, never a raw sqlite3 error ---------
    @contextmanager
    def _disk_errors(self):
        try:
            yield
        except sqlite3.OperationalError as e:
            free = _free_bytes(self.root)
            # SQLITE_FULL says so; a WAL write that hit ENOSPC can surface as SQLITE_IOERR.
            if "full" in str(e) or ("disk I/O" in str(e) and free < self.min_free_bytes):
                raise self._disk_full(free, self.min_free_bytes, f"SQLite: {e}") from e
            raise

    def _disk_full(self, free: int, need: int, cause: str) -> DiskFull:
        return DiskFull(
            f"{self.root}: the disk holding this campaign is full ({_mb(free)} free; ideaforge needs {_mb(need)} "
            f"free there to go on; {cause}). Running trials were stopped and nothing recorded is lost: free "
            f"{_mb(max(need - free, 0))} or more on that disk, then resume this campaign.",
            path=str(self.root), needed_bytes=need, free_bytes=free)

    def check_space(self) -> None:
        """Raise DiskFull when the disk cannot take one more trial and keep its reserve free."""
        if self._workspace_bytes is None:  # one trial workspace: the editable and visible files
            rows = self.execute("SELECT COALESCE(SUM(size), 0) FROM env_files WHERE cls != 'hidden'").fetchone()
            self._workspace_bytes = int(rows[0])
        need = self.min_free_bytes + self._workspace_bytes
        free = _free_bytes(self.root)
        if free < need:
            raise self._disk_full(free, need, "checked before starting a trial")

    def close(self) -> None:
        self.conn.close()

    # -- paths -----------------------------------------------------------------
    @property
    def env_dir(self) -> Path:
        return self.root / "env"

    def trial_dir(self, trial_id: int) -> Path:
        return self.root / "trials" / f"{trial_id:05d}"

    # -- meta ------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        self.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_env_facts(self, facts: dict[str, Any]) -> None:
        """The environment as resolved when the campaign was made (name, metric, goal, budget_s,
        timeout_s, cpus, gpus, profile, description): what views need, without the env directory."""
        self.set_meta("env", facts)

    def env_facts(self) -> dict[str, Any]:
        """The stored facts; {} for a campaign made before they were stored (it gets them on its
        next `Campaign.open`)."""
        return self.get_meta("env") or {}

    def set_env_files(self, rows: Iterable[tuple[str, str, str, int]]) -> None:
        with self.tx(), self._disk_errors():
            self.execute("DELETE FROM env_files")
            self.conn.executemany("INSERT INTO env_files(path, cls, sha256, size) VALUES (?, ?, ?, ?)", list(rows))

    def env_files(self) -> list[sqlite3.Row]:
        return self.execute("SELECT * FROM env_files ORDER BY cls, path").fetchall()

    # -- trials ----------------------------------------------------------------
    def add_trial(self, role: str, seed: int, budget_s: float, implementation_id: int | None = None) -> int:
        cur = self.execute(
            "INSERT INTO trials(implementation_id, role, seed, budget_s, created) VALUES (?, ?, ?, ?, ?)",
            (implementation_id, role, seed, budget_s, time.time()),
        )
        return int(cur.lastrowid)

    def trial(self, trial_id: int) -> dict[str, Any]:
        row = self.execute("SELECT * FROM trials WHERE id = ?", (trial_id,)).fetchone()
        if row is None:
            raise StoreError(f"no trial {trial_id} in {self.root}")
        return _trial_dict(row)

    def trials(self, *, status: str | None = None, role: str | None = None,
               implementation_id: int | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM trials WHERE 1=1", []
        if status:
            sql, args = sql + " AND status = ?", args + [status]
        if role:
            sql, args = sql + " AND role = ?", args + [role]
        if implementation_id is not None:
            sql, args = sql + " AND implementation_id = ?", args + [implementation_id]
        with self.lock:
            rows = self.conn.execute(sql + " ORDER BY id", args).fetchall()
        return [_trial_dict(r) for r in rows]

    def trial_counts(self) -> dict[str, int]:
        """Trials per status: {"queued": n, "running": n, "done": n} (zeros included)."""
        counts = {"queued": 0, "running": 0, "done": 0}
        for status, n in self.execute("SELECT status, COUNT(*) FROM trials GROUP BY status").fetchall():
            counts[status] = n
        return counts

    def count_trials(self, implementation_id: int) -> int:
        """Trials (any role, any status) of one implementation."""
        return int(self.execute("SELECT COUNT(*) FROM trials WHERE implementation_id=?",
                                (implementation_id,)).fetchone()[0])

    def claim(self, trial_id: int) -> bool:
        """Queued -> running, atomically: True for exactly one caller, False when the trial was
        not queued (another controller took it, or it is done)."""
        cur = self.execute("UPDATE trials SET status='running', pid=NULL, started=? WHERE id=? AND status='queued'",
                           (time.time(), trial_id))
        return cur.rowcount == 1

    def trial_outcomes(self) -> list[dict[str, Any]]:
        """Every trial without its curve and metrics: what leaderboards and counts need, cheap at any size."""
        rows = self.execute("SELECT id, implementation_id, role, seed, status, outcome, metric, reason, requeues "
                            "FROM trials ORDER BY id").fetchall()
        return [dict(r) for r in rows]

    def trial_work_rows(self) -> list[dict[str, Any]]:
        """Finished trials with only the last point of their curve (`last`): what drift tables need,
        without reading whole curves."""
        rows = self.execute("SELECT id, implementation_id, role, seed, status, outcome, metric, train_cpu_s, "
                            "json_extract(curve, '$[#-1]') AS last FROM trials WHERE status = 'done' "
                            "ORDER BY id").fetchall()
        return [dict(r, curve=[json.loads(r["last"])] if r["last"] else []) for r in rows]

    def trials_of_implementations(self, implementation_ids: Iterable[int]) -> list[dict[str, Any]]:
        ids = [int(i) for i in implementation_ids]
        rows = self.execute(f"SELECT * FROM trials WHERE implementation_id IN ({','.join('?' * len(ids))}) "
                            "ORDER BY id", ids).fetchall() if ids else []
        return [_trial_dict(r) for r in rows]

    def set_pid(self, trial_id: int, pid: int) -> None:
        self.execute("UPDATE trials SET pid=? WHERE id=?", (pid, trial_id))

    def requeue(self, trial_id: int, worker_died: bool = False) -> int:
        """Running -> queued. `worker_died` counts it toward the trial's re-queue cap.
        Returns the trial's re-queues because its worker died, so far."""
        with self.tx():
            self.conn.execute(
                "UPDATE trials SET status='queued', pid=NULL, started=NULL, attempt=attempt+1, requeues=requeues+? "
                "WHERE id=? AND status='running'", (int(worker_died), trial_id))
            row = self.conn.execute("SELECT requeues FROM trials WHERE id=?", (trial_id,)).fetchone()
        return int(row[0]) if row else 0

    def isolation_counts(self) -> dict[str, int]:
        """Finished trials per isolation ("bubblewrap", "none", or "unrecorded" from before it was recorded)."""
        return dict(self.execute("SELECT COALESCE(isolation, 'unrecorded'), COUNT(*) FROM trials "
                                 "WHERE status = 'done' GROUP BY 1").fetchall())

    def requeued_trials(self) -> list[dict[str, Any]]:
        """Trials re-queued at least once because their worker died: id, role, status, outcome, requeues."""
        rows = self.execute("SELECT id, role, status, outcome, requeues FROM trials WHERE requeues > 0 "
                            "ORDER BY id").fetchall()
        return [dict(r) for r in rows]

    def controller_lock(self) -> "ControllerLock":
        """Take the campaign's controller lock (see ControllerLock); StoreError when another holds it."""
        return ControllerLock.acquire(self.root)

    def finish_trial(self, trial_id: int, record: Any) -> bool:
        """Ingest a worker's record (an `execute.record.TrialRecord`, or its dict) once.

        Returns False when the trial was already done. An outcome outside the closed
        vocabulary is refused (StoreError): it would be a bug upstream, not a result.
        """
        record = record.to_dict() if hasattr(record, "to_dict") else dict(record)
        if record.get("outcome") not in OUTCOMES:
            raise StoreError(f"trial {trial_id}: unknown outcome {record.get('outcome')!r} "
                             f"(the outcomes are {', '.join(OUTCOMES)})")
        cur = self.execute(
            """UPDATE trials SET status='done', outcome=?, metric=?, metrics=?, curve=?, reason=?,
                   exit_code=?, train_s=?, eval_s=?, ended=?, isolation=?, train_cpu_s=?
               WHERE id=? AND status != 'done'""",
            (
                record["outcome"], record.get("metric"), json.dumps(record.get("metrics", {})),
                json.dumps(record.get("curve", [])), record.get("reason"), record.get("exit_code"),
                record.get("train_s"), record.get("eval_s"), record.get("ended_at", time.time()),
                record.get("isolation"), record.get("train_cpu_s"), trial_id,
            ),
        )
        return cur.rowcount == 1

    # -- ideas and implementations -----------------------------------------------------
    def add_idea(self, epoch: int, kind: str, title: str, description: str, code_changes: str = "",
                 parents: list[int] | None = None, origin: dict | None = None) -> int:
        cur = self.execute(
            """INSERT INTO ideas(epoch, kind, title, description, code_changes, parents, origin, created)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
            (epoch, kind, title, description, code_changes, json.dumps(parents or []), json.dumps(origin or {}), time.time()),
        )
        return int(cur.lastrowid)

    def set_idea_status(self, idea_id: int, status: str) -> None:
        self.execute("UPDATE ideas SET status=? WHERE id=?", (status, idea_id))

    def ideas(self, epoch: int | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM ideas", []
        if epoch is not None:
            sql, args = sql + " WHERE epoch = ?", [epoch]
        with self.lock:
            rows = self.conn.execute(sql + " ORDER BY id", args).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["parents"] = json.loads(d["parents"])
            d["origin"] = json.loads(d["origin"])
            out.append(d)
        return out

    def idea_heads(self) -> list[dict[str, Any]]:
        """Every idea without its texts and origin: id, epoch, kind, title, parents, status."""
        rows = self.execute("SELECT id, epoch, kind, title, parents, status FROM ideas ORDER BY id").fetchall()
        return [dict(r) | {"parents": json.loads(r["parents"])} for r in rows]

    def idea(self, idea_id: int) -> dict[str, Any] | None:
        row = self.execute("SELECT * FROM ideas WHERE id = ?", (idea_id,)).fetchone()
        return None if row is None else dict(row) | {"parents": json.loads(row["parents"]),
                                                     "origin": json.loads(row["origin"])}

    def implementation_heads(self) -> list[dict[str, Any]]:
        """Every implementation without its diff, files and attempts: id, idea_id, status."""
        return [dict(r) for r in self.execute("SELECT id, idea_id, status FROM implementations ORDER BY id")]

    def add_implementation(self, idea_id: int | None, ok: bool, diff: str, files: dict, attempts: list,
                           error: str | None) -> int:
        cur = self.execute(
            """INSERT INTO implementations(idea_id, status, diff, files, attempts, error, created)
               VALUES (?, ?, ?, ?, ?, ?, ?)""",
            (idea_id, "ok" if ok else "implement_failed", diff, json.dumps(files), json.dumps(attempts), error, time.time()),
        )
        return int(cur.lastrowid)

    def implementation_files(self, implementation_id: int) -> dict[str, str | None]:
        """The files an implementation changes: {path: new content, or None for deleted}."""
        row = self.execute("SELECT files FROM implementations WHERE id=?", (implementation_id,)).fetchone()
        if row is None:
            raise StoreError(f"no implementation {implementation_id} in {self.root}")
        return json.loads(row[0])

    def implementations(self, idea_id: int | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM implementations", []
        if idea_id is not None:
            sql, args = sql + " WHERE idea_id = ?", [idea_id]
        with self.lock:
            rows = self.conn.execute(sql + " ORDER BY id", args).fetchall()
        return [dict(r) | {"files": json.loads(r["files"]), "attempts": json.loads(r["attempts"])} for r in rows]

    def add_ideation(self, epoch: int, kind: str, asked: int, returned: int, kept: int, ideator: str) -> None:
        """Record one ideation call; store it in the same transaction as the ideas it kept."""
        self.execute(
            "INSERT INTO ideations(epoch, kind, asked, returned, kept, ideator, created) VALUES (?,?,?,?,?,?,?)",
            (epoch, kind, asked, returned, kept, ideator, time.time()),
        )

    def ideations(self, epoch: int) -> dict[str, dict[str, Any]]:
        """The ideation calls already made for one epoch, by kind."""
        rows = self.execute("SELECT * FROM ideations WHERE epoch = ?", (epoch,)).fetchall()
        return {r["kind"]: dict(r) for r in rows}

    def add_batch(self, batch: int, kind: str, generation: int, finished: int, exploit_share: float, asked: int,
                  returned: int, kept: int, ideator: str) -> None:
        """Record one kind of an async ideation batch; store it in the same transaction as its ideas."""
        self.execute("INSERT INTO batches(batch, kind, generation, finished, exploit_share, asked, returned, kept, "
                     "ideator, created) VALUES (?,?,?,?,?,?,?,?,?,?)",
                     (batch, kind, generation, finished, exploit_share, asked, returned, kept, ideator, time.time()))

    def batches(self) -> list[dict[str, Any]]:
        """Every async ideation batch, one row per (batch, kind), in the order asked."""
        return [dict(r) for r in self.execute("SELECT * FROM batches ORDER BY batch, kind").fetchall()]

    def set_confirm_set(self, implementation_ids: list[int]) -> None:
        """The implementations chosen for confirmation, chosen once: a resume confirms the same set."""
        self.set_meta("confirm_set", [int(i) for i in implementation_ids])

    def confirm_set(self) -> list[int] | None:
        return self.get_meta("confirm_set")

    # -- model calls -------------------------------------------------------------
    def add_llm_call(self, rec: Any) -> int:
        cur = self.execute(
            """INSERT INTO llm_calls(model, purpose, system, messages, reply, input_tokens, output_tokens,
                   cost_usd, latency_s, attempts, error, started_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)""",
            (
                rec.model, rec.purpose, rec.system, json.dumps(rec.messages), rec.reply, rec.input_tokens,
                rec.output_tokens, rec.cost_usd, rec.latency_s, rec.attempts, rec.error, rec.started_at,
            ),
        )
        return int(cur.lastrowid)

    def trial_hours(self) -> float:
        """Hours of trial time (training + evaluation) so far; times the env's cpus/gpus gives CPU-/GPU-hours."""
        row = self.execute("SELECT COALESCE(SUM(COALESCE(train_s, 0) + COALESCE(eval_s, 0)), 0) FROM trials").fetchone()
        return float(row[0]) / 3600

    def llm_spend(self) -> float:
        return float(self.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM llm_calls").fetchone()[0])

    def llm_totals(self) -> dict[str, float]:
        """Model calls so far: {"calls", "cost_usd", "input_tokens", "output_tokens"}."""
        row = self.execute("SELECT COUNT(*), COALESCE(SUM(cost_usd), 0), COALESCE(SUM(input_tokens), 0), "
                           "COALESCE(SUM(output_tokens), 0) FROM llm_calls").fetchone()
        return {"calls": row[0], "cost_usd": float(row[1]), "input_tokens": row[2], "output_tokens": row[3]}

    def llm_usage_by_model(self) -> list[dict[str, Any]]:
        """One row per model: calls, input_tokens, output_tokens, cost_usd; most expensive first."""
        return [dict(r) for r in self.execute(
            """SELECT model, COUNT(*) AS calls, SUM(input_tokens) AS input_tokens,
                      SUM(output_tokens) AS output_tokens, SUM(cost_usd) AS cost_usd
               FROM llm_calls GROUP BY model ORDER BY SUM(cost_usd) DESC, model""").fetchall()]

    def rl_step_rows(self) -> list[dict[str, Any]]:
        """The steps of an RL run (empty for a search campaign), oldest first: step, status, stats (parsed
        JSON; a done step's figures are stats["analysis"]), adapter, created, updated, and the step's
        rollouts so far per rollout status (`rollouts`: {status: n})."""
        counts: dict[int, dict[str, int]] = {}
        for step, status, n in self.execute("SELECT step, status, COUNT(*) FROM rl_rollouts GROUP BY step, status"):
            counts.setdefault(step, {})[status] = n
        rows = self.execute("SELECT step, status, stats, adapter, created, updated FROM rl_steps ORDER BY step")
        return [dict(r) | {"stats": json.loads(r["stats"]), "rollouts": counts.get(r["step"], {})} for r in rows]

    def progress_counters(self) -> dict[str, Any]:
        """Cheap counters that change whenever anything a view shows changes (the live view polls them)."""
        t = self.execute(
            """SELECT COUNT(*), COALESCE(SUM(status='done'), 0), COALESCE(SUM(status='running'), 0),
                      COALESCE(SUM(status='queued'), 0), MAX(CASE WHEN status='done' THEN id END),
                      MAX(ended), MAX(started), COALESCE(SUM(attempt), 0) FROM trials""").fetchone()
        ideas = self.execute("SELECT COUNT(*), MAX(id) FROM ideas").fetchone()
        impls = self.execute("SELECT COUNT(*) FROM implementations").fetchone()
        statuses = self.execute("SELECT GROUP_CONCAT(status) FROM (SELECT status FROM ideas ORDER BY id)").fetchone()
        calls = self.execute("SELECT COUNT(*), COALESCE(SUM(cost_usd), 0) FROM llm_calls").fetchone()
        rl = self.execute("SELECT MAX(updated) FROM rl_steps").fetchone()  # an RL step changing stage
        return {"trials": t[0], "trials_done": t[1], "trials_running": t[2], "trials_queued": t[3],
                "last_trial": t[4], "last_ended": t[5], "last_started": t[6], "requeues": t[7],
                "ideas": ideas[0], "implementations": impls[0], "idea_statuses": statuses[0],
                "llm_calls": calls[0], "llm_cost": calls[1], "rl_updated": rl[0]}


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error (autocommit connection otherwise)."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock, disk_errors):
        self.conn = conn
        self.lock = lock
        self.disk_errors = disk_errors  # maps a full disk to DiskFull

    def __enter__(self):
        self.lock.acquire()
        try:
            with self.disk_errors():
                self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type:
                if self.conn.in_transaction:  # SQLite may have rolled back already (a full disk)
                    self.conn.execute("ROLLBACK")
            else:
                try:
                    with self.disk_errors():
                        self.conn.execute("COMMIT")
                except BaseException:
                    if self.conn.in_transaction:  # a failed COMMIT can leave it open
                        self.conn.execute("ROLLBACK")
                    raise
        finally:
            self.lock.release()
        return False


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def _split_sql(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip() and not all(
        line.strip().startswith("--") or not line.strip() for line in s.splitlines())]


def _trial_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["metrics"] = json.loads(d["metrics"] or "{}")
    d["curve"] = json.loads(d["curve"] or "[]")
    return d
