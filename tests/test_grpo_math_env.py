"""The built-in grpo-math environment: the reference's settings, the strict grader, prepare from a
local fake of the download source, and the tiny profile end to end through the executor."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ideaforge.envs import load_env

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_download import FakeSource  # noqa: E402  (the 127.0.0.1 server with Range and dropped connections)
from test_speedrun_env import run_env_check  # noqa: E402

ENV = load_env("grpo-math")


def _module(name: str):
    sys.path.insert(0, str(ENV.root))  # grpo.py imports model.py from beside it
    try:
        spec = importlib.util.spec_from_file_location(f"grpo_math_{name}", ENV.root / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ENV.root))


@pytest.fixture(scope="module")
def grpo():
    return _module("grpo")


@pytest.fixture(scope="module")
def ev():
    return _module("evaluate")


def test_spec_profiles_and_reference_settings(grpo):
    assert ENV.editable_files == ("grpo.py",) and set(ENV.visible_files) == {"model.py", "prepare.py"}
    assert ENV.hidden_files == ("evaluate.py",) and (ENV.metric, ENV.goal, ENV.gpus) == ("accuracy", "max", 1)
    assert set(ENV.profiles) == {"tiny", "1gpu"} and load_env("grpo-math", profile="tiny").gpus == 0
    full = grpo.PRESETS["full"]
    assert (full["group_size"], full["rollout_batch"], full["micro_batch"], full["grad_accum"], full["max_new_tokens"]) == (8, 128, 4, 16, 1024)
    assert (grpo.LEARNING_RATE, grpo.BETAS, grpo.WEIGHT_DECAY) == (1e-5, (0.9, 0.95), 0.0)
    assert (grpo.LOSS_TYPE, grpo.CLIPRANGE, grpo.ADV_EPS, grpo.EVAL_EVERY, grpo.TRAIN_STEPS_PER_ROLLOUT) == ("grpo_clip", 0.2, 1e-6, 2, 1)
    assert (grpo.TEMPERATURE, grpo.TOP_P) == (1.0, 1.0)


def test_the_evaluator_keeps_its_own_copy_of_the_prompt(ev):
    model = _module("model")
    assert ev.PROMPT == model.R1_ZERO_PROMPT and ev.STOP == model.STOP == "</answer>"


@pytest.mark.parametrize("response, truth, score", [
    ("2+2 is 4 </think> <answer> 4 </answer>", "4", 1.0),
    ("so </think> <answer>\\boxed{\\dfrac{1}{2}}</answer>", "\\frac{1}{2}", 1.0),
    ("so </think> <answer> 0.5 </answer>", "\\frac12", 1.0),
    ("so </think> <answer> x = -3 </answer>", "-3", 1.0),
    ("so </think> <answer> 5 </answer>", "4", 0.0),          # formatted but wrong: 0, no format credit
    ("so </think><answer> 4 </answer>", "4", 0.0),           # the format needs exactly "</think> <answer>"
    ("the answer is 4", "4", 0.0),                           # right but unformatted
    ("so </think> <answer> 4", "4", 0.0),                    # never closed
    ("so </think> <answer>  </answer>", "4", 0.0),
])
def test_strict_grader(ev, response, truth, score):
    assert ev.grade(response, truth) == score


def test_advantages_and_losses(grpo):
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = grpo.group_advantages(r, 4)
    assert torch.allclose(adv[:4].sum(), torch.tensor(0.0), atol=1e-6) and adv[0] > 0 > adv[1]
    assert torch.allclose(adv[4:], torch.zeros(4))  # a group that all agree teaches nothing
    logp = torch.log(torch.full((2, 3), 0.5, requires_grad=True))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    a = torch.tensor([1.0, -1.0])
    for loss_type in ("grpo_clip", "reinforce_with_baseline", "no_baseline"):
        grpo.LOSS_TYPE = loss_type
        try:
            loss = grpo.policy_loss(logp, logp.detach(), a, torch.tensor([1.0, 0.0]), mask)
        finally:
            grpo.LOSS_TYPE = "grpo_clip"
        assert torch.isfinite(loss)


def _tiny_model(tmp_path: Path) -> Path:
    out = tmp_path / "tiny"
    out.mkdir()
    env = dict(os.environ, IDEAFORGE_PREPARED=str(out), GRPO_DATA="tiny")
    r = subprocess.run([sys.executable, str(ENV.root / "prepare.py")], env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


@pytest.mark.slow
def test_prepare_fetches_model_and_data_from_a_fake_source_and_resumes(tmp_path):
    tiny = _tiny_model(tmp_path)
    files = {f"model/{p.name}": p.read_bytes() for p in (tiny / "model").iterdir()}
    test = [{"problem": "What is $1+1$?", "answer": "2", "level": 1}, {"problem": "Half of one?", "solution": "It is $\\boxed{\\frac{1}{2}}$."}]
    train = [{"problem": "What is $2+3$?", "answer": "5"}, test[0]]  # overlaps the held-out set: must be dropped
    files["train.json"] = json.dumps(train).encode()
    files["test.jsonl"] = "".join(json.dumps(x) + "\n" for x in test).encode()
    big = max((n for n in files if n.startswith("model/")), key=lambda n: len(files[n]))
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    with FakeSource(files, drop_once={big}, drop_at=len(files[big]) // 3) as src:
        env = dict(os.environ, IDEAFORGE_PREPARED=str(prepared), IDEAFORGE_CACHE=str(tmp_path / "cache"), GRPO_DATA="math",
                   GRPO_MODEL_URL=f"{src.url}/model", GRPO_MODEL_FILES=",".join(n[6:] for n in files if n.startswith("model/")),
                   GRPO_TRAIN_URL=f"{src.url}/train.json", GRPO_TEST_URL=f"{src.url}/test.jsonl")
        r = subprocess.run([sys.executable, str(ENV.root / "prepare.py")], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (big, f"bytes={len(files[big]) // 3}-") in src.requests
    for name in files:
        if name.startswith("model/"):
            assert (prepared / name).read_bytes() == files[name]
    rows = lambda p: [json.loads(x) for x in p.read_text().splitlines()]  # noqa: E731
    # the held-out problems are kept outside the prepared directory (training and smoke runs see it)
    assert not (prepared / "test.jsonl").exists()
    held_out = Path(json.loads((prepared / "meta.json").read_text())["heldout"])
    assert prepared not in held_out.parents and held_out.is_file()
    assert rows(held_out) == [{"problem": "What is $1+1$?", "answer": "2"}, {"problem": "Half of one?", "answer": "\\frac{1}{2}"}]
    assert rows(prepared / "train.jsonl") == [{"problem": "What is $2+3$?", "answer": "5"}]
    # The smoke command runs edited code on the tiny random model that prepare added, on the CPU.
    assert (prepared / "tiny-model" / "config.json").is_file()
    ws, out = tmp_path / "ws", tmp_path / "out"
    ws.mkdir()
    out.mkdir()
    for rel in ENV.editable_files + ENV.visible_files:
        (ws / rel).write_text((ENV.root / rel).read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IDEAFORGE_", "GRPO_"))}
    env.update(IDEAFORGE_PREPARED=str(prepared), IDEAFORGE_OUT=str(out), IDEAFORGE_BUDGET_S="15", CUDA_VISIBLE_DEVICES="",
               OMP_NUM_THREADS="1", PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    r = subprocess.run(["/bin/sh", "-c", ENV.smoke_command], cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert list((out / "ckpt").glob("step_*"))


@pytest.mark.slow
def test_env_check_tiny_profile_passes_on_cpu_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("IDEAFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    t = run_env_check(load_env("grpo-math", profile="tiny"), tmp_path, budget=20)
    assert t["outcome"] == "evaluated", t["reason"]
    assert 0.0 <= t["metric"] <= 1.0 and t["metrics"]["n"] == 16 and t["metrics"]["checkpoints"] >= 1


@pytest.mark.slow
def test_weights_that_do_not_fit_the_fixed_model_are_invalid(tmp_path):
    from safetensors.torch import save_file

    prepared = _tiny_model(tmp_path)
    ck = tmp_path / "out" / "ckpt" / "step_000002"
    ck.mkdir(parents=True)
    save_file({"extra.weight": torch.zeros(2, 2)}, ck / "model.safetensors")
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "evaluate.py").write_text((ENV.root / "evaluate.py").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDEAFORGE_")}
    env.update(IDEAFORGE_PREPARED=str(prepared), IDEAFORGE_OUT=str(tmp_path / "out"), IDEAFORGE_RESULT=str(tmp_path / "r.json"),
               GRPO_EVAL_N="4", GRPO_EVAL_MAX_TOKENS="8")
    r = subprocess.run([sys.executable, "evaluate.py"], cwd=ev, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["status"] == "invalid" and "do not fit the fixed model" in res["reason"], res


# ---------------------------------------------------------------- the idea catalogue
import tomllib  # noqa: E402

from ideaforge.edit.apply import apply_edits  # noqa: E402
from ideaforge.edit.parse import parse_reply  # noqa: E402

BASE = (ENV.root / "grpo.py").read_text()
IDEAS = tomllib.loads((ENV.root / "catalogue" / "ideas.toml").read_text())["idea"]


@pytest.mark.parametrize("idea", IDEAS, ids=[i["id"] for i in IDEAS])
def test_idea_applies_and_the_algorithm_still_runs(idea, tmp_path):
    edits = parse_reply(idea["edit"])
    source = apply_edits({"grpo.py": BASE}, edits, ENV).files["grpo.py"]
    assert source != BASE
    (tmp_path / "grpo.py").write_text(source)
    sys.path.insert(0, str(ENV.root))
    try:
        spec = importlib.util.spec_from_file_location(f"grpo_idea_{idea['id'].replace('-', '_').replace('.', '_')}", tmp_path / "grpo.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ENV.root))
    adv = mod.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2)
    logp = torch.log(torch.full((2, 3), 0.5, requires_grad=True))
    loss = mod.policy_loss(logp, logp.detach(), adv[:2], torch.tensor([1.0, 0.0]), torch.ones(2, 3))
    loss.backward()
    assert torch.isfinite(loss)


def test_all_grpo_ideas_but_one_lr_compose():
    chosen = [i for i in IDEAS if i["id"] != "lr-2.5e-5"]
    edits = [e for i in chosen for e in parse_reply(i["edit"])]
    compile(apply_edits({"grpo.py": BASE}, edits, ENV).files["grpo.py"], "grpo.py", "exec")
