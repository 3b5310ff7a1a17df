"""The built-in nanogpt-cpu environment: real training and evaluation processes, no mocks."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ideaforge.envs import load_env

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def env():
    return load_env("nanogpt-cpu")


def _vocab_size(env) -> int:
    return len(set((env.root / "data" / "train.txt").read_text(encoding="utf-8")))


def train_and_evaluate(env, tmp_path: Path, budget_s: float, train_source: str | None = None, train: bool = True) -> dict:
    """Run train.py in a fresh workspace, then evaluate.py in a separate directory; return the result JSON."""
    ws, ev, out = tmp_path / "ws", tmp_path / "ev", tmp_path / "out"
    ws.mkdir()
    out.mkdir()
    (ws / "train.py").write_text(train_source if train_source is not None else (env.root / "train.py").read_text())
    (ws / "data").symlink_to(env.root / "data")
    for rel in env.hidden_files:
        (ev / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(env.root / rel, ev / rel)
    base = {k: v for k, v in os.environ.items() if not k.startswith("IDEAFORGE_")}
    base.update(IDEAFORGE_OUT=str(out), IDEAFORGE_DATA=str(env.root / "data"), IDEAFORGE_SEED="0",
                IDEAFORGE_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if train:
        r = subprocess.run([sys.executable, "train.py"], cwd=ws, capture_output=True, text=True, timeout=600,
                           env={**base, "IDEAFORGE_BUDGET_S": str(budget_s)})
        assert r.returncode == 0, r.stdout + r.stderr
        assert (out / "ckpt.pt").is_file()
    result = tmp_path / "result.json"
    r = subprocess.run([sys.executable, "evaluate.py"], cwd=ev, capture_output=True, text=True, timeout=120,
                       env={**base, "IDEAFORGE_WORKSPACE": str(ws), "IDEAFORGE_RESULT": str(result)})
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(result.read_text())


def test_env_loads_and_splits_files(env):
    assert env.name == "nanogpt-cpu"
    assert env.editable_files == ("train.py",)
    assert set(env.hidden_files) == {"evaluate.py", "eval/val.txt"}
    assert env.data_paths == ("data",)
    assert env.metric == "val_loss" and env.goal == "min"
    assert env.classify("eval/val.txt") == "hidden" and env.classify("data/train.txt") == "data"
    # The validation text is covered by the training vocabulary.
    train_chars = set((env.root / "data" / "train.txt").read_text(encoding="utf-8"))
    assert set((env.root / "eval" / "val.txt").read_text(encoding="utf-8")) <= train_chars


@pytest.mark.slow
def test_baseline_trains_and_scores(env, tmp_path):
    from fakes.steps import by_steps

    # 60 steps, not 10 s of the clock: the loss threshold must hold on a loaded machine too.
    steps = by_steps((env.root / "train.py").read_text(), 60)
    res = train_and_evaluate(env, tmp_path, budget_s=300, train_source=steps)
    assert res["status"] == "ok", res
    loss = res["metrics"]["val_loss"]
    assert math.isfinite(loss) and loss < 0.95 * math.log(_vocab_size(env)), res
    assert res["metrics"]["params"] > 100_000 and res["metrics"]["eval_tokens"] > 50_000


@pytest.mark.slow
def test_future_token_leak_is_invalid(env, tmp_path):
    src = (env.root / "train.py").read_text()
    assert "is_causal=True" in src
    res = train_and_evaluate(env, tmp_path, budget_s=2, train_source=src.replace("is_causal=True", "is_causal=False"))
    assert res["status"] == "invalid", res
    assert "future-token leak" in res["reason"]


def test_no_checkpoint_is_no_result(env, tmp_path):
    res = train_and_evaluate(env, tmp_path, budget_s=0, train=False)
    assert res["status"] == "no_result", res
