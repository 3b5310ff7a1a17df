"""A toy environment that trains in milliseconds, with knobs for every way a trial can end.

`make_toy_env(tmp, train=...)` writes an environment directory whose train.py is the
given code (default: write a checkpoint holding a score derived from the seed) and
whose hidden evaluate.py scores the checkpoint. Tests pass train code that hangs,
crashes, forks, leaks, or writes its own results.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

DEFAULT_TRAIN = """
import json, os, time
out = os.environ["IDEAFORGE_OUT"]
seed = int(os.environ["IDEAFORGE_SEED"])
for step in range(3):
    print(f"METRIC step={step} loss={1.0 / (step + 1):.3f}", flush=True)
time.sleep(float(os.environ.get("TOY_SLEEP", "0")))
json.dump({"score": 1.0 + 0.01 * seed, "x": X}, open(os.path.join(out, "ckpt.json"), "w"))
"""

EVALUATE = """
import json, os
out = os.environ["IDEAFORGE_OUT"]
result = os.environ["IDEAFORGE_RESULT"]
secret = open("eval_secret.txt").read().strip()   # hidden data only the evaluator reads
try:
    ck = json.load(open(os.path.join(out, "ckpt.json")))
except FileNotFoundError:
    json.dump({"status": "no_result", "reason": "no checkpoint"}, open(result, "w")); raise SystemExit(0)
if ck.get("leak"):
    json.dump({"status": "invalid", "reason": "the model peeked"}, open(result, "w")); raise SystemExit(0)
json.dump({"status": "ok", "metrics": {"score": ck["score"] + ck.get("x", 0) + 0 * len(secret)}}, open(result, "w"))
"""


def make_toy_env(root: Path, train: str | None = None, *, budget_s: float = 5, timeout_s: float = 30,
                 extra_toml: str = "", x: float = 0.0, cpus: int = 1, gpus: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    code = textwrap.dedent(train) if train else DEFAULT_TRAIN.replace("X", repr(x))
    (root / "train.py").write_text(code)
    (root / "helper.py").write_text("# a visible, read-only helper\nVALUE = 1\n")
    (root / "evaluate.py").write_text(EVALUATE)
    (root / "eval_secret.txt").write_text("held-out\n")
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "train.txt").write_text("training data\n")
    (root / "ideaforge.toml").write_text(f"""
[env]
name = "toy"
description = "A toy problem: maximise the score."

[files]
editable = ["train.py"]
visible = ["helper.py"]
hidden = ["evaluate.py", "eval_secret.txt"]
data = ["data"]

[run]
command = "python train.py"
budget_s = {budget_s}
timeout_s = {timeout_s}

[evaluate]
command = "python evaluate.py"
timeout_s = 30

[metric]
name = "score"
goal = "max"

[resources]
cpus = {cpus}
gpus = {gpus}
{extra_toml}
""")
    return root
