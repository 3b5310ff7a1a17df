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
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from ideaforge.errors import StoreError

DB_NAME = "campaign.db"

# Numbered migrations: index i brings the schema from version i to i+1. Never edit a
# shipped entry; append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE env_files (
        path TEXT PRIMARY KEY, cls TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL
    );
    CREATE TABLE ideas (
        id INTEGER PRIMARY KEY,
        epoch INTEGER NOT NULL,
        kind TEXT NOT NULL,              -- initial | exploit | explore | best_of_n | manual
        title TEXT NOT NULL,
        description TEXT NOT NULL,
        code_changes TEXT NOT NULL DEFAULT '',
        parents TEXT NOT NULL DEFAULT '[]',  -- JSON list of idea ids
        origin TEXT NOT NULL DEFAULT '{}',   -- JSON: model, prompt kind, ideator
        status TEXT NOT NULL DEFAULT 'new',  -- new | implementing | implemented | implement_failed
        created REAL NOT NULL
    );
    CREATE TABLE implementations (
        id INTEGER PRIMARY KEY,
        idea_id INTEGER REFERENCES ideas(id),
        status TEXT NOT NULL,            -- ok | implement_failed
        diff TEXT NOT NULL DEFAULT '',
        files TEXT NOT NULL DEFAULT '{}',    -- JSON {path: new content | null for deleted}
        attempts TEXT NOT NULL DEFAULT '[]', -- JSON list of attempt records
        error TEXT,
        created REAL NOT NULL
    );
    CREATE TABLE trials (
        id INTEGER PRIMARY KEY,
        implementation_id INTEGER REFERENCES implementations(id),  -- NULL: the baseline
        role TEXT NOT NULL,              -- baseline | candidate | confirm | check
        seed INTEGER NOT NULL,
        budget_s REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'queued',  -- queued | running | done
        outcome TEXT,                    -- evaluated | failed | timeout | oom | diverged | no_result | invalid
        metric REAL,
        metrics TEXT NOT NULL DEFAULT '{}',
        curve TEXT NOT NULL DEFAULT '[]',
        reason TEXT,
        exit_code INTEGER,
        train_s REAL,
        eval_s REAL,
        pid INTEGER,
        attempt INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        started REAL,
        ended REAL
    );
    CREATE INDEX trials_status ON trials(status);
    CREATE TABLE llm_calls (
        id INTEGER PRIMARY KEY,
        model TEXT NOT NULL,
        purpose TEXT NOT NULL,
        system TEXT,
        messages TEXT NOT NULL,
        reply TEXT,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL NOT NULL DEFAULT 0,
        latency_s REAL NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 1,
        error TEXT,
        started_at REAL NOT NULL
    );
    """,
    # 2: how each trial was isolated ("bubblewrap" | "none") and its harness-measured CPU seconds
    """
    ALTER TABLE trials ADD COLUMN isolation TEXT;
    ALTER TABLE trials ADD COLUMN train_cpu_s REAL;
    """,
]

TRIAL_FIELDS = (
    "id", "implementation_id", "role", "seed", "budget_s", "status", "outcome", "metric",
    "metrics", "curve", "reason", "exit_code", "train_s", "eval_s", "pid", "attempt",
    "created", "started", "ended", "isolation", "train_cpu_s",
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
        return _Tx(self.conn, self.lock)

    def execute(self, sql: str, args: tuple | list = ()) -> sqlite3.Cursor:
        with self.lock:
            return self.conn.execute(sql, args)

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

    def set_env_files(self, rows: Iterable[tuple[str, str, str, int]]) -> None:
        with self.tx():
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

    def trials(self, *, status: str | None = None, role: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM trials WHERE 1=1", []
        if status:
            sql, args = sql + " AND status = ?", args + [status]
        if role:
            sql, args = sql + " AND role = ?", args + [role]
        with self.lock:
            rows = self.conn.execute(sql + " ORDER BY id", args).fetchall()
        return [_trial_dict(r) for r in rows]

    def mark_running(self, trial_id: int, pid: int | None = None) -> None:
        self.execute(
            "UPDATE trials SET status='running', pid=?, started=? WHERE id=? AND status IN ('queued','running')",
            (pid, time.time(), trial_id),
        )

    def set_pid(self, trial_id: int, pid: int) -> None:
        self.execute("UPDATE trials SET pid=? WHERE id=?", (pid, trial_id))

    def requeue(self, trial_id: int) -> None:
        self.execute(
            "UPDATE trials SET status='queued', pid=NULL, started=NULL, attempt=attempt+1 WHERE id=? AND status='running'",
            (trial_id,),
        )

    def finish_trial(self, trial_id: int, record: dict[str, Any]) -> bool:
        """Ingest a worker's record once. Returns False when the trial was already done."""
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

    def add_implementation(self, idea_id: int | None, ok: bool, diff: str, files: dict, attempts: list,
                           error: str | None) -> int:
        cur = self.execute(
            """INSERT INTO implementations(idea_id, status, diff, files, attempts, error, created)
               VALUES (?, ?, ?, ?, ?, ?, ?)""",
            (idea_id, "ok" if ok else "implement_failed", diff, json.dumps(files), json.dumps(attempts), error, time.time()),
        )
        return int(cur.lastrowid)

    def implementations(self, idea_id: int | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM implementations", []
        if idea_id is not None:
            sql, args = sql + " WHERE idea_id = ?", [idea_id]
        with self.lock:
            rows = self.conn.execute(sql + " ORDER BY id", args).fetchall()
        return [dict(r) | {"files": json.loads(r["files"]), "attempts": json.loads(r["attempts"])} for r in rows]

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


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error (autocommit connection otherwise)."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock):
        self.conn = conn
        self.lock = lock

    def __enter__(self):
        self.lock.acquire()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        try:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.lock.release()
        return False


def _split_sql(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip() and not all(
        line.strip().startswith("--") or not line.strip() for line in s.splitlines())]


def _trial_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["metrics"] = json.loads(d["metrics"] or "{}")
    d["curve"] = json.loads(d["curve"] or "[]")
    return d
