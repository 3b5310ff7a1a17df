"""One-time, deterministic preparation for grpo-cpu (run by ideaforge, cached per machine).

The task: add four digits, "7+8+5+3=", writing the running sums as working steps and ending
with ".": "15,20,23.". Only the final number is graded.

Writes into $IDEAFORGE_PREPARED:
  train.jsonl  the training problems: every "a+b+c+d=" with digits 1..9 (6,561 in all) EXCEPT
               the held-out evaluation problems, which it reads from the evaluator's hidden
               file eval/heldout.jsonl so the two sets are disjoint. Each row holds the prompt
               and the verifier's key, policy.answer_key(prompt, answer), NOT the answer or
               a worked solution: {"prompt": "7+8+5+3=", "key": "3f0c..."}.
  sft.pt       the starting policy {"config", "state_dict"}: the fixed policy of policy.py
               trained by supervised fine-tuning, for a fixed number of steps, on one
               demonstration per training problem. The demonstrations are imperfect, as
               human or model-written solutions are: each working step is wrong with
               probability STEP_NOISE (off by 1, 2 or 10), and later steps build on the wrong
               value, so 38% of the demonstrations end in a wrong answer. Imitating them
               perfectly caps the accuracy near 0.62; the verifier's reward can do better.
The demonstrations are not written out: they are the SFT start's data, not train.py's.
"""

import json
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.getcwd())
from policy import END, PROMPT_LEN, answer_key, build_model, default_config, encode  # noqa: E402

SEED = 1234  # everything below is seeded from this
STEP_NOISE = 0.15  # probability that a demonstration's working step is wrong
SFT_STEPS = 700  # optimizer steps of supervised fine-tuning (fixed, so the result is deterministic)
BATCH = 128  # demonstrations per step
LR = 3e-3  # AdamW peak step size, decayed linearly to 0 over SFT_STEPS
SEQ_LEN = 18  # prompt (8) + longest completion "17,26,35." (9) + padding, = block_size


def all_problems():
    return [(a, b, c, d) for a in range(1, 10) for b in range(1, 10) for c in range(1, 10) for d in range(1, 10)]


def prompt_of(digits):
    return "+".join(str(x) for x in digits) + "="


def demonstration(digits, rng):
    """A worked solution "s1,s2,s3." whose steps are each wrong with probability STEP_NOISE."""
    total, steps = digits[0], []
    for x in digits[1:]:
        total += x
        if rng.random() < STEP_NOISE:
            total = max(0, total + rng.choice([-10, -2, -1, 1, 2, 10]))
        steps.append(str(total))
    return ",".join(steps) + "."


def demonstrations(problems, seed=SEED):
    """One fixed demonstration per problem (a list of (prompt, completion))."""
    rng = random.Random(seed)
    return [(prompt_of(d), demonstration(d, rng)) for d in problems]


def training_problems():
    with open(os.path.join("eval", "heldout.jsonl")) as f:
        held = {json.loads(line)["prompt"] for line in f if line.strip()}
    train = [d for d in all_problems() if prompt_of(d) not in held]
    assert len(train) + len(held) == len(all_problems())
    return train


def sft_tensors(demos):
    rows, masks = [], []
    for prompt, completion in demos:
        toks = encode(prompt + completion)
        pad = SEQ_LEN - len(toks)
        rows.append(toks + [END] * pad)
        masks.append([0] * PROMPT_LEN + [1] * (len(toks) - PROMPT_LEN) + [0] * pad)
    return torch.tensor(rows), torch.tensor(masks, dtype=torch.float)


def main():
    out = os.environ["IDEAFORGE_PREPARED"]
    torch.set_num_threads(int(os.environ.get("IDEAFORGE_THREADS", "1")))
    torch.manual_seed(SEED)
    t0 = time.time()

    train = training_problems()
    with open(os.path.join(out, "train.jsonl"), "w") as f:
        for d in train:
            f.write(json.dumps({"prompt": prompt_of(d), "key": answer_key(prompt_of(d), str(sum(d)))}) + "\n")

    data, loss_mask = sft_tensors(demonstrations(train))
    config = default_config()
    model = build_model(config)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(SEED)
    for step in range(SFT_STEPS):
        for group in opt.param_groups:
            group["lr"] = LR * (1 - step / SFT_STEPS)
        ix = torch.randint(len(data), (BATCH,), generator=gen)
        x, m = data[ix], loss_mask[ix]
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
        loss = (loss * m[:, 1:]).sum() / m[:, 1:].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            print(f"sft step={step + 1} loss={loss.item():.4f} elapsed_s={time.time() - t0:.1f}", flush=True)
    torch.save({"config": config, "state_dict": model.state_dict()}, os.path.join(out, "sft.pt"))
    print(f"prepared {len(train)} training problems and sft.pt in {time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
