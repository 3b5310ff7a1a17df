"""Replay: answer model calls from a campaign's recorded calls instead of a model.

The model `replay:DIR` (DIR a campaign directory holding campaign.db) is a provider
like any other: `complete("replay:DIR", messages, system=...)` returns the reply that
was recorded for the same request, so the ideator, the implementer and RL run
unchanged, with no key and no network.

What makes two calls "the same": what the model saw, i.e. the system prompt and the
messages (role and content), hashed together. The model, max_tokens, temperature and
thinking settings are left out (a replay answers for any model), and so is the
purpose label (ours, not the model's). A campaign is deterministic given its replies,
seeds and results, so a faithful replay sends the same prompts in the same order.

Identical requests (the implementer samples S times in parallel with one prompt) keep
one queue per hash, answered in the order they were recorded. A recorded failure is
replayed as the same LLMError. A request that was never recorded (or asked more often
than recorded) is a miss: an LLMError naming the purpose, the nearest recorded prompt
and the first place they differ, and saying that replay cannot call a model. Misses
are also kept in `Replayer.misses`, because the implementer turns a failed call into
a failed implementation and the campaign goes on; the CLI reports them at the end.

Replayed calls cost $0; their recorded token counts are returned (and so recorded
again in the replaying campaign, under the model `replay:DIR`).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ideaforge.errors import LLMError

DB_NAME = "campaign.db"  # as ideaforge.store names it (llm/ may not import the store: a lower layer)
PREFIX = "replay:"


@dataclass(frozen=True)
class Recorded:
    """One recorded call, as the campaign's llm_calls table holds it."""

    id: int
    model: str
    purpose: str
    system: str | None
    messages: list[dict]
    reply: str | None  # None: the call failed, with `error`
    input_tokens: int
    output_tokens: int
    error: str | None


def request_text(system: str | None, messages: list[dict]) -> str:
    """The part of a request a replay matches on, as one canonical string."""
    msgs = [{"role": m.get("role"), "content": m.get("content")} for m in messages]
    return json.dumps({"system": system, "messages": msgs}, sort_keys=True, ensure_ascii=False)


def request_hash(system: str | None, messages: list[dict]) -> str:
    return hashlib.sha256(request_text(system, messages).encode()).hexdigest()


def replay_model(directory: str | Path) -> str:
    """The model spec that replays `directory` (made absolute, so a resume from elsewhere finds it)."""
    return PREFIX + str(Path(directory).expanduser().resolve())


def check_dir(directory: str | Path) -> Path:
    """The campaign directory, or LLMError if it holds no campaign.db with recorded calls."""
    root = Path(directory).expanduser().resolve()
    if not (root / DB_NAME).is_file():
        raise LLMError(f"cannot replay {directory}: it holds no {DB_NAME} (give a campaign directory made by "
                       f"`ideaforge run`, `implement` or `rl`)")
    return root


class Replayer:
    """The recorded calls of one campaign, one queue of replies per request hash."""

    def __init__(self, directory: str | Path):
        self.root = check_dir(directory)
        self.calls = _load(self.root / DB_NAME)
        self._queues: dict[str, deque[Recorded]] = {}
        for c in self.calls:  # in recorded order (the table's ids)
            self._queues.setdefault(request_hash(c.system, c.messages), deque()).append(c)
        self._lock = threading.Lock()
        self.answered = 0
        self.misses: list[str] = []

    def answer(self, system: str | None, messages: list[dict], purpose: str = "") -> tuple[str, int, int]:
        """(reply, recorded input tokens, recorded output tokens); LLMError on a miss or a recorded failure."""
        h = request_hash(system, messages)
        with self._lock:
            q = self._queues.get(h)
            rec = q.popleft() if q else None
            if rec is None:
                msg = self._miss_message(system, messages, purpose, exhausted=q is not None)
                self.misses.append(msg)
            else:
                self.answered += 1
        if rec is None:
            raise LLMError(msg)
        if rec.reply is None:
            raise LLMError(f"replayed failure of recorded call {rec.id} ({rec.purpose}): {rec.error}")
        return rec.reply, rec.input_tokens, rec.output_tokens

    def _miss_message(self, system, messages, purpose: str, exhausted: bool) -> str:
        head = (f"replay miss ({purpose or 'no purpose'}): ")
        tail = (f" Replay answers only recorded requests and cannot call a model; replay with the settings "
                f"the recorded campaign used ({self.root}), or run with a real --model.")
        if exhausted:
            n = sum(1 for c in self.calls if request_hash(c.system, c.messages) == request_hash(system, messages))
            return head + f"this request was recorded {n} time(s) and all were already answered." + tail
        near = self.nearest(system, messages, purpose)
        if near is None:
            return head + f"{self.root / DB_NAME} holds no recorded calls." + tail
        return (head + f"no recorded call has this prompt. Nearest recorded call: {near.id} ({near.purpose}); "
                f"first difference: {first_difference(near, system, messages)}."
                + tail)

    def nearest(self, system, messages, purpose: str = "") -> Recorded | None:
        """The recorded call most like this request: same purpose first, then the longest common prefix."""
        if not self.calls:
            return None
        text = request_text(system, messages)
        same = [c for c in self.calls if c.purpose == purpose] or self.calls
        return max(same, key=lambda c: _common_prefix(request_text(c.system, c.messages), text))


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def first_difference(recorded: Recorded, system: str | None, messages: list[dict]) -> str:
    """Where a request first differs from a recorded one: the part (system, message N), the line, both texts."""
    if recorded.system != system:
        return f"the system prompt, {_line_difference(recorded.system, system)}"
    for i, (old, new) in enumerate(zip(recorded.messages, messages)):
        if old.get("role") != new.get("role"):
            return f"message {i + 1} is from the {old.get('role')} in the recording, from the {new.get('role')} now"
        if old.get("content") != new.get("content"):
            return f"message {i + 1} ({new.get('role')}), {_line_difference(old.get('content'), new.get('content'))}"
    if len(recorded.messages) != len(messages):
        return f"the recorded call has {len(recorded.messages)} message(s), this request {len(messages)}"
    return "none (the same request)"


def _line_difference(old: str | None, new: str | None) -> str:
    if old is None or new is None:
        return f"recorded {'none' if old is None else 'one'}, now {'none' if new is None else 'one'}"
    a, b = old.splitlines(), new.splitlines()
    i = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
    was = a[i] if i < len(a) else "(end of text)"
    now = b[i] if i < len(b) else "(end of text)"
    return f"line {i + 1}: recorded {_clip(was)!r}, now {_clip(now)!r}"


def _clip(line: str, n: int = 160) -> str:
    return line if len(line) <= n else line[:n] + "..."


def _load(db: Path) -> list[Recorded]:
    """Every recorded call, oldest first, read-only (the recorded campaign may be running or finished)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT id, model, purpose, system, messages, reply, input_tokens, output_tokens, error "
                               "FROM llm_calls ORDER BY id").fetchall()
        finally:
            con.close()
    except sqlite3.Error as e:
        raise LLMError(f"cannot replay {db}: cannot read its recorded model calls: {e}") from None
    return [Recorded(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], int(r[6] or 0), int(r[7] or 0), r[8])
            for r in rows]


# -- one Replayer per directory per process: the queues must persist across calls ---------------
_replayers: dict[Path, Replayer] = {}
_replayers_lock = threading.Lock()


def replayer(directory: str | Path, fresh: bool = False) -> Replayer:
    """The process's Replayer of `directory`; `fresh` starts its queues over (a new replay run)."""
    root = check_dir(directory)
    with _replayers_lock:
        r = _replayers.get(root)
        if r is None or fresh:
            r = _replayers[root] = Replayer(root)
        return r
