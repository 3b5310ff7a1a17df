"""Reading and writing the RL tables (rl_steps, rl_rollouts; migration 2 of `ideaforge.store`)."""

from __future__ import annotations

import json
import time
from typing import Any

from ideaforge.store import Store

STAGES = ("generating", "executing", "updating", "done")


def step_row(store: Store, step: int) -> dict[str, Any] | None:
    row = store.execute("SELECT * FROM rl_steps WHERE step=?", (step,)).fetchone()
    if row is None:
        return None
    return dict(row) | {"stats": json.loads(row["stats"])}


def steps(store: Store) -> list[dict[str, Any]]:
    rows = store.execute("SELECT * FROM rl_steps ORDER BY step").fetchall()
    return [dict(r) | {"stats": json.loads(r["stats"])} for r in rows]


def open_step(store: Store, step: int, prompt: str) -> dict[str, Any]:
    """The step's row, created in stage `generating` when it does not exist yet."""
    now = time.time()
    store.execute("INSERT OR IGNORE INTO rl_steps(step, status, prompt, created, updated) VALUES (?, 'generating', ?, ?, ?)",
                  (step, prompt, now, now))
    return step_row(store, step)  # type: ignore[return-value]


def set_stage(store: Store, step: int, status: str, stats: dict | None = None, adapter: str | None = None) -> None:
    assert status in STAGES, status
    sets, args = ["status=?", "updated=?"], [status, time.time()]
    if stats is not None:
        sets.append("stats=?")
        args.append(json.dumps(stats))
    if adapter is not None:
        sets.append("adapter=?")
        args.append(adapter)
    store.execute(f"UPDATE rl_steps SET {', '.join(sets)} WHERE step=?", args + [step])


def rollouts(store: Store, step: int | None = None) -> list[dict[str, Any]]:
    sql, args = "SELECT * FROM rl_rollouts", []
    if step is not None:
        sql, args = sql + " WHERE step=?", [step]
    rows = store.execute(sql + " ORDER BY step, idx", args).fetchall()
    return [dict(r) | {"token_ids": json.loads(r["token_ids"])} for r in rows]


def add_rollout(store: Store, step: int, idx: int, llm_call_id: int, text: str, token_ids: list[int],
                thinking_tokens: int) -> None:
    store.execute(
        """INSERT INTO rl_rollouts(step, idx, llm_call_id, text, token_ids, n_tokens, thinking_tokens)
           VALUES (?, ?, ?, ?, ?, ?, ?)""",
        (step, idx, llm_call_id, text, json.dumps(token_ids), len(token_ids), thinking_tokens))


def set_rollout(store: Store, rollout_id: int, **cols: Any) -> None:
    keys = sorted(cols)
    store.execute(f"UPDATE rl_rollouts SET {', '.join(k + '=?' for k in keys)} WHERE id=?",
                  [cols[k] for k in keys] + [rollout_id])
