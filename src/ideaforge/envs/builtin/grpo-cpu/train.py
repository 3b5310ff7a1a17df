"""GRPO post-training of a tiny arithmetic policy, from scratch, on a fixed CPU-time budget.

The task: given four digits to add, "7+8+5+3=", write the running sums as working steps
and end with ".": "15,20,23.". Only the final number is graded, as MATH grades the final
answer and not the working.

The starting policy ($IDEAFORGE_PREPARED/sft.pt) was made by prepare.py: supervised
fine-tuning on imperfect demonstrations (each working step wrong with probability 0.15, so
38% end in a wrong answer). This script improves it with GRPO (Shao et al. 2024): for
each prompt it samples `group_size` completions, scores them with the verifier, normalises
the rewards within each group into advantages, and takes a policy-gradient step with a
clipped importance ratio.

Training problems are $IDEAFORGE_PREPARED/train.jsonl: prompts and the verifier's answer
keys, no answers and no worked solutions (the held-out evaluation problems are excluded
from it). The final policy is saved to $IDEAFORGE_OUT/policy.pt as
{"config": ..., "state_dict": ...}; the evaluator loads these weights into its own copy of
the fixed policy class of policy.py (which this file may use but not change).
"""

import json
import os
import random
import time

import torch
import torch.nn.functional as F

# The tokenizer and the policy architecture are fixed and live in policy.py (read-only):
# VOCAB, encode/decode, PROMPT_LEN, END, build_model(config) -> model(idx) -> logits [B, T, len(VOCAB)],
# and the verifier's pieces: final_answer(completion) and answer_key(prompt, final).
from policy import END, PROMPT_LEN, VOCAB, answer_key, build_model, decode, encode, final_answer  # noqa: F401


# ---------------------------------------------------------------- settings
group_size = 8  # samples per prompt (G), count
prompts_per_step = 32  # distinct prompts per rollout batch, count
learning_rate = 1e-4  # AdamW step size, per optimizer step
weight_decay = 0.0  # AdamW decoupled weight decay, per step
betas = (0.9, 0.95)  # AdamW moment decay rates
grad_clip = 1.0  # max global gradient norm, L2
updates_per_rollout = 1  # optimizer steps on each rollout batch (ratio != 1 only when > 1), count
loss_type = "grpo_clip"  # "grpo_clip" | "reinforce_with_baseline" | "no_baseline"
cliprange = 0.2  # PPO-style ratio clip epsilon, dimensionless
advantage_eps = 1e-6  # added to the group std before dividing, reward units
normalize_by_std = True  # divide group-centred rewards by the group std, bool
loss_agg = "token"  # "token": mean over all response tokens in the batch; "sequence": mean per answer, then over answers
temperature = 1.0  # sampling temperature for rollouts, dimensionless
max_new_tokens = 9  # longest sampled completion incl. the "." end marker, tokens
log_every = 10  # steps between METRIC lines, count


# ---------------------------------------------------------------- reward (for training only; the evaluator has its own strict grader)
def reward_fn(response, prompt, key):
    """The verifier: 1.0 when the completion is well formed and its final number matches the
    problem's answer key, else 0.0. It checks an answer; it cannot produce one."""
    final = final_answer(response)
    return 1.0 if final is not None and answer_key(prompt, final) == key else 0.0


# ---------------------------------------------------------------- rollouts and loss
@torch.no_grad()
def sample(model, prompts, n_new, temp):
    """Autoregressive sampling; returns the full sequences [B, PROMPT_LEN + n_new]."""
    idx = prompts
    for _ in range(n_new):
        logits = model(idx)[:, -1, :] / max(temp, 1e-6)
        nxt = torch.multinomial(F.softmax(logits, dim=-1), 1)
        idx = torch.cat([idx, nxt], dim=1)
    return idx


def response_mask(seqs):
    """1 for completion tokens up to and including the first ".", 0 after it. Shape [B, n_new]."""
    resp = seqs[:, PROMPT_LEN:]
    is_end = (resp == END).int()
    ended_before = torch.cumsum(is_end, dim=1) - is_end  # ends strictly before this position
    return (ended_before == 0).float()


def token_logprobs(model, seqs):
    """log pi(token | prefix) for every completion token. Shape [B, n_new]."""
    logits = model(seqs[:, :-1])[:, PROMPT_LEN - 1 :, :]
    return torch.gather(F.log_softmax(logits, dim=-1), 2, seqs[:, PROMPT_LEN:, None]).squeeze(2)


def group_advantages(rewards):
    """Group-normalised advantages: (r - mean_group) / (std_group + eps)."""
    r = rewards.view(-1, group_size)
    adv = r - r.mean(dim=1, keepdim=True)
    if normalize_by_std:
        adv = adv / (r.std(dim=1, keepdim=True) + advantage_eps)
    return adv.reshape(-1)


def policy_loss(logp, old_logp, advantages, rewards, mask):
    A = advantages[:, None]
    if loss_type == "grpo_clip":
        ratio = torch.exp(logp - old_logp)
        per_token = -torch.min(ratio * A, torch.clamp(ratio, 1 - cliprange, 1 + cliprange) * A)
    elif loss_type == "reinforce_with_baseline":
        per_token = -A * logp
    elif loss_type == "no_baseline":
        per_token = -rewards[:, None] * logp
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    if loss_agg == "token":
        return (per_token * mask).sum() / mask.sum().clamp(min=1)
    return ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()


# ---------------------------------------------------------------- main
def load_problems(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    t0 = time.time()
    budget_s = float(os.environ.get("IDEAFORGE_BUDGET_S", "60"))
    prepared = os.environ["IDEAFORGE_PREPARED"]
    out_dir = os.environ.get("IDEAFORGE_OUT", ".")
    seed = int(os.environ.get("IDEAFORGE_SEED", "0"))
    torch.set_num_threads(int(os.environ.get("IDEAFORGE_THREADS", "1")))
    torch.manual_seed(seed)
    rng = random.Random(seed)

    problems = load_problems(os.path.join(prepared, "train.jsonl"))
    ckpt = torch.load(os.path.join(prepared, "sft.pt"), map_location="cpu", weights_only=True)
    config = ckpt["config"]
    model = build_model(config)
    model.load_state_dict(ckpt["state_dict"])
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=betas, weight_decay=weight_decay)

    step = 0
    # The budget's clock: this process's CPU seconds when the harness counts CPU, else wall seconds.
    cpu_clock = os.environ.get("IDEAFORGE_BUDGET_CLOCK") == "cpu"
    smoke_steps = int(os.environ.get("IDEAFORGE_SMOKE_STEPS", "0"))  # smoke check: stop after this many steps (0: off)
    while (time.process_time() if cpu_clock else time.time() - t0) < budget_s and not (smoke_steps and step >= smoke_steps):
        batch = rng.sample(problems, prompts_per_step)
        prompts = torch.tensor([encode(p["prompt"]) for p in batch for _ in range(group_size)])
        rows = [p for p in batch for _ in range(group_size)]
        model.eval()
        seqs = sample(model, prompts, max_new_tokens, temperature)
        rewards = torch.tensor([reward_fn(decode(s[PROMPT_LEN:].tolist()), p["prompt"], p["key"]) for s, p in zip(seqs, rows)])
        advantages = group_advantages(rewards)
        mask = response_mask(seqs)
        with torch.no_grad():
            old_logp = token_logprobs(model, seqs)
        model.train()
        for _ in range(updates_per_rollout):
            loss = policy_loss(token_logprobs(model, seqs), old_logp, advantages, rewards, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
        step += 1
        if step % log_every == 0:
            print(f"METRIC step={step} reward={rewards.mean().item():.4f} loss={loss.item():.4f} "
                  f"elapsed_s={time.time() - t0:.1f}", flush=True)

    os.makedirs(out_dir, exist_ok=True)
    torch.save({"config": config, "state_dict": model.state_dict()}, os.path.join(out_dir, "policy.pt"))
    print(f"done: {step} steps in {time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
