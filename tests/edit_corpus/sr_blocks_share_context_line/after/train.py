"""Train a tiny character-level model within the time budget.

The trusted evaluator reads the checkpoint this script writes to IDEAFORGE_OUT.
"""

import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.layers import Block, LayerNorm
from prepare import load_split, vocab_size

# ---- settings ---------------------------------------------------------------
batch_size = 32  # sequences per step
block_size = 64  # context length, characters
n_layer = 2
n_head = 4
n_embd = 128
dropout = 0.2
learning_rate = 3e-4  # peak AdamW learning rate
weight_decay = 0.01
warmup_steps = 100
grad_clip = 1.0
seed = int(os.environ.get("IDEAFORGE_SEED", "0"))
budget_s = float(os.environ.get("IDEAFORGE_BUDGET_S", "60"))
out_dir = os.environ.get("IDEAFORGE_OUT", "out")


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList([Block(n_embd, n_head, dropout) for _ in range(n_layer)])
        self.ln_f = LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)

    def forward(self, idx, targets=None):
        b, t = idx.shape
        pos = torch.arange(t, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        logits = self.head(x)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


def get_lr(step):
    # linear warmup, then cosine decay over an assumed 2000 steps
    if step < warmup_steps:
        return learning_rate * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / 2000)
    return learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


def get_batch(data):
    ix = torch.randint(len(data) - block_size - 1, (batch_size,))
    x = torch.stack([data[i : i + block_size] for i in ix])
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix])
    return x, y


def main():
    torch.manual_seed(seed)
    train_data = load_split("train")
    model = TinyLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    start = time.time()
    step = 0
    while time.time() - start < budget_s:
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step)
        x, y = get_batch(train_data)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if step % 50 == 0:
            print(f"METRIC step={step} train_loss={loss.item():.4f}")
        step += 1
    os.makedirs(out_dir, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(out_dir, "model.pt"))
    print(f"done: {step} steps in {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
