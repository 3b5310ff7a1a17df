"""GRPO post-training of a fixed math model (model.py) on MATH, for a fixed wall-clock budget.

Each step samples ROLLOUT_BATCH training problems, GROUP_SIZE answers to each with the R1-Zero
prompt (temperature 1.0, top-p 1.0, stop after </answer>), rewards them with the training
reward below, normalises rewards within each group into advantages, and takes optimizer steps
on the policy-gradient loss (LOSS_TYPE). Every EVAL_EVERY steps, and at the end, the policy is
saved to $IDEAFORGE_OUT/ckpt/step_NNNNNN; the hidden evaluator scores the saved policies on
held-out problems with its own strict grader and sampling, and the score is the best of them.

Rollouts use HF generate (vLLM is not wired in; see docs/environments.md).

Environment: IDEAFORGE_BUDGET_S (seconds, counted from process start), IDEAFORGE_SEED,
IDEAFORGE_OUT, IDEAFORGE_PREPARED (model/, train.jsonl), IDEAFORGE_THREADS; GRPO_PRESET
(full, 1gpu or tiny) picks the sizes in PRESETS.
"""

import time

START_TIME = time.time()  # wall clock at process start, seconds; the budget counts from here

import json
import os
import random
import re
from pathlib import Path

import torch

from model import STOP, format_prompt, load_policy

BUDGET_S = float(os.environ.get("IDEAFORGE_BUDGET_S", 3600))
SEED = int(os.environ.get("IDEAFORGE_SEED", 0))
OUT_DIR = Path(os.environ.get("IDEAFORGE_OUT", "out"))
PREPARED = Path(os.environ.get("IDEAFORGE_PREPARED", "prepared"))
THREADS = int(os.environ.get("IDEAFORGE_THREADS", 1))
PRESET = os.environ.get("GRPO_PRESET", "full")

# Sizes per preset: rollout_batch prompts x group_size answers per step, split into optimizer
# steps of grad_accum micro-batches of micro_batch sequences.
PRESETS = {
    "full": dict(rollout_batch=128, group_size=8, micro_batch=4, grad_accum=16, max_new_tokens=1024, grpo_steps=20),
    "1gpu": dict(rollout_batch=32, group_size=8, micro_batch=4, grad_accum=16, max_new_tokens=512, grpo_steps=20),
    "tiny": dict(rollout_batch=4, group_size=4, micro_batch=4, grad_accum=2, max_new_tokens=24, grpo_steps=1000),
}
LEARNING_RATE = 1e-5  # AdamW step size
BETAS = (0.9, 0.95)  # AdamW momentum coefficients
WEIGHT_DECAY = 0.0
LOSS_TYPE = "grpo_clip"  # grpo_clip, reinforce_with_baseline or no_baseline
CLIPRANGE = 0.2  # PPO-style ratio clip for grpo_clip
ADV_EPS = 1e-6  # added to the group std when normalising advantages
NORMALIZE_BY_STD = True  # divide advantages by the group std
TRAIN_STEPS_PER_ROLLOUT = 1  # passes over each rollout batch
EVAL_EVERY = 2  # GRPO steps between saved checkpoints (the evaluator scores at most 10)
TEMPERATURE, TOP_P = 1.0, 1.0  # rollout sampling
ROLLOUT_CHUNK = 256  # sequences per generate call
SAVE_RESERVE_S = 0.05  # fraction of the budget kept free at the end for the last save


# ---------------------------------------------------------------- data and reward
def load_problems(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def normalize(ans: str) -> str:
    """A light MATH-style normal form: no spaces, \\left/\\right, dollars, trailing period, dfrac -> frac."""
    s = ans.strip().strip("$").rstrip(".")
    for a, b in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("dfrac", "frac"), ("tfrac", "frac"), ("^\\circ", ""), ("^{\\circ}", "")):
        s = s.replace(a, b)
    s = re.sub(r"\\text\{\s*([^}]*)\}", r"\1", s)
    return s.replace(" ", "")


def extract_answer(response: str) -> str | None:
    """The answer of a well-formatted response ('... </think> <answer> X </answer>'), else None."""
    if "</think> <answer>" not in response or STOP not in response:
        return None
    ans = response.split("<answer>")[-1].split(STOP)[0]
    m = re.search(r"\\boxed\{(.*)\}", ans)
    return m.group(1) if m else ans


def reward_fn(response: str, answer: str) -> float:
    """Training reward: 1 for a well-formatted correct answer, else 0 (change freely; the evaluator has its own)."""
    got = extract_answer(response)
    return float(got is not None and normalize(got) == normalize(answer))


# ---------------------------------------------------------------- rollouts and loss
@torch.no_grad()
def rollout(model, tok, prompts: list[str], max_new_tokens: int, device: str) -> list[str]:
    texts = []
    for i in range(0, len(prompts), ROLLOUT_CHUNK):  # bounded KV cache: 256 x 1.3k tokens is ~9 GB for 1.5B
        enc = tok(prompts[i : i + ROLLOUT_CHUNK], return_tensors="pt", padding=True).to(device)
        out = model.generate(**enc, do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, max_new_tokens=max_new_tokens,
                             stop_strings=[STOP], tokenizer=tok, pad_token_id=tok.pad_token_id)
        texts += tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [t.split(STOP)[0] + STOP if STOP in t else t for t in texts]


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Rewards [N*G] -> advantages: minus the group mean, divided by the group std (+eps)."""
    r = rewards.view(-1, group_size)
    adv = r - r.mean(dim=1, keepdim=True)
    if NORMALIZE_BY_STD:
        adv = adv / (r.std(dim=1, keepdim=True) + ADV_EPS)
    return adv.view(-1)


def tokenize_pairs(tok, prompts: list[str], responses: list[str], device: str):
    """Right-padded prompt+response ids [B, L] and a mask [B, L-1] of the predicted response tokens."""
    p_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    r_ids = [tok(r, add_special_tokens=False)["input_ids"] for r in responses]
    L = max(len(a) + len(b) for a, b in zip(p_ids, r_ids))
    ids = torch.full((len(prompts), L), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), L - 1)
    for i, (a, b) in enumerate(zip(p_ids, r_ids)):
        ids[i, : len(a) + len(b)] = torch.tensor(a + b)
        mask[i, len(a) - 1 : len(a) + len(b) - 1] = 1.0  # position t predicts token t+1
    return ids.to(device), mask.to(device)


def token_logprobs(model, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids).logits[:, :-1].float()
    return torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def policy_loss(logp, old_logp, adv, raw_reward, mask) -> torch.Tensor:
    """Token-level masked mean of the per-token policy-gradient loss over the micro-batch."""
    if LOSS_TYPE == "grpo_clip":
        ratio = torch.exp(logp - old_logp)
        a = adv[:, None]
        per_token = -torch.min(ratio * a, torch.clamp(ratio, 1 - CLIPRANGE, 1 + CLIPRANGE) * a)
    elif LOSS_TYPE == "reinforce_with_baseline":
        per_token = -adv[:, None] * logp
    elif LOSS_TYPE == "no_baseline":
        per_token = -raw_reward[:, None] * logp
    else:
        raise ValueError(f"unknown LOSS_TYPE {LOSS_TYPE!r}")
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def train_on_rollouts(model, opt, tok, prompts, responses, adv, rewards, p, device) -> None:
    ids, mask = tokenize_pairs(tok, prompts, responses, device)
    mb = p["micro_batch"]
    with torch.no_grad():
        old = torch.cat([token_logprobs(model, ids[i : i + mb]) for i in range(0, len(ids), mb)])
    order = list(range(0, len(ids), mb))
    for _ in range(TRAIN_STEPS_PER_ROLLOUT):
        for k, i in enumerate(order):
            sl = slice(i, i + mb)
            loss = policy_loss(token_logprobs(model, ids[sl]), old[sl], adv[sl], rewards[sl], mask[sl])
            (loss / p["grad_accum"]).backward()
            if (k + 1) % p["grad_accum"] == 0 or k == len(order) - 1:
                opt.step()
                opt.zero_grad(set_to_none=True)


def save(model, step: int) -> None:
    model.save_pretrained(OUT_DIR / "ckpt" / f"step_{step:06d}", safe_serialization=True)


def main():
    torch.set_num_threads(THREADS)
    random.seed(SEED)
    torch.manual_seed(SEED)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    p = PRESETS[PRESET]
    model, tok = load_policy(device)
    if device == "cuda":
        model.gradient_checkpointing_enable()  # 1.5B with 1k-token rollouts: activations, not weights, fill the GPU
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=BETAS, weight_decay=WEIGHT_DECAY)
    train = load_problems(PREPARED / "train.jsonl")
    print(f"preset={PRESET} problems={len(train)} device={device} budget_s={BUDGET_S}", flush=True)
    step, step_time = 0, 0.0
    while step < p["grpo_steps"] and time.time() - START_TIME + step_time < BUDGET_S * (1 - SAVE_RESERVE_S):
        t0 = time.time()
        batch = random.sample(train, min(p["rollout_batch"], len(train)))
        prompts = [format_prompt(q["problem"]) for q in batch for _ in range(p["group_size"])]
        answers = [q["answer"] for q in batch for _ in range(p["group_size"])]
        model.eval()
        responses = rollout(model, tok, prompts, p["max_new_tokens"], device)
        rewards = torch.tensor([reward_fn(r, a) for r, a in zip(responses, answers)], device=device)
        adv = group_advantages(rewards, p["group_size"])
        model.train()
        train_on_rollouts(model, opt, tok, prompts, responses, adv, rewards, p, device)
        step += 1
        step_time = time.time() - t0
        print(f"METRIC step={step} train_reward={rewards.mean().item():.4f} step_s={step_time:.1f} "
              f"elapsed_s={time.time() - START_TIME:.1f}", flush=True)
        if step % EVAL_EVERY == 0:
            save(model, step)
    if step % EVAL_EVERY or step == 0:
        save(model, step)
    print(f"done steps={step} elapsed_s={time.time() - START_TIME:.1f}", flush=True)


if __name__ == "__main__":
    main()
