"""The research loop end to end: offline ideators on a toy problem, and a scripted model
server (ideas and edits, some broken) over 3 epochs of nanogpt-cpu."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fakes.llm_server import FakeLLMServer
from fakes.steps import nanogpt_by_steps
from ideaforge.envs import load_env
from ideaforge.execute.local import LocalExecutor
from ideaforge.ideate import offline_ideator
from ideaforge.search.campaign import Campaign
from ideaforge.stats import leaderboard
from ideaforge.search.loop import Search, SearchConfig
from ideaforge.store import Store

QUADRATIC = """
import json, math, os, random
LR = 0.1  # learning rate
WIDTH = 8  # channels
DEPTH = 2  # layers
out = os.environ["IDEAFORGE_OUT"]
seed = int(os.environ["IDEAFORGE_SEED"])
noise = random.Random(seed).gauss(0, 0.05)
score = -math.log2(LR / 0.4) ** 2 - math.log2(WIDTH / 32) ** 2 - (DEPTH - 4) ** 2 + noise
print(f"METRIC step=1 score={score}")
json.dump({"score": score}, open(os.path.join(out, "ckpt.json"), "w"))
"""


def quadratic_env(root: Path, train: str = QUADRATIC) -> Path:
    """A noisy quadratic landscape: the given train.py, a trusted evaluator, the toml."""
    root.mkdir(parents=True)
    (root / "train.py").write_text(train)
    (root / "evaluate.py").write_text(textwrap.dedent("""
        import json, os
        ck = json.load(open(os.path.join(os.environ["IDEAFORGE_OUT"], "ckpt.json")))
        json.dump({"status": "ok", "metrics": {"score": ck["score"]}}, open(os.environ["IDEAFORGE_RESULT"], "w"))
    """))
    (root / "ideaforge.toml").write_text(textwrap.dedent("""
        [env]
        name = "quadratic"
        description = "Maximise a noisy quadratic score of three settings."
        [files]
        editable = ["train.py"]
        hidden = ["evaluate.py"]
        [run]
        command = "python train.py"
        budget_s = 5
        [evaluate]
        command = "python evaluate.py"
        [metric]
        name = "score"
        goal = "max"
    """))
    return root


def run_offline(env: Path, camp: Path, **cfg) -> Campaign:
    spec = load_env(env)
    config = SearchConfig(**cfg)
    campaign = Campaign.create(camp, spec, {"command": "run", "search": config.__dict__})
    with LocalExecutor(slots=2) as ex:
        Search(campaign, ex, offline_ideator(spec), config).run()
    return campaign


def test_offline_evolution_improves_and_confirms(tmp_path):
    camp = run_offline(quadratic_env(tmp_path / "env"), tmp_path / "camp", epochs=3, ideas=4, confirm_top=2,
                       confirm_seeds=3)
    store = camp.store
    base, rows = leaderboard(store, "max")
    assert base.n == 3 + 2 + 3  # at the start, one in each later epoch, beside the confirmation
    best = rows[0]
    assert best["stats"].n == 3 and best["beats"]
    assert best["stats"].mean > base.mean + 5
    # Exploit ideas of later epochs build on ideas that beat the baseline.
    ideas = {i["id"]: i for i in store.ideas()}
    exploit = [i for i in ideas.values() if i["kind"] == "exploit"]
    assert exploit and all(i["parents"] for i in exploit)
    beaten = {r["idea_id"] for r in rows if r["beats"]}
    assert all(set(i["parents"]) & beaten for i in exploit)
    assert store.get_meta("finished") is True
    # Every idea once, every implementation at most one candidate trial.
    titles = [i["title"] for i in ideas.values()]
    assert len(titles) == len(set(titles))


def test_best_of_n_uses_no_feedback(tmp_path):
    camp = run_offline(quadratic_env(tmp_path / "env"), tmp_path / "camp", mode="best-of-n", epochs=2, ideas=3,
                       confirm_top=1, confirm_seeds=2)
    kinds = {i["kind"] for i in camp.store.ideas()}
    assert kinds == {"best_of_n"}
    assert all(not i["parents"] for i in camp.store.ideas())


def _wait_until(cond, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for a kill point"
        time.sleep(0.05)


def _done(camp: Path) -> int:
    try:
        store = Store.open_readonly(camp)
    except Exception:  # not created yet, or mid-migration
        return 0
    try:
        return store.trial_counts()["done"]
    finally:
        store.close()


def _meta(camp: Path, key: str):
    try:
        store = Store.open_readonly(camp)
    except Exception:
        return None
    try:
        return store.get_meta(key)
    finally:
        store.close()


@pytest.mark.slow
def test_sigkill_mid_campaign_resumes_to_the_same_leaderboard(tmp_path):
    env = quadratic_env(tmp_path / "env")
    reference = run_offline(env, tmp_path / "ref", epochs=3, ideas=4, confirm_top=2, confirm_seeds=2)
    slow = QUADRATIC.replace("import json, math, os, random", "import json, math, os, random, time\ntime.sleep(0.4)")
    (env / "train.py").write_text(slow)
    camp = tmp_path / "camp"
    args = ["--env", str(env), "--dir", str(camp), "--epochs", "3", "--ideas", "4", "--confirm-top", "2",
            "--confirm-seeds", "2", "--slots", "2", "--offline"]
    proc = subprocess.Popen([sys.executable, "-m", "ideaforge.cli", "run", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill points are states of the campaign, not times, so they mean the same on a loaded
    # machine: just created, mid-search (twice in quick succession), and in the confirmation phase.
    points = [lambda: (camp / "campaign.db").exists(), lambda: _done(camp) >= 4, lambda: True,
              lambda: _done(camp) >= 9, lambda: _meta(camp, "confirm_set") is not None]
    kills = 0
    for point in points:
        _wait_until(lambda: point() or proc.poll() is not None)
        if proc.poll() is not None:
            break
        proc.kill()
        proc.wait()
        kills += 1
        proc = subprocess.Popen([sys.executable, "-m", "ideaforge.cli", "resume", str(camp)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.wait(timeout=180) == 0
    assert kills >= 4
    store = Store.open_readonly(camp)
    ideas = store.ideas()
    titles = [i["title"] for i in ideas]
    assert len(titles) == len(set(titles)), "an idea was proposed twice"
    impls = store.implementations()
    assert len({i["idea_id"] for i in impls}) == len(impls), "an idea was implemented twice"
    trials = store.trials()
    assert all(t["status"] == "done" for t in trials)
    keys = [(t["implementation_id"], t["seed"], t["role"]) for t in trials]
    assert len(keys) == len(set(keys)), "a trial ran twice"
    # The same offline ideas and the same measured values give the same leaderboard as an
    # uninterrupted campaign (the sleep changes timing, not scores).
    ref_base, ref_rows = leaderboard(reference.store, "max")
    base, rows = leaderboard(store, "max")
    assert [(r["title"], round(r["stats"].mean, 6), r["stats"].n) for r in rows if r["stats"]] == \
           [(r["title"], round(r["stats"].mean, 6), r["stats"].n) for r in ref_rows if r["stats"]]
    assert base == ref_base


# -- a scripted model over nanogpt-cpu ------------------------------------------------------------
FAST_START = """train.py
<<<<<<< SEARCH
LEARNING_RATE = 1e-3  # peak AdamW learning rate
WARMUP_STEPS = 50  # steps of linear warmup from 0 to LEARNING_RATE, then constant
=======
LEARNING_RATE = 5e-3  # peak AdamW learning rate
WARMUP_STEPS = 1  # steps of linear warmup from 0 to LEARNING_RATE, then constant
>>>>>>> REPLACE
"""
LEAK = """train.py
<<<<<<< SEARCH
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
=======
        y = F.scaled_dot_product_attention(q, k, v, is_causal=False)
>>>>>>> REPLACE
"""
BROKEN = """train.py
<<<<<<< SEARCH
def this_function_does_not_exist():
    pass
=======
def something_else():
    pass
>>>>>>> REPLACE
"""
CLIP = """train.py
<<<<<<< SEARCH
GRAD_CLIP = 1.0  # max global gradient norm
=======
GRAD_CLIP = 0.5  # max global gradient norm
>>>>>>> REPLACE
"""
FAST_AND_CLIP = FAST_START + "\n" + CLIP


def idea(title: str, description: str) -> str:
    return f"[Idea] {title}\n[Description] {description}\n[Code Changes] edit train.py\n[Hyperparameters] none\n[End]\n"


class ScriptedResearcher:
    """Answers ideation prompts by kind and implementation prompts by idea title."""

    EDITS = {"Fast start": FAST_START, "Attention without mask": LEAK, "Rename a helper": BROKEN,
             "Fast start with tighter clipping": FAST_AND_CLIP, "Tighter clipping": CLIP,
             "Fast start, clipped harder": FAST_AND_CLIP.replace("0.5", "0.25"), "Clip at 0.7": CLIP.replace("0.5", "0.7")}

    def __init__(self):
        self.prompts: dict[str, list[str]] = {"initial": [], "exploit": [], "explore": [], "implement": []}

    def __call__(self, provider: str, req: dict) -> str:
        users = [m["content"] for m in req["messages"] if m["role"] == "user"]
        first, text = users[0], users[-1]
        if "# The idea to implement" in first:
            self.prompts["implement"].append(text)
            title = first.split("# The idea to implement", 1)[1].strip().splitlines()[0]
            return "Here you go:\n" + self.EDITS[title]
        if "# Results so far" in text:
            self.prompts["exploit"].append(text)
            n = len(self.prompts["exploit"])
            return idea("Fast start with tighter clipping" if n == 1 else "Fast start, clipped harder", "combine")
        if "# Ideas tried so far" in text:
            self.prompts["explore"].append(text)
            n = len(self.prompts["explore"])
            return idea("Tighter clipping" if n == 1 else "Clip at 0.7", "clip gradients harder")
        self.prompts["initial"].append(text)
        return (idea("Fast start", "no warmup and a 5x higher learning rate")
                + idea("Attention without mask", "let tokens attend everywhere")
                + idea("Rename a helper", "a refactor that cannot apply"))


@pytest.mark.slow
def test_scripted_model_campaign_on_nanogpt_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    model = ScriptedResearcher()
    # Trained by steps, not by the clock, so the scores do not depend on the machine's load (the
    # 60 s budget is only the time limit). At 15 steps the fast start beats the baseline, still in
    # its warmup, by ~0.17 nats (3.39 vs 3.56, measured); by 25 steps the baseline has overtaken it.
    spec = load_env(nanogpt_by_steps(tmp_path / "env", steps=15))
    with FakeLLMServer(model) as srv:
        cfg = SearchConfig(epochs=3, ideas=2, budget_s=60, baseline_seeds=2, confirm_top=1, confirm_seeds=2,
                           model=f"openai-compatible:fake@{srv.openai_url}", samples=1, repairs=1, smoke=False)
        cfg.ideas = 3  # epoch 0 asks for 3 ideas; later epochs split 3 into exploit/explore
        campaign = Campaign.create(tmp_path / "camp", spec, {"command": "run", "search": cfg.__dict__})
        from ideaforge.ideate import ModelIdeator
        with LocalExecutor(slots=2) as ex:
            why = Search(campaign, ex, ModelIdeator(cfg.model, recorder=campaign.store.add_llm_call), cfg).run()
    assert why == "finished"
    store = campaign.store
    ideas = {i["title"]: i for i in store.ideas()}
    base, rows = leaderboard(store, "min")
    by_title = {r["title"]: r for r in rows}
    # Failures are recorded with their kind.
    assert ideas["Rename a helper"]["status"] == "implement_failed"
    assert by_title["Attention without mask"]["outcome"] == "invalid"
    # The fast start beats the baseline beyond its noise, and the exploit prompts show it with its score.
    fast = by_title["Fast start"]
    assert fast["beats"], (fast, base)
    assert len(model.prompts["exploit"]) == 2
    for p in model.prompts["exploit"]:
        shown = p.split("# Results so far")[1].split("# Your task")[0]
        assert "Fast start" in shown and re.search(r"val_loss\D{0,20}\d\.\d{3}", shown), shown
        assert "Attention without mask" not in shown  # only ideas that beat the baseline are parents
    # Explore prompts carry a sample of history with scores and failures.
    assert any("invalid" in p or "implement_failed" in p or "failed" in p for p in model.prompts["explore"])
    assert all("Fast start" in p or "Attention without mask" in p for p in model.prompts["explore"])
    # The leaderboard is ordered by the measured means, lower is better.
    means = [r["stats"].mean for r in rows if r["stats"]]
    assert means == sorted(means)
    assert any(r["stats"].n == 2 for r in rows if r["stats"])  # the best idea was confirmed with a second seed
    # Every model call is stored with its purpose.
    purposes = {r[0] for r in store.execute("SELECT purpose FROM llm_calls").fetchall()}
    assert {"implement", "repair"} <= purposes and any(p.startswith("ideate") for p in purposes)


class CountingIdeator:
    """Proposes the same idea twice (de-duplication keeps one), and counts how often it is asked."""

    name = "counting"

    def __init__(self):
        self.calls = 0

    def initial(self, ctx, n):
        from ideaforge.ideate import Idea

        self.calls += 1
        return [Idea("Raise the learning rate", "LR 0.1 -> 0.4")] * n


def test_resume_does_not_ask_the_ideator_again_for_an_epoch_left_short(tmp_path):
    """Issue 16.4: an epoch short of --ideas because duplicates were dropped is ideated once, not per resume."""
    spec = load_env(quadratic_env(tmp_path / "env"))
    camp = Campaign.create(tmp_path / "camp", spec)
    ideator = CountingIdeator()
    with LocalExecutor(slots=1) as ex:
        search = Search(camp, ex, ideator, SearchConfig(ideas=3))
        assert len(search.ideas_for(0)) == 1
        again = Search(camp, ex, ideator, SearchConfig(ideas=3))  # a resumed controller
        assert len(again.ideas_for(0)) == 1
    assert ideator.calls == 1


def test_resume_in_the_confirmation_phase_confirms_the_same_ideas(tmp_path):
    """Issue 16.5: the confirmation set is picked once; a partial confirm seed that reorders the
    leaderboard does not change it on resume."""
    camp = run_offline(quadratic_env(tmp_path / "env"), tmp_path / "camp", epochs=1, ideas=4, confirm_top=2,
                       confirm_seeds=2)
    store = camp.store
    idea_of = {i["id"]: i["idea_id"] for i in store.implementations()}
    picked = [idea_of[i] for i in store.confirm_set()]
    assert len(picked) == 2
    n_trials = len(store.trials())
    # A confirm seed of the best idea measured terribly: the leaderboard's top 2 changes.
    worst = min(t["metric"] for t in store.trials() if t["metric"] is not None)
    confirm = next(t for t in store.trials(role="confirm") if t["implementation_id"])
    store.execute("UPDATE trials SET metric=? WHERE id=?", (worst - 100, confirm["id"]))
    _, rows = leaderboard(store, "max")
    assert [r["idea_id"] for r in rows if r["stats"]][:2] != picked
    with LocalExecutor(slots=2) as ex:
        Search(camp, ex, offline_ideator(camp.spec),
               SearchConfig(epochs=1, ideas=4, confirm_top=2, confirm_seeds=2)).confirm()
    assert [idea_of[i] for i in store.confirm_set()] == picked
    assert len(store.trials()) == n_trials  # nothing new to run: the same ideas already have their seeds
