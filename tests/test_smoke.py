"""The smoke check runs a bounded number of training steps, then the trusted evaluator's smoke
mode on what training left, in the trial jail: an edit of nanogpt-cpu that breaks the checkpoint
interface fails it with the evaluator's own message, and the implementer sends that message back."""

from __future__ import annotations

import pytest

from fakes.llm_server import FakeLLMServer
from ideaforge.envs import load_env
from ideaforge.envs.workspace import read_files
from ideaforge.errors import EnvError
from ideaforge.execute.smoke import run_smoke, smoke_job
from ideaforge.implement.implementer import Implementer

SAVE = '    torch.save({"config": config, "state_dict": model.state_dict(), "vocab": vocab}, OUT_DIR / "ckpt.pt")\n'
RENAME = f"""The checkpoint gets a clearer name.

train.py
<<<<<<< SEARCH
{SAVE}=======
{SAVE.replace('"ckpt.pt"', '"model.pt"')}>>>>>>> REPLACE
"""
# An honest edit that also proves the smoke run trained: it exits non-zero unless exactly
# IDEAFORGE_SMOKE_STEPS (>= 1) optimizer steps ran before the checkpoint is saved.
COUNTED = """Check the step count before saving.

train.py
<<<<<<< SEARCH
    OUT_DIR.mkdir(parents=True, exist_ok=True)
=======
    if SMOKE_STEPS < 1 or step != SMOKE_STEPS:
        raise SystemExit(f"ran {step} optimizer steps; IDEAFORGE_SMOKE_STEPS={SMOKE_STEPS}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
>>>>>>> REPLACE
"""


@pytest.fixture(scope="module")
def nanogpt():
    return load_env("nanogpt-cpu")


def test_nanogpt_cpu_declares_steps_and_the_evaluators_smoke_mode(nanogpt):
    job = smoke_job(nanogpt, nanogpt.root, None)
    assert nanogpt.smoke_steps == 2 and nanogpt.smoke_evaluate
    assert job.env["IDEAFORGE_SMOKE_STEPS"] == "2" and job.env["IDEAFORGE_EVAL_MODE"] == "smoke"
    assert job.budget_s == nanogpt.budget_s  # steps bound the run; the budget is only a backstop
    assert set(job.hidden) == {"evaluate.py", "eval/val.txt"} and job.evaluate_serve == nanogpt.evaluate_serve


def test_smoke_steps_must_be_positive(tmp_path):
    toml = (load_env("nanogpt-cpu").root / "ideaforge.toml").read_text()
    env = tmp_path / "env"
    env.mkdir()
    (env / "train.py").write_text("pass\n")
    (env / "evaluate.py").write_text("pass\n")
    (env / "ideaforge.toml").write_text(toml.replace("steps = 2", "steps = 0")
                                        .replace('hidden   = ["evaluate.py", "eval/*"]', 'hidden = ["evaluate.py"]')
                                        .replace('data     = ["data"]', ""))
    with pytest.raises(EnvError, match=r"\[smoke\] steps must be at least 1"):
        load_env(env)


@pytest.mark.slow
def test_changed_build_model_signature_fails_with_the_evaluators_message(nanogpt):
    src = (nanogpt.root / "train.py").read_text()
    edited = (src.replace("def build_model(config: dict)", "def build_model(config: dict, dropout: float)")
                 .replace("model = build_model(config)", "model = build_model(config, 0.0)"))
    assert edited.count("dropout") == 1 and "build_model(config, 0.0)" in edited
    result = run_smoke(nanogpt, nanogpt.root, {"train.py": edited})
    assert not result.ok
    assert "outcome invalid" in result.message  # training ran; the evaluator's model server refused the model
    assert "build_model() missing 1 required positional argument: 'dropout'" in result.message


@pytest.mark.slow
def test_renamed_checkpoint_is_sent_back_and_an_honest_edit_passes_after_its_steps(nanogpt, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    smoke = lambda changes: (lambda r: None if r.ok else r.message)(run_smoke(nanogpt, nanogpt.root, changes))
    with FakeLLMServer([RENAME, COUNTED]) as srv:
        result = Implementer(nanogpt, read_files(nanogpt), f"openai-compatible:fake@{srv.openai_url}", samples=1,
                             repairs=1, smoke=smoke).implement("rename the checkpoint")
    assert [a.stage for a in result.attempts] == ["smoke", "ok"], result.error
    repair_prompt = srv.requests[1]["json"]["messages"][-1]["content"]
    assert "no checkpoint at $IDEAFORGE_OUT/ckpt.pt" in repair_prompt  # the evaluator's own words
    assert "IDEAFORGE_EVAL_MODE=smoke" in repair_prompt
    assert '"ckpt.pt"' in result.files["train.py"] and "SMOKE_STEPS < 1 or step != SMOKE_STEPS" in result.files["train.py"]
