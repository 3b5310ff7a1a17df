"""A synthetic landscape for RL tests: two settings, a score in milliseconds, a catalogue idea.

score = 10 - log2(LR / 0.4)^2 - log2(WIDTH / 32)^2 (+ 1 with the catalogue's "Add bias"),
so each doubling of LR from 0.1 and of WIDTH from 8 helps. `sleep_s` keeps each trial
running that long (SLEEP_S is harness plumbing to the numeric ideator: not a setting);
`runs_log` gets one line per trial that ran (the test harness runs trials unjailed).
"""

from __future__ import annotations

from pathlib import Path

TRAIN = """import json, math, os, time
LR = 0.1  # learning rate
WIDTH = 8  # channels
BIAS = 0.0
SLEEP_S = {sleep_s!r}
RUNS_LOG = {runs_log!r}
if RUNS_LOG:
    with open(RUNS_LOG, "a") as f:
        f.write(f"{{LR}} {{WIDTH}} {{BIAS}}\\n")
time.sleep(SLEEP_S)
score = 10.0 - math.log2(LR / 0.4) ** 2 - math.log2(WIDTH / 32) ** 2 + BIAS
print(f"METRIC step=1 score={{score:.4f}}", flush=True)
json.dump({{"score": score}}, open(os.path.join(os.environ["IDEAFORGE_OUT"], "ckpt.json"), "w"))
"""

EVALUATE = """import json, os
ck = json.load(open(os.path.join(os.environ["IDEAFORGE_OUT"], "ckpt.json")))
json.dump({"status": "ok", "metrics": {"score": ck["score"]}}, open(os.environ["IDEAFORGE_RESULT"], "w"))
"""

CATALOGUE = '''[[idea]]
id = "bias"
title = "Add bias"
description = "Add a constant bias to the score."
edit = """train.py
<<<<<<< SEARCH
BIAS = 0.0
=======
BIAS = 1.0
>>>>>>> REPLACE
"""
'''


def make_rl_env(root: Path, sleep_s: float = 0.0, runs_log: Path | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.py").write_text(TRAIN.format(sleep_s=float(sleep_s), runs_log=str(runs_log) if runs_log else ""))
    (root / "evaluate.py").write_text(EVALUATE)
    (root / "catalogue").mkdir(exist_ok=True)
    (root / "catalogue" / "ideas.toml").write_text(CATALOGUE)
    (root / "ideaforge.toml").write_text("""
[env]
name = "rl-landscape"
description = "Tune two settings."

[files]
editable = ["train.py"]
hidden = ["evaluate.py"]

[run]
command = "python train.py"
budget_s = 5
timeout_s = 60

[evaluate]
command = "python evaluate.py"

[metric]
name = "score"
goal = "max"
""")
    return root
