"""One-time, deterministic preparation for grpo-cpu (run by ideaforge, cached per machine).

Writes into $IDEAFORGE_PREPARED:
  train.jsonl  the training problems: every "ab+cd=" / "ab-cd=" with two-digit operands
               (16,200 in all) EXCEPT the held-out evaluation problems, which it reads from
               the evaluator's hidden file eval/heldout.jsonl so the two sets are disjoint.
  sft.pt       the starting policy {"config", "state_dict"}: the fixed policy of policy.py
               trained by supervised fine-tuning, for a fixed number of steps, on one
               demonstration per training problem, about 30% of which have a wrong answer
               (off by 1, 2, 9, 10, 11 or 20; seeded).
"""

import json
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.getcwd())
from policy import PROMPT_LEN, END, build_model, default_config, encode  # noqa: E402

SEED = 1234  # everything below is seeded from this
NOISE = 0.30  # fraction of demonstrations with a wrong answer
SFT_STEPS = 450  # optimizer steps of supervised fine-tuning (fixed, so the result is deterministic)
BATCH = 256  # demonstrations per step
LR = 3e-3  # AdamW step size
SEQ_LEN = PROMPT_LEN + 5  # prompt + longest answer "-99." / "198." + padding


def all_problems():
    return [(a, op, b) for a in range(10, 100) for op in "+-" for b in range(10, 100)]


def main():
    out = os.environ["IDEAFORGE_PREPARED"]
    torch.set_num_threads(int(os.environ.get("IDEAFORGE_THREADS", "1")))
    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    t0 = time.time()

    with open(os.path.join("eval", "heldout.jsonl")) as f:
        held = {json.loads(line)["prompt"] for line in f if line.strip()}
    train = []
    for a, op, b in all_problems():
        prompt = f"{a}{op}{b}="
        if prompt not in held:
            train.append({"prompt": prompt, "answer": a + b if op == "+" else a - b})
    assert len(train) + len(held) == len(all_problems())
    with open(os.path.join(out, "train.jsonl"), "w") as f:
        for p in train:
            f.write(json.dumps(p) + "\n")

    # One fixed demonstration per training problem; NOISE of them are wrong.
    rows, masks = [], []
    for p in train:
        ans = p["answer"]
        if rng.random() < NOISE:
            ans += rng.choice([-20, -11, -10, -9, -2, -1, 1, 2, 9, 10, 11, 20])
        toks = encode(p["prompt"] + f"{ans}.")
        pad = SEQ_LEN - len(toks)
        rows.append(toks + [END] * pad)
        masks.append([0] * PROMPT_LEN + [1] * (len(toks) - PROMPT_LEN) + [0] * pad)
    data, loss_mask = torch.tensor(rows), torch.tensor(masks, dtype=torch.float)

    config = default_config()
    model = build_model(config)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(SEED)
    for step in range(SFT_STEPS):
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
