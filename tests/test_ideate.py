"""Ideation: reply parsing, prompts through the real SDKs against the fake server, de-duplication,
and the offline ideators (numeric moves, catalogue ideas) on the built-in environments."""

from __future__ import annotations

import threading

import pytest

from fakes.llm_server import FakeLLMServer
from ideaforge.envs.spec import load_env
from ideaforge.envs.workspace import read_files
from ideaforge.errors import LLMError
from ideaforge.ideate import (
    CatalogueIdeator,
    Context,
    Idea,
    ModelIdeator,
    NumericIdeator,
    OfflineIdeator,
    ScoredIdea,
    dedup,
    is_duplicate,
    offline_ideator,
    parse_ideas,
)
from ideaforge.edit.apply import apply_edits
from ideaforge.edit.parse import parse_reply
from ideaforge.ideate.blocks import applies
from ideaforge.ideate.numeric import find_settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")


@pytest.fixture(scope="module")
def nano():
    return load_env("nanogpt-cpu")


@pytest.fixture(scope="module")
def grpo():
    return load_env("grpo-cpu")


def ctx_for(spec, proposed=(), epoch=0, seed=0, mean=1.5, std=0.01):
    return Context(spec, read_files(spec), mean, std, list(proposed), epoch, seed)


def scored(i, idea, metric=1.4, beats=True, outcome="evaluated"):
    return ScoredIdea(i, idea.title, idea.description, idea.code_changes, outcome,
                      metric if outcome == "evaluated" else None, 0.01, 2, beats, idea.edit, list(idea.parents))


# ---- parsing ------------------------------------------------------------------------------

REPLY = """Here are my ideas.

**[Idea]** Use RMSNorm instead of LayerNorm
**[Description]** Replace every nn.LayerNorm with RMSNorm (no mean subtraction, no bias), which is
cheaper per step on CPU.
[Code Changes] Add an RMSNorm class in train.py; use it in Block and for ln_f.
[Hyperparameters]
eps = 1e-6
[End]

Some thoughts between ideas that are not an idea.

[Idea] 2. Cosine learning-rate decay
[Description] Decay the learning rate with a cosine from its peak to 10% over the time budget.
[Code Changes] In lr_at, compute progress from elapsed time.
[Hyperparameters] none
[End]

[Idea] Larger batch
[Description] Double the batch.
[Code Changes] BATCH_SIZE = 64
[Hyperparameters]
- `BATCH_SIZE`: 64
- LEARNING_RATE = 2e-3
"""


def test_parse_realistic_reply():
    ideas = parse_ideas(REPLY)
    assert [i.title for i in ideas] == ["Use RMSNorm instead of LayerNorm", "Cosine learning-rate decay", "Larger batch"]
    assert ideas[0].description.startswith("Replace every nn.LayerNorm") and "cheaper" in ideas[0].description
    assert ideas[0].code_changes.startswith("Add an RMSNorm class")
    assert ideas[0].hyperparameters == {"eps": "1e-6"}
    assert ideas[1].hyperparameters == {}
    assert ideas[2].hyperparameters == {"BATCH_SIZE": "64", "LEARNING_RATE": "2e-3"}  # no [End]: still an idea
    assert "Title: Larger batch" in ideas[2].text() and "BATCH_SIZE = 64" in ideas[2].text()


def test_parse_reference_experiment_form():
    reply = (
        "[Experiment] Replace the clipped surrogate with REINFORCE using the group mean as baseline. "
        "This removes ratio clipping.\n[Code Changes] In train.py set loss_type.\n[End]\n"
        "[Experiment] Sequence-level loss averaging! Average per answer first.\n[Code Changes] loss_agg.\n[End]"
    )
    ideas = parse_ideas(reply)
    assert [i.title for i in ideas] == [
        "Replace the clipped surrogate with REINFORCE using the group mean as baseline",
        "Sequence-level loss averaging!",
    ]
    assert "removes ratio clipping" in ideas[0].description and ideas[0].code_changes == "In train.py set loss_type."


@pytest.mark.parametrize("garbage", ["", "I cannot help with that.", "[End] [End]", "```python\nx = 1\n```"])
def test_parse_garbage_gives_no_ideas(garbage):
    assert parse_ideas(garbage) == []


# ---- the model ideator against the fake server --------------------------------------------

def _reply(k, tag):
    return "\n".join(f"[Idea] {tag} idea {j}\n[Description] Do {tag} thing {j}.\n[Code Changes] edit.\n[Hyperparameters] none\n[End]"
                     for j in range(k))


def _user_prompt(req):
    return req["json"]["messages"][-1]["content"]


def test_model_ideator_initial_prompt_and_batches(nano):
    calls = []
    lock = threading.Lock()

    def script(provider, req):
        with lock:
            calls.append({"json": req})
            return _reply(10, f"c{len(calls)}")

    recorded = []
    ctx = ctx_for(nano, proposed=["Use RoPE position embeddings: rotate q and k"])
    with FakeLLMServer(script) as srv:
        ideator = ModelIdeator(f"openai-compatible:fake@{srv.openai_url}", recorder=recorded.append, batch_size=10, parallel=4)
        ideas = ideator.initial(ctx, 25)
    assert len(calls) == 3 and len(ideas) == 25 and len(recorded) == 3
    assert {r.purpose for r in recorded} == {"ideate:initial"}
    prompt = _user_prompt(calls[0])
    system = calls[0]["json"]["messages"][0]
    assert system["role"] == "system" and "research scientist" in system["content"]
    assert "===== train.py (editable" in prompt
    n_head_line = (nano.root / "train.py").read_text().splitlines().index("N_HEAD = 4  # attention heads per block") + 1
    assert f"{n_head_line:3d} | N_HEAD = 4  # attention heads per block" in prompt  # code with line numbers
    evaluate_src = (nano.root / "evaluate.py").read_text()
    assert "evaluate.py" in prompt and "never shown" in prompt
    for line in ("def cross_entropy_sum", "def evaluate(client: ModelClient", "IDEAFORGE_RESULT"):
        assert line in evaluate_src and line not in prompt
    val_text = (nano.root / "eval/val.txt").read_text()[:200]
    assert val_text not in prompt
    assert "val_loss" in prompt and "lower is better" in prompt and "1.5 ± 0.01" in prompt and "60 seconds" in prompt
    assert nano.rules[1] in prompt
    assert "Avoid ideas similar to these already proposed:\n- Use RoPE position embeddings" in prompt
    asked = sorted(int(_user_prompt(c).split("Propose ")[1].split()[0]) for c in calls)
    assert asked == [5, 10, 10]
    assert all(i.kind == "initial" and i.origin["prompt"] == "initial" and i.origin["ideator"] == "model" for i in ideas)


def test_model_ideator_exploit_and_explore_prompts(grpo):
    ctx = ctx_for(grpo, proposed=["Entropy bonus"], mean=0.48, std=0.02, epoch=1)
    a = scored(3, Idea("Vanilla REINFORCE", "Drop clipping."), metric=0.61)
    b = scored(5, Idea("Dr GRPO", "No std."), metric=0.55)
    c = scored(7, Idea("Huge lr", "lr 1e-1."), metric=0.20, beats=False)
    d = scored(9, Idea("Broken idea", "Crashes."), outcome="implement_failed", beats=False)
    with FakeLLMServer(lambda p, req: _reply(2, "x")) as srv:
        ideator = ModelIdeator(f"anthropic:claude-opus-4-5@{srv.anthropic_url}", batch_size=10, thinking_budget=1500)
        ex = ideator.exploit(ctx, [c, b, a], 2)
        exploit_req = srv.requests[-1]["json"]
        xp = ideator.explore(ctx, [a, b, c, d], 2)
        explore_req = srv.requests[-1]["json"]
    assert exploit_req["thinking"] == {"type": "enabled", "budget_tokens": 1500} and "research scientist" in exploit_req["system"]
    p = exploit_req["messages"][0]["content"]
    assert "Idea 3: Vanilla REINFORCE" in p and "accuracy = 0.61" in p and "Idea 5: Dr GRPO" in p
    assert p.index("Vanilla REINFORCE") < p.index("Dr GRPO")  # best first (goal = max)
    assert "Huge lr" not in p and "beat the baseline" in p and "0.48 ± 0.02" in p
    assert "- Entropy bonus" in p
    assert [i.parents for i in ex] == [[3, 5], [3, 5]] and {i.kind for i in ex} == {"exploit"}
    q = explore_req["messages"][0]["content"]
    assert "Broken idea" in q and "failed: implement_failed" in q and "Huge lr" in q and "does not beat" in q
    assert "brand-new ideas" in q and "- Entropy bonus" in q and {i.kind for i in xp} == {"explore"}


def test_model_ideator_no_winners_says_so(grpo):
    ctx = ctx_for(grpo, mean=0.48, std=0.02)
    c = scored(7, Idea("Huge lr", "lr 1e-1."), metric=0.40, beats=False)
    with FakeLLMServer([_reply(1, "y")]) as srv:
        ModelIdeator(f"openai:gpt-5@{srv.openai_url}").exploit(ctx, [c], 1)
        p = _user_prompt(srv.requests[-1])
    assert "No idea has beaten the baseline" in p and "Huge lr" in p


def test_model_ideator_garbage_and_errors(grpo):
    ctx = ctx_for(grpo)
    recorded = []
    with FakeLLMServer(["Sorry, I have no ideas today."]) as srv:
        assert ModelIdeator(f"openai:gpt-5@{srv.openai_url}", recorder=recorded.append).initial(ctx, 3) == []
    assert len(recorded) == 1 and recorded[0].reply.startswith("Sorry")
    with FakeLLMServer([{"status": 400}]) as srv:
        with pytest.raises(LLMError):
            ModelIdeator(f"openai:gpt-5@{srv.openai_url}").initial(ctx, 3)


def test_model_ideator_truncates_to_n(grpo):
    with FakeLLMServer([_reply(7, "z")]) as srv:
        ideas = ModelIdeator(f"openai:gpt-5@{srv.openai_url}").initial(ctx_for(grpo), 4)
    assert [i.title for i in ideas] == [f"z idea {j}" for j in range(4)]


# ---- dedup --------------------------------------------------------------------------------

def test_dedup_examples():
    rms = Idea("Use RMSNorm instead of LayerNorm", "")
    assert is_duplicate(Idea("Replace LayerNorm with RMSNorm", ""), [rms])
    assert not is_duplicate(Idea("Use RoPE", ""), [Idea("Use RMSNorm", "")])
    assert is_duplicate(Idea("Cosine learning rate decay", "Decay the learning rate with a cosine schedule."),
                        ["Cosine decay of the learning rate: decay the learning rate with a cosine schedule"])
    assert not is_duplicate(Idea("Cosine learning rate decay", "Decay the learning rate with a cosine schedule."),
                            ["Linear warmup: warm the learning rate up linearly over 200 steps"])
    assert is_duplicate(Idea("Normalise advantages", "x"), [Idea("Normalize advantages", "y")])
    kept = dedup([Idea("Use RMSNorm instead of LayerNorm", ""), Idea("Use RoPE", ""), Idea("Replace LayerNorm with RMSNorm", "")],
                 previous=["Use RoPE"])
    assert [i.title for i in kept] == ["Use RMSNorm instead of LayerNorm"]


def test_dedup_offline_ideas_by_edit():
    e1 = "train.py\n<<<<<<< SEARCH\nlr = 1\n=======\nlr = 2\n>>>>>>> REPLACE\n"
    e2 = "train.py\n<<<<<<< SEARCH\nwd = 1\n=======\nwd = 2\n>>>>>>> REPLACE\n"
    a = Idea("lr: 1 -> 2", "Change lr from 1 to 2.", edit=e1)
    b = Idea("lr: 1 -> 0.5", "Change lr from 1 to 0.5.", edit=e2)  # reads alike, does something else
    assert not is_duplicate(b, [a])
    assert is_duplicate(Idea("something else", "entirely", edit=e2 + e1), [Idea("t", "d", edit=e1 + e2)])
    assert is_duplicate(a, ["lr: 1 -> 2 — Change lr"]) and not is_duplicate(a, ["lr: 1 -> 2 + wd: 1 -> 2"])


# ---- numeric ideator ----------------------------------------------------------------------

SYNTH = '''import argparse
from dataclasses import dataclass

lr = 3e-4  # peak learning rate
SEED = 1337
eval_every = 100
log_interval = 10
use_bias = 1
dropout = 0.0
beta2 = 0.95
n_layer = 6
name = "gpt"
flag = True
config = dict(n_embd=128, weight_decay=1e-1)
opt = {"momentum": 0.9, "eps": 1e-8}
TIME_LIMIT = 60.0

@dataclass
class GPTConfig:
    block_size: int = 256
    vocab_size: int = 65

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    warmup = 100  # inside a function: not a setting
'''


def test_find_settings_synthetic():
    found = {s.name: s for s in find_settings("train.py", SYNTH)}
    assert set(found) == {"lr", "dropout", "beta2", "n_layer", "config.n_embd", "config.weight_decay", "opt.momentum",
                          "GPTConfig.block_size", "batch_size"}
    assert found["lr"].literal == "3e-4" and found["lr"].suffix == "  # peak learning rate"
    assert found["lr"].block(6e-4).new == ("lr = 6e-4  # peak learning rate",)
    assert found["config.n_embd"].block(256).new == ("config = dict(n_embd=256, weight_decay=1e-1)",)


def test_numeric_ideator_on_nanogpt(nano):
    ctx = ctx_for(nano)
    ideator = NumericIdeator()
    names = [s.name for s in ideator.settings(ctx)]
    assert names == ["N_LAYER", "N_HEAD", "N_EMBD", "BLOCK_SIZE", "BATCH_SIZE", "LEARNING_RATE", "WARMUP_STEPS",
                     "WEIGHT_DECAY", "BETAS[0]", "BETAS[1]", "GRAD_CLIP"]
    ideas = ideator.initial(ctx, 100)
    assert len(ideas) == 22 and len({i.title for i in ideas}) == 22
    first = {i.title.split(":")[0] for i in ideas[: len(names)]}
    assert first == set(names)  # every setting once before any setting twice
    titles = {i.title for i in ideas}
    assert {"LEARNING_RATE: 1e-3 -> 2e-3", "LEARNING_RATE: 1e-3 -> 5e-4", "BETAS[1]: 0.99 -> 0.995", "N_LAYER: 4 -> 8"} <= titles
    for i in ideas:
        res = apply_edits(ctx.files, parse_reply(i.edit), nano)
        changed = res.files["train.py"].splitlines()
        assert sum(a != b for a, b in zip(changed, ctx.files["train.py"].splitlines())) == 1
        assert i.kind == "initial" and i.hyperparameters and i.origin["ideator"] == "numeric"
    lr = next(i for i in ideas if i.title == "LEARNING_RATE: 1e-3 -> 2e-3")
    assert "LEARNING_RATE = 2e-3  # peak AdamW learning rate" in apply_edits(ctx.files, parse_reply(lr.edit), nano).files["train.py"]


def test_numeric_determinism_and_proposed(nano):
    a = NumericIdeator().initial(ctx_for(nano, seed=1), 5)
    b = NumericIdeator().initial(ctx_for(nano, seed=1), 5)
    c = NumericIdeator().initial(ctx_for(nano, seed=2), 5)
    assert [i.title for i in a] == [i.title for i in b] != [i.title for i in c]
    proposed = [f"{i.title}: {i.description}" for i in a]
    again = NumericIdeator().initial(ctx_for(nano, proposed=proposed, seed=1), 30)
    assert not {i.title for i in again} & {i.title for i in a} and len(again) == 22 - 5


def test_numeric_exploit_and_explore(nano):
    ctx = ctx_for(nano, seed=3)
    ideator = NumericIdeator()
    ideas = {i.title: i for i in ideator.initial(ctx, 100)}
    lr = scored(1, ideas["LEARNING_RATE: 1e-3 -> 2e-3"], metric=1.40)
    wd = scored(2, ideas["WEIGHT_DECAY: 0.1 -> 0.05"], metric=1.45)
    b1 = scored(3, ideas["BETAS[1]: 0.99 -> 0.995"], metric=1.44)
    b0 = scored(4, ideas["BETAS[0]: 0.9 -> 0.95"], metric=1.46)
    proposed = [i for i in ideas]
    ctx1 = ctx_for(nano, proposed=proposed, epoch=1, seed=3)
    out = ideator.exploit(ctx1, [wd, b0, lr, b1], 50)
    titles = [i.title for i in out]
    assert titles[0] == "LEARNING_RATE: 1e-3 -> 4e-3" and out[0].parents == [1]  # best parent pushed further first
    assert "BETAS[1]: 0.99 -> 0.9975" in titles and "WEIGHT_DECAY: 0.1 -> 0.025" in titles
    assert "LEARNING_RATE: 1e-3 -> 2e-3 + BETAS[1]: 0.99 -> 0.995" in titles
    combo = next(i for i in out if i.title == "LEARNING_RATE: 1e-3 -> 2e-3 + BETAS[1]: 0.99 -> 0.995")
    assert combo.parents == [1, 3]
    # BETAS[0] and BETAS[1] edit the same line: never combined
    assert not any("BETAS[0]" in t and "BETAS[1]" in t for t in titles)
    for i in out:
        assert i.kind == "exploit" and applies(ctx, i.edit) and i.title not in proposed
    history = [lr, wd, b1, b0]
    ctx2 = ctx_for(nano, proposed=[s.title for s in history], epoch=1, seed=3)
    ex = ideator.explore(ctx2, history, 7)  # 7 settings nobody moved yet
    assert {i.title.split(":")[0] for i in ex} == {"N_LAYER", "N_HEAD", "N_EMBD", "BLOCK_SIZE", "BATCH_SIZE", "WARMUP_STEPS", "GRAD_CLIP"}
    assert all(i.kind == "explore" and applies(ctx, i.edit) for i in ex)
    ex = ideator.explore(ctx1, history, 100)  # every one-step move proposed: two-step jumps remain
    assert ex and not any(i.title in proposed for i in ex) and "LEARNING_RATE: 1e-3 -> 4e-3" in {i.title for i in ex}


# ---- catalogue and offline ideators -------------------------------------------------------

def test_catalogue_ideator_on_grpo(grpo):
    ctx = ctx_for(grpo, mean=0.48, std=0.02)
    cat = CatalogueIdeator(grpo)
    ideas = cat.initial(ctx, 100)
    assert len(ideas) == len(cat.entries) == 8
    assert all(applies(ctx, i.edit) and i.origin["catalogue_id"] for i in ideas)
    assert [i.title for i in cat.initial(ctx, 3)] == [i.title for i in ideas[:3]]
    by_id = {i.origin["catalogue_id"]: i for i in ideas}
    a = scored(10, by_id["dr-grpo-no-std"], metric=0.55)
    b = scored(11, by_id["sequence-level-loss"], metric=0.52)
    ctx1 = ctx_for(grpo, proposed=[a.title, b.title], mean=0.48, std=0.02, epoch=1)
    out = cat.exploit(ctx1, [b, a], 5)
    assert out[0].title == f"{a.title} + {b.title}" and out[0].parents == [10, 11]
    res = apply_edits(ctx.files, parse_reply(out[0].edit), grpo).files["train.py"]
    assert "normalize_by_std = False" in res and 'loss_agg = "sequence"' in res
    assert all(applies(ctx, i.edit) for i in out) and len(out) == 5
    assert all(i.parents in ([10, 11], [10], [11]) for i in out)
    ex = cat.explore(ctx1, [a, b], 100)
    assert len(ex) == 6 and not {i.title for i in ex} & {a.title, b.title}


def test_catalogue_absent_gives_nothing(tmp_path):
    from fakes.toyenv import make_toy_env

    spec = load_env(make_toy_env(tmp_path))
    ctx = ctx_for(spec)
    assert CatalogueIdeator(spec).initial(ctx, 5) == []
    assert isinstance(offline_ideator(spec), OfflineIdeator)


def test_offline_ideator_mixes_catalogue_and_numeric(grpo):
    ctx = ctx_for(grpo, mean=0.48, std=0.02, seed=5)
    off = offline_ideator(grpo)
    ideas = off.initial(ctx, 15)
    assert len(ideas) == 15
    assert [i.origin["ideator"] for i in ideas] == ["catalogue"] * 8 + ["numeric"] * 7
    assert all(applies(ctx, i.edit) for i in ideas)
    assert [i.title for i in off.initial(ctx, 15)] == [i.title for i in ideas]
    cat = {i.origin.get("catalogue_id"): i for i in ideas}
    num = [i for i in ideas if i.origin["ideator"] == "numeric"]
    a = scored(1, cat["reinforce-group-baseline"], metric=0.6)
    b = scored(2, num[0], metric=0.55)
    ctx1 = ctx_for(grpo, proposed=[i.title for i in ideas], mean=0.48, std=0.02, epoch=1, seed=5)
    out = off.exploit(ctx1, [a, b], 12)
    assert len(out) == 12 and all(applies(ctx, i.edit) for i in out)
    assert any(i.parents == [1, 2] for i in out)  # a catalogue idea combined with a numeric move
    assert not {i.title for i in out} & set(ctx1.proposed)
    assert [i.title for i in off.exploit(ctx1, [a, b], 12)] == [i.title for i in out]
    ex = off.explore(ctx1, [a, b], 5)
    assert len(ex) == 5 and not {i.title for i in ex} & set(ctx1.proposed)
