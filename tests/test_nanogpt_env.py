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
from ideaforge.envs.protocol import run_split

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
    out.mkdir(exist_ok=True)  # a test may have put a checkpoint there
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
    with open(tmp_path / "serve.err", "wb") as serve_err:
        rc = run_split(env.evaluate_serve, f"{sys.executable} evaluate.py", serve_cwd=ws, scorer_cwd=ev,
                       env={**base, "IDEAFORGE_RESULT": str(result)}, timeout_s=240, serve_err=serve_err)
    assert rc == 0, (tmp_path / "serve.err").read_text()
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
    # checked at the scoring batch size, every position of the sampled windows, seed drawn and recorded
    checks = res["checks"]
    assert checks["batch_size"] == 8192 // 128 and checks["positions_checked"] == 128 * len(checks["checked_windows"])
    assert res["metrics"]["check_seed"] == checks["check_seed"]
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


def _save_checkpoint(env, tmp_path, obj_fn) -> None:
    """A checkpoint written without training: obj_fn(config, state_dict, vocab) -> what torch.save gets."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("nanogpt_train_for_test", env.root / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    vocab = mod.build_vocab((env.root / "data" / "train.txt").read_text(encoding="utf-8"))
    config = dict(vocab_size=len(vocab), block_size=32, n_layer=1, n_head=2, n_embd=16)
    (tmp_path / "out").mkdir()
    torch.save(obj_fn(config, mod.build_model(config).state_dict(), vocab), tmp_path / "out" / "ckpt.pt")


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pickled-code-ran",))


def test_pickled_checkpoint_is_refused_and_runs_nothing(env, tmp_path):
    _save_checkpoint(env, tmp_path, lambda c, sd, v: {"config": c, "state_dict": sd, "vocab": v, "x": _Boom()})
    res = train_and_evaluate(env, tmp_path, budget_s=0, train=False)
    assert res["status"] == "invalid" and "cannot load the model" in res["reason"], res
    assert not list(tmp_path.rglob("pickled-code-ran"))


def test_other_vocab_is_invalid(env, tmp_path):
    _save_checkpoint(env, tmp_path, lambda c, sd, v: {"config": c, "state_dict": sd, "vocab": v[::-1]})
    res = train_and_evaluate(env, tmp_path, budget_s=0, train=False)
    assert res["status"] == "invalid" and "vocab" in res["reason"], res
