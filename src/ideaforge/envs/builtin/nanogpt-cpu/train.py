"""Character-level GPT on Shakespeare, trained for a fixed wall-clock budget on CPU.

The score is the validation loss in nats per character, computed by a separate,
trusted evaluator on held-out text this script cannot read. The evaluator rebuilds
the model from THIS file, so keep the interface below when you edit it:

  * build_model(config: dict) -> torch.nn.Module, where config is the dict saved in
    the checkpoint and config["block_size"] is the context length (in characters)
    the model is evaluated at (32 to 2048);
  * model(idx) with idx a LongTensor [B, T], T <= block_size, returns logits
    [B, T, vocab_size] (a tuple whose first item is the logits also works);
    logits at position t may depend only on idx[:, :t+1] (causal) and only on
    the same sequence (no mixing across the batch);
  * the checkpoint is torch.save({"config": ..., "state_dict": ..., "vocab": ...})
    at $IDEAFORGE_OUT/ckpt.pt;
  * the vocabulary is every distinct character of train.txt, sorted by code point
    (see build_vocab); the evaluator recomputes it the same way and refuses a
    checkpoint whose vocab differs;
  * importing this file does no work; training starts only under __main__.

Environment: IDEAFORGE_BUDGET_S (seconds of training), IDEAFORGE_SEED,
IDEAFORGE_OUT (checkpoint directory), IDEAFORGE_DATA (directory with train.txt),
IDEAFORGE_THREADS (CPU threads), IDEAFORGE_BUDGET_CLOCK ("cpu" or "wall", see budget_used_s),
IDEAFORGE_SMOKE_STEPS (the smoke check: stop after that many optimizer steps, still saving the checkpoint).
"""

import time

START_TIME = time.time()  # wall clock at process start, seconds; the budget counts from here

import math
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------- settings
BUDGET_S = float(os.environ.get("IDEAFORGE_BUDGET_S", 60))  # seconds of wall clock for the whole run
SEED = int(os.environ.get("IDEAFORGE_SEED", 0))  # integer seed for init and batch sampling
OUT_DIR = Path(os.environ.get("IDEAFORGE_OUT", "out"))  # directory the checkpoint is written to
DATA_DIR = Path(os.environ.get("IDEAFORGE_DATA", "data"))  # directory holding train.txt
THREADS = int(os.environ.get("IDEAFORGE_THREADS", 1))  # CPU threads torch may use
SMOKE_STEPS = int(os.environ.get("IDEAFORGE_SMOKE_STEPS", 0))  # smoke check: stop after this many steps (0: off)

N_LAYER = 4  # transformer blocks
N_HEAD = 4  # attention heads per block
N_EMBD = 128  # residual stream width, channels
BLOCK_SIZE = 128  # context length, characters
BATCH_SIZE = 32  # sequences per optimizer step
LEARNING_RATE = 1e-3  # peak AdamW learning rate
WARMUP_STEPS = 50  # steps of linear warmup from 0 to LEARNING_RATE, then constant
WEIGHT_DECAY = 0.1  # AdamW decoupled weight decay on matrices (not on biases/norms/embeddings)
BETAS = (0.9, 0.99)  # AdamW momentum coefficients
GRAD_CLIP = 1.0  # max global gradient norm
LOG_EVERY = 10  # steps between METRIC progress lines (the learning curve)
SAVE_RESERVE_S = 1.0  # seconds kept free at the end of the budget for saving the checkpoint
CPU_CLOCK = os.environ.get("IDEAFORGE_BUDGET_CLOCK") == "cpu"  # the harness counts CPU seconds, not wall


def budget_used_s() -> float:
    """Seconds of the budget used: this process's CPU seconds (cpu clock) or wall seconds since START_TIME."""
    return time.process_time() if CPU_CLOCK else time.time() - START_TIME


# ---------------------------------------------------------------- data
def build_vocab(text: str) -> str:
    """The vocabulary: every distinct character of train.txt, sorted. Token id = index in this string."""
    return "".join(sorted(set(text)))


def load_data():
    text = (DATA_DIR / "train.txt").read_text(encoding="utf-8")
    vocab = build_vocab(text)
    stoi = {ch: i for i, ch in enumerate(vocab)}
    data = torch.tensor([stoi[ch] for ch in text], dtype=torch.long)
    return data, vocab


def get_batch(data: torch.Tensor, gen: torch.Generator):
    """BATCH_SIZE random windows: inputs x and next-character targets y, both [B, T]."""
    ix = torch.randint(len(data) - BLOCK_SIZE - 1, (BATCH_SIZE,), generator=gen)
    x = torch.stack([data[i : i + BLOCK_SIZE] for i in ix])
    y = torch.stack([data[i + 1 : i + 1 + BLOCK_SIZE] for i in ix])
    return x, y


# ---------------------------------------------------------------- model
class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        assert n_embd % n_head == 0
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # [B, T, C] -> [B, n_head, T, head_dim]
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, n_embd: int):
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        x = x + self.mlp(self.ln2(x))
        return x


class GPT(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int):
        super().__init__()
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList([Block(n_embd, n_head) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx, targets=None):
        """idx [B, T] -> logits [B, T, vocab]; with targets, also the mean cross-entropy."""
        B, T = idx.shape
        assert T <= self.block_size, f"sequence of {T} exceeds block_size {self.block_size}"
        pos = torch.arange(T, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def build_model(config: dict) -> nn.Module:
    """The evaluator calls this with the checkpoint's config to rebuild the model."""
    return GPT(config["vocab_size"], config["block_size"], config["n_layer"], config["n_head"], config["n_embd"])


# ---------------------------------------------------------------- training
def make_optimizer(model: nn.Module):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "emb" in n]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=LEARNING_RATE, betas=BETAS)


def lr_at(step: int) -> float:
    """Linear warmup, then constant."""
    return LEARNING_RATE * min(1.0, (step + 1) / WARMUP_STEPS)


def main():
    t0 = START_TIME
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)

    data, vocab = load_data()
    config = dict(vocab_size=len(vocab), block_size=BLOCK_SIZE, n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD)
    model = build_model(config)
    optimizer = make_optimizer(model)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params={n_params} vocab={len(vocab)} train_chars={len(data)} budget_s={BUDGET_S}", flush=True)

    model.train()
    step, step_time, tokens = 0, 0.0, 0
    while True:
        # Stop by the budget's clock: leave room for one more step and for saving.
        elapsed = budget_used_s()
        if elapsed + step_time + SAVE_RESERVE_S >= BUDGET_S:
            break
        if SMOKE_STEPS and step >= SMOKE_STEPS:  # the harness's smoke check: enough steps to test the code
            break
        t_step = budget_used_s()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        x, y = get_batch(data, gen)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        step_time = budget_used_s() - t_step
        step += 1
        tokens += x.numel()
        if step % LOG_EVERY == 0:
            el = time.time() - t0
            print(f"METRIC step={step} train_loss={loss.item():.4f} lr={lr_at(step):.2e} "
                  f"elapsed_s={el:.1f} tokens_per_s={tokens / el:.0f}", flush=True)

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    torch.save({"config": config, "state_dict": model.state_dict(), "vocab": vocab}, OUT_DIR / "ckpt.pt")
    print(f"done steps={step} tokens={tokens} elapsed_s={time.time() - t0:.1f}", flush=True)


if __name__ == "__main__":
    main()
