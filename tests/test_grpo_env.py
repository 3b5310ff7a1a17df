"""The built-in grpo-cpu environment, run for real: prepare, train, evaluate, catalogue."""

from __future__ import annotations

import json
import os
import py_compile
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ideaforge.envs.spec import load_env

pytest.importorskip("torch")

ENV = load_env("grpo-cpu")
THREADS = "2"
pytestmark = pytest.mark.timeout(1800)  # the session's [prepare] (700 SFT steps) is timed in the first test using it


def _copy(rels, src: Path, dst: Path) -> Path:
    for rel in rels:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)
    return dst


def _run(cmd: str, cwd: Path, timeout: float, **env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("IDEAFORGE_")}
    full.update({"IDEAFORGE_THREADS": THREADS, "OMP_NUM_THREADS": THREADS, "MKL_NUM_THREADS": THREADS})
    full.update({k: str(v) for k, v in env.items()})
    argv = cmd.split()
    if argv[0] == "python":
        argv[0] = sys.executable
    proc = subprocess.run(argv, cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _workspace(tmp: Path, name: str, train_src: str | None = None) -> Path:
    ws = _copy(ENV.editable_files + ENV.visible_files, ENV.root, tmp / name)
    if train_src is not None:
        (ws / "train.py").write_text(train_src)
    return ws


def _evaluate(tmp: Path, ws: Path, out: Path, prepared: Path) -> dict:
    evdir = tmp / f"eval-{ws.name}-{out.name}"
    if evdir.exists():
        shutil.rmtree(evdir)
    _copy(ENV.hidden_files, ENV.root, evdir)
    result = evdir / "result.json"
    _run(ENV.evaluate_command, evdir, ENV.evaluate_timeout_s, IDEAFORGE_WORKSPACE=ws, IDEAFORGE_OUT=out,
         IDEAFORGE_PREPARED=prepared, IDEAFORGE_RESULT=result, IDEAFORGE_SEED=0)
    return json.loads(result.read_text())


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """Run [prepare] once, as the executor does: cwd holds the env files, output into IDEAFORGE_PREPARED.
    With IDEAFORGE_CACHE set, the executor's own cached step is used (minutes on a loaded machine)."""
    if os.environ.get("IDEAFORGE_CACHE"):
        from ideaforge.envs.workspace import ensure_prepared

        return ensure_prepared(ENV, log=lambda *a: None)
    src = _copy(ENV.editable_files + ENV.visible_files + ENV.hidden_files, ENV.root, tmp_path_factory.mktemp("grpo-src"))
    out = tmp_path_factory.mktemp("grpo-prepared")
    _run(ENV.prepare_command, src, ENV.prepare_timeout_s, IDEAFORGE_PREPARED=out)
    return out


@pytest.fixture()
def sft_out(prepared, tmp_path) -> Path:
    """An IDEAFORGE_OUT holding the SFT checkpoint as policy.pt: a fixed checkpoint to evaluate."""
    out = tmp_path / "sft-out"
    out.mkdir()
    shutil.copy2(prepared / "sft.pt", out / "policy.pt")
    return out


def test_spec_is_valid():
    assert ENV.name == "grpo-cpu" and ENV.metric == "accuracy" and ENV.goal == "max"
    assert ENV.editable_files == ("train.py",)
    assert "prepare.py" in ENV.visible_files and "policy.py" in ENV.visible_files
    assert set(ENV.hidden_files) == {"evaluate.py", "eval/heldout.jsonl"}
    assert ENV.prepare_command and ENV.smoke_command and ENV.rules
    # the catalogue belongs to no class: never copied into a workspace nor shown
    assert ENV.classify("catalogue/ideas.toml") is None


@pytest.mark.slow
def test_prepare_writes_sft_and_disjoint_training_set_without_answers(prepared):
    assert (prepared / "sft.pt").is_file()
    rows = [json.loads(line) for line in (prepared / "train.jsonl").read_text().splitlines()]
    held = {json.loads(line)["prompt"] for line in (ENV.root / "eval/heldout.jsonl").read_text().splitlines()}
    train = {r["prompt"] for r in rows}
    assert len(held) == 500 and len(train) == len(rows) == 9 ** 4 - 500
    assert not train & held
    # prompts and the verifier's keys only: no answer, no worked solution in the training data
    assert all(set(r) == {"prompt", "key"} for r in rows)
    assert all(len(r["key"]) == 16 and set(r["key"]) <= set("0123456789abcdef") for r in rows)
    policy = _policy_module()
    for r in rows[:200]:
        total = sum(int(x) for x in r["prompt"][:-1].split("+"))
        assert policy.answer_key(r["prompt"], str(total)) == r["key"]
        assert policy.answer_key(r["prompt"], str(total + 1)) != r["key"]


def _policy_module():
    import types

    module = types.ModuleType("grpo_policy_for_tests")
    exec((ENV.root / "policy.py").read_text(), module.__dict__)
    return module


def _train_module():
    import importlib.util

    sys.path.insert(0, str(ENV.root))
    try:
        spec = importlib.util.spec_from_file_location("grpo_train_for_tests", ENV.root / "train.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ENV.root))


def test_verifier_and_strict_grader_agree_and_neither_holds_the_answer():
    """The training reward (verifier) checks a completion against a key; the evaluator's
    grader checks it against the held-out answer; both read only the final number of a
    well-formed completion."""
    policy, train = _policy_module(), _train_module()
    import importlib.util

    spec = importlib.util.spec_from_file_location("grpo_eval_for_tests", ENV.root / "evaluate.py")
    evaluate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate)
    prompt, key = "7+8+5+3=", policy.answer_key("7+8+5+3=", "23")
    cases = {"15,20,23.": 1.0, "15,21,23.": 1.0, "23.": 1.0, "15,20,23..,.": 1.0,  # only the final number counts
             "15,20,24.": 0.0, "15,20,23": 0.0, "15,20,023.": 0.0, "15,,23.": 0.0, ".23": 0.0, "": 0.0}
    for completion, want in cases.items():
        assert train.reward_fn(completion, prompt, key) == want, completion
        assert evaluate.grade([policy.STOI[c] for c in completion], 23) == want, completion


def test_demonstrations_are_imperfect_working():
    """The SFT start's data: 38% of the demonstrations end in a wrong answer, each wrong
    by a wrong working step that later steps build on, so imitation alone is capped."""
    sys.path.insert(0, str(ENV.root))
    try:
        import importlib.util

        spec = importlib.util.spec_from_file_location("grpo_prepare_for_tests", ENV.root / "prepare.py")
        prepare = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(prepare)
    finally:
        sys.path.remove(str(ENV.root))
    problems = prepare.all_problems()
    demos = prepare.demonstrations(problems)
    assert demos == prepare.demonstrations(problems)  # fixed (seeded)
    right = sum(c[:-1].split(",")[-1] == str(sum(d)) for d, (_, c) in zip(problems, demos)) / len(demos)
    assert 0.55 < right < 0.67, right
    assert all(len(c[:-1].split(",")) == 3 for _, c in demos)


@pytest.mark.slow
def test_smoke_train_then_evaluate(prepared, tmp_path):
    ws = _workspace(tmp_path, "ws")
    out = tmp_path / "out"
    out.mkdir()
    # 8 s rather than the smoke budget: on a loaded 2-core machine importing torch alone can
    # take 3 s, leaving no step to print a METRIC line.
    proc = _run(ENV.smoke_command, ws, ENV.smoke_timeout_s, IDEAFORGE_OUT=out, IDEAFORGE_PREPARED=prepared,
                IDEAFORGE_BUDGET_S=8, IDEAFORGE_SEED=0)
    assert (out / "policy.pt").is_file()
    steps = int(proc.stdout.split("done: ")[1].split()[0])
    assert steps >= 1
    assert steps < 10 or "METRIC step=" in proc.stdout  # one METRIC line per 10 steps (few on a loaded machine)
    res = _evaluate(tmp_path, ws, out, prepared)
    assert res["status"] == "ok", res
    assert 0.0 <= res["metrics"]["accuracy"] <= 1.0 and res["metrics"]["n"] == 500


@pytest.mark.slow
def test_training_sampling_settings_cannot_change_the_score(prepared, sft_out, tmp_path):
    base = (ENV.root / "train.py").read_text()
    edits = [
        ("temperature = 1.0  # sampling", "temperature = 0.1  # sampling"),
        ("max_new_tokens = 9  # longest", "max_new_tokens = 1  # longest"),
    ]
    accs = []
    for i, (old, new) in enumerate(edits):
        assert base.count(old) == 1
        ws = _workspace(tmp_path, f"ws{i}", base.replace(old, new))
        res = _evaluate(tmp_path, ws, sft_out, prepared)
        assert res["status"] == "ok", res
        accs.append(res["metrics"]["accuracy"])
    assert accs[0] == accs[1]
    assert 0.3 < accs[0] < 0.7  # the SFT policy solves a fair share, capped by its imperfect demonstrations


def test_policy_class_is_not_in_the_editable_file_and_the_evaluator_trusts_only_the_pristine_one():
    import hashlib

    train = (ENV.root / "train.py").read_text()
    assert "class GPT" not in train and "nn.Module" not in train and "from policy import" in train
    assert ENV.classify("policy.py") == "visible"
    digest = hashlib.sha256((ENV.root / "policy.py").read_bytes()).hexdigest()
    assert f'POLICY_SHA256 = "{digest}"' in (ENV.root / "evaluate.py").read_text(), "update POLICY_SHA256 in evaluate.py"


def _fixed_policy_ckpt(path: Path, extra=None, **config_changes) -> None:
    import torch

    ns: dict = {}
    exec((ENV.root / "policy.py").read_text(), ns)
    config = dict(ns["default_config"](), **config_changes)
    ckpt = {"config": config, "state_dict": ns["GPT"](ns["default_config"]()).state_dict()}
    if extra is not None:
        ckpt["extra"] = extra
    path.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path / "policy.pt")


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pickled-code-ran",))


def test_pickled_checkpoint_is_refused_and_runs_nothing(tmp_path):
    _fixed_policy_ckpt(tmp_path / "out", extra=_Boom())
    res = _evaluate(tmp_path, _workspace(tmp_path, "ws"), tmp_path / "out", tmp_path)
    assert res["status"] == "invalid" and "weights-only" in res["reason"], res
    assert not list(tmp_path.rglob("pickled-code-ran"))


def test_other_architecture_and_tampered_policy_are_invalid(tmp_path):
    _fixed_policy_ckpt(tmp_path / "out-big", n_layer=4)
    res = _evaluate(tmp_path, _workspace(tmp_path, "ws"), tmp_path / "out-big", tmp_path)
    assert res["status"] == "invalid" and "fixed policy" in res["reason"], res
    # a trial that rewrites the workspace's policy.py at run time: the evaluator refuses to run it
    _fixed_policy_ckpt(tmp_path / "out")
    ws = _workspace(tmp_path, "tampered")
    (ws / "policy.py").write_text((ws / "policy.py").read_text() + "\nGPT.forward = lambda self, idx: idx\n")
    res = _evaluate(tmp_path, ws, tmp_path / "out", tmp_path)
    assert res["status"] == "invalid" and "pristine" in res["reason"], res


@pytest.mark.slow
def test_other_vocabulary_is_invalid(prepared, tmp_path):
    import torch

    ckpt = torch.load(prepared / "sft.pt", map_location="cpu", weights_only=True)
    ckpt["config"]["vocab"] = ckpt["config"]["vocab"][::-1]
    out = tmp_path / "out"
    out.mkdir()
    torch.save(ckpt, out / "policy.pt")
    res = _evaluate(tmp_path, _workspace(tmp_path, "ws"), out, prepared)
    assert res["status"] == "invalid" and "vocabulary" in res["reason"]


@pytest.mark.slow
def test_no_checkpoint_is_no_result(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    res = _evaluate(tmp_path, _workspace(tmp_path, "ws"), out, tmp_path)
    assert res["status"] == "no_result"


def _apply_blocks(text: str, edit: str) -> str:
    blocks = edit.split(">>>>>>> REPLACE")
    assert blocks[-1].strip() == ""
    for block in blocks[:-1]:
        head, rest = block.split("<<<<<<< SEARCH\n", 1)
        assert head.strip() == "train.py"
        search, replace = rest.split("\n=======\n", 1)
        search += "\n"
        assert text.count(search) == 1, f"SEARCH occurs {text.count(search)} times:\n{search}"
        text = text.replace(search, replace)
    return text


def test_catalogue_ideas_apply_and_compile(tmp_path):
    ideas = tomllib.loads((ENV.root / "catalogue" / "ideas.toml").read_text())["idea"]
    assert 6 <= len(ideas) <= 10
    assert len({i["id"] for i in ideas}) == len(ideas)
    base = (ENV.root / "train.py").read_text()
    for idea in ideas:
        assert idea["title"] and idea["description"]
        new = _apply_blocks(base, idea["edit"])
        assert new != base, idea["id"]
        path = tmp_path / f"{idea['id']}.py"
        path.write_text(new)
        py_compile.compile(str(path), doraise=True)
