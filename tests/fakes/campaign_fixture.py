"""A synthetic campaign written through the Store API, for report and UI tests.

`build_campaign(dir)` lays out what the search loop would have left after a few epochs
(env snapshot, meta, baseline seeds, ideas with lineage, implementations that passed
or failed, trials of every outcome with learning curves and logs, model calls) without
running anything. Values are deterministic for a given `seed`.
"""

from __future__ import annotations

import difflib
import random
import time
from pathlib import Path
from types import SimpleNamespace

from ideaforge.store import Store

INJECTION_TITLE = "<script>alert(1)</script> bigger batch"
INJECTION_DESC = 'Try <img src=x onerror="alert(2)"> and see https://example.com/x.js'

ENV_TOML = """
[env]
name = "synthetic-gpt"
description = "A synthetic campaign for report tests: lower val_loss is better."

[files]
editable = ["train.py"]
hidden = ["evaluate.py"]

[run]
command = "python train.py"
budget_s = 60
timeout_s = 180

[evaluate]
command = "python evaluate.py"

[metric]
name = "val_loss"
goal = "min"

[resources]
cpus = 2
gpus = 1
"""

TRAIN_PY = "".join(f"line {k}\n" for k in range(12)).replace("line 3", "lr = 1e-3").replace("line 7", "batch = 32")

# Trial outcomes the loop records besides `evaluated`, cycled through the failing ideas.
FAIL_OUTCOMES = [("failed", "exit code 1: RuntimeError: shape mismatch"), ("timeout", "killed after 180 s"),
                 ("invalid", "the evaluator found a causality leak"), ("diverged", "loss became nan at step 40")]


def build_campaign(root: Path, *, epochs: int = 3, ideas: int = 5, seed: int = 0, mode: str = "evolve",
                   finished: bool = True) -> Path:
    rng = random.Random(seed)
    store = Store.create_or_open(root)
    (store.env_dir).mkdir(parents=True, exist_ok=True)
    (store.env_dir / "ideaforge.toml").write_text(ENV_TOML)
    (store.env_dir / "train.py").write_text(TRAIN_PY)
    store.set_meta("env_name", "synthetic-gpt")
    store.set_env_facts({"name": "synthetic-gpt", "metric": "val_loss", "goal": "min", "budget_s": 60,
                         "timeout_s": 180, "cpus": 2, "gpus": 1, "profile": None,
                         "description": "A synthetic campaign for report tests: lower val_loss is better."})
    store.set_meta("env_root", str(root / "gone"))
    store.set_meta("created", time.time() - 3600)
    store.set_meta("config", {"command": "run", "search": {"mode": mode, "epochs": epochs, "ideas": ideas,
                                                            "model": "fake-model-1", "budget_s": 60}})
    for s in range(3):
        _trial(store, None, "baseline", s, 2.0 + rng.gauss(0, 0.01), "evaluated", None)
    fail_k, winners = 0, []
    for epoch in range(epochs):
        for k in range(ideas):
            kind = "best_of_n" if mode == "best-of-n" else ("initial" if epoch == 0 else ("exploit" if k % 2 else "explore"))
            parents = rng.sample(winners, min(2, len(winners))) if kind == "exploit" and winners else []
            title = INJECTION_TITLE if (epoch, k) == (0, 1) else f"idea e{epoch}k{k}: tweak lr x{1 + k / 10:.1f}"
            desc = INJECTION_DESC if (epoch, k) == (0, 1) else f"Change the learning rate by a factor of {1 + k / 10:.1f}."
            idea_id = store.add_idea(epoch, kind, title, desc, "edit train.py", parents,
                                     {"model": "fake-model-1", "prompt": kind, "ideator": "fixture"})
            if (epoch + k) % 5 == 4:  # about one in five ideas never becomes code
                store.add_implementation(idea_id, False, "", {}, [
                    {"sample": 0, "round": 0, "stage": "apply", "error": "search text not found: 'lr = 3e-4'", "seconds": 1.5},
                    {"sample": 0, "round": 1, "stage": "syntax", "error": "line 3: invalid syntax", "seconds": 2.0}],
                    "no sample produced an edit that applies")
                store.set_idea_status(idea_id, "implement_failed")
                continue
            diff = make_diff(epoch, k)
            impl = store.add_implementation(idea_id, True, diff, {"train.py": "..."},
                                            [{"sample": 0, "round": 0, "stage": "ok", "error": None, "seconds": 3.2}], None)
            store.set_idea_status(idea_id, "implemented")
            if (epoch * ideas + k) % 4 == 3:
                outcome, reason = FAIL_OUTCOMES[fail_k % len(FAIL_OUTCOMES)]
                fail_k += 1
                _trial(store, impl, "candidate", 0, None, outcome, reason)
                continue
            value = 2.0 - 0.04 * epoch - 0.015 * k + rng.gauss(0, 0.02)
            _trial(store, impl, "candidate", 0, value, "evaluated", None)
            if value < 1.95:
                winners.append(idea_id)
    if finished:
        # Confirmation seeds for the two best, as the loop's confirm() would add.
        best = sorted(((t["metric"], t["implementation_id"]) for t in store.trials(role="candidate")
                       if t["outcome"] == "evaluated"))[:2]
        for metric, impl in best:
            for s in (1, 2):
                _trial(store, impl, "confirm", s, metric + rng.gauss(0, 0.01), "evaluated", None)
        store.set_meta("finished", True)
    store.set_meta("epochs_done", epochs)
    store.set_meta("elapsed_s", 5025.0)
    for purpose, cost in (("ideate", 0.12), ("implement", 0.31), ("implement", 0.05)):
        store.add_llm_call(SimpleNamespace(model="fake-model-1", purpose=purpose, system=None, messages=[],
                                           reply="ok", input_tokens=1200, output_tokens=300, cost_usd=cost,
                                           latency_s=1.0, attempts=1, error=None, started_at=time.time()))
    store.close()
    return root


def make_diff(epoch: int, k: int) -> str:
    after = TRAIN_PY.replace("lr = 1e-3", f"lr = {1e-3 * (1 + k / 10):.2e}  # idea e{epoch}k{k}")
    after = after.replace("line 9\n", "line 9\nif x < y and y > z:  # </pre><b>not bold</b>\n")
    return "".join(difflib.unified_diff(TRAIN_PY.splitlines(True), after.splitlines(True), "a/train.py", "b/train.py"))


def _trial(store: Store, impl: int | None, role: str, seed: int, metric: float | None, outcome: str,
           reason: str | None) -> int:
    tid = store.add_trial(role, seed=seed, budget_s=60, implementation_id=impl)
    store.claim(tid)
    store.set_pid(tid, 1)
    start = 2.3 if metric is None else metric + 0.8
    curve = [{"step": s * 10, "train_loss": start - (0.8 if metric else 0.3) * (1 - 0.7 ** s)} for s in range(8)]
    tdir = store.trial_dir(tid)
    tdir.mkdir(parents=True, exist_ok=True)
    (tdir / "train.out").write_text("".join(f"METRIC step={p['step']} train_loss={p['train_loss']:.4f}\n" for p in curve))
    if outcome != "evaluated":
        (tdir / "train.err").write_text("Traceback (most recent call last):\n  File \"train.py\", line 3\n"
                                        f"RuntimeError: {reason} <b>&amp;</b>\n")
    store.finish_trial(tid, {"outcome": outcome, "metric": metric, "curve": curve, "reason": reason,
                             "train_s": 60.0, "eval_s": 5.0, "exit_code": 0 if metric is not None else 1})
    return tid


def add_finished_idea(root: Path, title: str, metric: float, epoch: int = 0) -> tuple[int, int]:
    """What the live view should pick up: one more idea whose candidate trial just finished."""
    store = Store.create_or_open(root)
    try:
        idea_id = store.add_idea(epoch, "explore", title, "added while the page was open")
        impl = store.add_implementation(idea_id, True, make_diff(epoch, 9), {"train.py": "..."}, [], None)
        store.set_idea_status(idea_id, "implemented")
        tid = _trial(store, impl, "candidate", 0, metric, "evaluated", None)
        return idea_id, tid
    finally:
        store.close()
