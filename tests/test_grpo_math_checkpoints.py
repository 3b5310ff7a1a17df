"""grpo-math's evaluator loads only weights into its own, fixed model class (issue 10, class 8):
it imports no trial code, reads only safetensors (no pickle), and refuses weights that do not fit
the prepared architecture. The checkpoints here are what a trial could leave in IDEAFORGE_OUT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_grpo_math_env import ENV, _tiny_model  # noqa: E402

pytestmark = pytest.mark.slow


def _evaluate(tmp_path: Path, prepared: Path) -> dict:
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "evaluate.py").write_text((ENV.root / "evaluate.py").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDEAFORGE_")}
    env.update(IDEAFORGE_PREPARED=str(prepared), IDEAFORGE_OUT=str(tmp_path / "out"), IDEAFORGE_RESULT=str(tmp_path / "r.json"),
               GRPO_EVAL_N="4", GRPO_EVAL_MAX_TOKENS="8")
    r = subprocess.run([sys.executable, "evaluate.py"], cwd=ev, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads((tmp_path / "r.json").read_text())


def test_evaluator_imports_no_trial_code():
    src = (ENV.root / "evaluate.py").read_text()
    assert "IDEAFORGE_WORKSPACE" not in src and "import grpo" not in src and "import model" not in src
    assert "torch.load" not in src  # weights come through safetensors only


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_checkpoint_is_refused_and_runs_no_code(tmp_path):
    prepared = _tiny_model(tmp_path)
    marker = tmp_path / "pickled-code-ran"
    ck = tmp_path / "out" / "ckpt" / "step_000002"
    ck.mkdir(parents=True)
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2), "x": Payload(marker)}, ck / "pytorch_model.bin")
    res = _evaluate(tmp_path, prepared)
    assert res["status"] == "invalid" and "no .safetensors weights" in res["reason"], res
    assert not marker.exists()


def test_weights_of_another_shape_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    prepared = _tiny_model(tmp_path)
    state = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(prepared / "model").state_dict().items()}
    name = next(k for k, v in state.items() if v.dim() == 2 and "embed" not in k)
    state[name] = torch.zeros(state[name].shape[0] * 2, state[name].shape[1])  # a wider layer: another architecture
    state.pop("lm_head.weight", None)  # tied
    ck = tmp_path / "out" / "ckpt" / "step_000002"
    ck.mkdir(parents=True)
    save_file(state, ck / "model.safetensors")
    assert load_file(ck / "model.safetensors")[name].shape[0] == state[name].shape[0]
    res = _evaluate(tmp_path, prepared)
    assert res["status"] == "invalid" and "metrics" not in res, res
    assert "size mismatch" in res["reason"], res
