"""A policy that answers from a script: for loop tests that need no model library.

It has the interface `rl.loop.RLRun` uses (encode_prompt, sample, update, save, base);
`sample` returns the next texts of the script, and every call is kept for assertions.
"""

from __future__ import annotations

import json
from pathlib import Path

from ideaforge.rl.policy import Rollout


class ScriptedPolicy:
    base = "scripted"

    def __init__(self, script: list[str], log: list):
        self.script = script
        self.log = log  # shared across instances: ("sample", prompt, n) / ("update", advantages) / ("load", adapter)

    def encode_prompt(self, prompt: str, prefix: str = "") -> list[int]:
        return [ord(c) for c in prompt + prefix]

    def sample(self, prompt: str, n: int, *, max_new_tokens: int, temperature: float, seed: int,
               prefix: str = "") -> list[Rollout]:
        done = sum(e[2] for e in self.log if e[0] == "sample")
        self.log.append(("sample", prompt, n))
        texts = [self.script[(done + k) % len(self.script)] for k in range(n)]
        return [Rollout(prefix + t, [ord(c) for c in t][:max_new_tokens], 0) for t in texts]

    def update(self, prompt_ids, completions, advantages, aggregation="token", micro_batch=4) -> dict:
        self.log.append(("update", list(advantages)))
        return {"loss": 0.0, "grad_norm": 0.0, "rollouts_used": sum(a != 0 for a in advantages), "tokens": 1}

    def save(self, dest: Path, sampling: dict | None = None) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "scripted.json").write_text(json.dumps({"updates": sum(e[0] == "update" for e in self.log)}))


def scripted_loader(script: list[str], log: list):
    def load(ideator: str, adapter: str | None):
        log.append(("load", adapter))
        return ScriptedPolicy(script, log)
    return load
