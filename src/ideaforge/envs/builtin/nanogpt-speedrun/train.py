"""GPT-2 small ("d12", 124M) pre-trained on GPT-2-tokenised FineWeb for a fixed wall-clock budget.

One process per GPU under torchrun (DDP), or one plain process (one GPU or the CPU). The score
is the validation loss in nats per token, computed afterwards by a separate, trusted evaluator
on held-out shards this script must not read. The evaluator rebuilds the model from THIS file,
so keep the interface:

  * build_model(config: dict) -> torch.nn.Module, config being the dict saved in the checkpoint
    (vocab_size, block_size, n_layer, n_head, n_embd, and whatever you add);
  * model(idx) with idx a LongTensor [B, T], T <= config["block_size"], returns logits
    [B, T, vocab_size] (a tuple whose first item is the logits also works); logits at position
    t depend only on idx[:, :t+1] and only on the same sequence;
  * rank 0 writes torch.save({"config": ..., "state_dict": ...}) to $IDEAFORGE_OUT/ckpt.pt,
    plain tensors only (the evaluator loads it with weights_only=True);
  * importing this file does no work; training starts only under __main__.

Environment: IDEAFORGE_BUDGET_S (seconds, counted from process start, compilation included),
IDEAFORGE_SEED, IDEAFORGE_OUT, IDEAFORGE_PREPARED (or IDEAFORGE_DATA): a directory with train/*.bin
shards and meta.json; IDEAFORGE_THREADS (CPU threads); SPEEDRUN_PRESET: d12 (8 GPUs), 1gpu or tiny
(CPU); SPEEDRUN_COMPILE=0 turns torch.compile off. torchrun sets RANK, LOCAL_RANK, WORLD_SIZE.
"""

import time

START_TIME = time.time()  # wall clock at process start, seconds; the budget counts from here

import contextlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------- settings
BUDGET_S = float(os.environ.get("IDEAFORGE_BUDGET_S", 1500))  # seconds of wall clock for the whole run
SEED = int(os.environ.get("IDEAFORGE_SEED", 0))  # integer seed for the initialisation
OUT_DIR = Path(os.environ.get("IDEAFORGE_OUT", "out"))  # directory the checkpoint is written to
DATA_DIR = Path(os.environ.get("IDEAFORGE_DATA") or os.environ.get("IDEAFORGE_PREPARED") or "data")
THREADS = int(os.environ.get("IDEAFORGE_THREADS", 1))  # CPU threads torch may use per process
PRESET = os.environ.get("SPEEDRUN_PRESET", "d12")  # model and batch sizes, see PRESETS
COMPILE = os.environ.get("SPEEDRUN_COMPILE", "1") == "1"  # torch.compile on CUDA

# Sizes per preset. total_batch_tokens is reached by gradient accumulation over
# device_batch x block_size tokens per process per micro-step; save_reserve_s is the time kept
# free at the end of the budget for saving the checkpoint, seconds.
PRESETS = {
    "d12": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, device_batch=32, total_batch_tokens=262144,
                save_reserve_s=5.0),
    "1gpu": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, device_batch=16, total_batch_tokens=65536,
                 save_reserve_s=5.0),
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=64, device_batch=8, total_batch_tokens=1024,
                 save_reserve_s=1.0),
}
LEARNING_RATE = 0.0015  # peak AdamW learning rate
BETAS = (0.9, 0.95)  # AdamW momentum coefficients
WEIGHT_DECAY = 0.1  # AdamW decoupled weight decay, on every parameter
GRAD_CLIP = 1.0  # max global gradient norm
WARMUP_STEPS = 256  # linear warmup from 0, optimizer steps
NUM_ITERATIONS = 26880  # the linear decay reaches 0.1/1.1 of the peak here (the budget stops training earlier)
LOG_EVERY = 10  # optimizer steps between METRIC lines
SHARD_MAGIC, SHARD_VERSION, HEADER_INTS = 20240520, 1, 256  # llm.c shard header: 256 int32, then uint16 tokens


# ---------------------------------------------------------------- data
def read_shard(path: Path) -> np.ndarray:
    """The uint16 tokens of one shard (memory-mapped), after checking its header."""
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    if len(header) < 3 or header[0] != SHARD_MAGIC or header[1] != SHARD_VERSION:
        raise ValueError(f"{path}: not a version-1 token shard (magic {SHARD_MAGIC})")
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_INTS * 4, shape=(int(header[2]),))


class ShardLoader:
    """Sequential batches through the sorted training shards; rank r reads the r-th slice of each window."""

    def __init__(self, directory: Path, B: int, T: int, rank: int, world: int):
        self.files = sorted(directory.glob("*.bin"))
        if not self.files:
            raise FileNotFoundError(f"no training shards in {directory}; run the environment's prepare step")
        self.B, self.T, self.rank, self.world = B, T, rank, world
        self.shard, self.wrapped = -1, False
        self._next_shard()

    def _next_shard(self):
        self.shard = (self.shard + 1) % len(self.files)
        if self.shard == 0 and self.wrapped is False and hasattr(self, "tokens"):
            self.wrapped = True
            print("warning: training data exhausted, starting over from the first shard", flush=True)
        self.tokens = read_shard(self.files[self.shard])
        self.pos = self.rank * self.B * self.T

    def next_batch(self):
        B, T = self.B, self.T
        if self.pos + B * T + 1 > len(self.tokens):
            self._next_shard()
        buf = torch.from_numpy(self.tokens[self.pos : self.pos + B * T + 1].astype(np.int64))
        self.pos += B * T * self.world
        return buf[:-1].view(B, T), buf[1:].view(B, T)


# ---------------------------------------------------------------- model
def rmsnorm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dimension."""
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        assert n_embd % n_head == 0
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # [B, T, C] -> [B, n_head, T, head_dim]
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, n_embd: int):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, n_layer: int):
        super().__init__()
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.mlp = MLP(n_embd)
        self.attn_scale = 1.0 / math.sqrt(2 * n_layer)  # 1/sqrt(24) for 12 layers

    def forward(self, x):
        x = x + self.attn_scale * self.attn(rmsnorm(x))
        x = x + self.mlp(rmsnorm(x))
        return x


class GPT(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList([Block(n_embd, n_head, n_layer) for _ in range(n_layer)])
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied input and output embeddings
        nn.init.normal_(self.wte.weight, mean=0.0, std=0.02)
        nn.init.normal_(self.wpe.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        """idx [B, T] -> logits [B, T, vocab] (fp32); with targets, also the mean cross-entropy."""
        B, T = idx.shape
        assert T <= self.block_size, f"sequence of {T} exceeds block_size {self.block_size}"
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(rmsnorm(x)).float()
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def build_model(config: dict) -> nn.Module:
    """The evaluator calls this with the checkpoint's config to rebuild the model."""
    return GPT(config["vocab_size"], config["block_size"], config["n_layer"], config["n_head"], config["n_embd"])


# ---------------------------------------------------------------- training
def make_optimizer(model: nn.Module, device: str):
    fused = device.startswith("cuda")
    return torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=BETAS, weight_decay=WEIGHT_DECAY, fused=fused)


def lr_at(step: int) -> float:
    """Linear warmup over WARMUP_STEPS, then linear decay to 0.1/1.1 of the peak at NUM_ITERATIONS."""
    if step < WARMUP_STEPS:
        return LEARNING_RATE * (step + 1) / WARMUP_STEPS
    decay = min(1.0, (step - WARMUP_STEPS) / (NUM_ITERATIONS - WARMUP_STEPS))
    return LEARNING_RATE * (0.1 + (1.0 - decay)) / 1.1


def setup():
    """(rank, world size, device, is_distributed): DDP under torchrun, else one process."""
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        cuda = torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        rank, local = dist.get_rank(), int(os.environ["LOCAL_RANK"])
        device = f"cuda:{local}" if cuda else "cpu"
        if cuda:
            torch.cuda.set_device(device)
        return rank, dist.get_world_size(), device, True
    return 0, 1, ("cuda" if torch.cuda.is_available() else "cpu"), False


def should_stop(step_time: float, device: str, distributed: bool, reserve_s: float) -> bool:
    """Stop by wall clock, leaving room for one more step and the save; every rank agrees."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()  # the clock must see finished work, not queued kernels
    stop = time.time() - START_TIME + step_time + reserve_s >= BUDGET_S
    if distributed:
        flag = torch.tensor([1.0 if stop else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop = flag.item() > 0
    return stop


def main():
    torch.set_num_threads(THREADS)
    rank, world, device, distributed = setup()
    torch.manual_seed(SEED)
    torch.backends.cuda.matmul.allow_tf32 = True
    preset = PRESETS[PRESET]
    meta_path = DATA_DIR / "meta.json"
    vocab_size = json.loads(meta_path.read_text())["vocab_size"] if meta_path.is_file() else 50257
    config = dict(vocab_size=vocab_size, block_size=preset["block_size"], n_layer=preset["n_layer"],
                  n_head=preset["n_head"], n_embd=preset["n_embd"])
    B, T = preset["device_batch"], preset["block_size"]
    if preset["total_batch_tokens"] % (B * T * world):
        raise SystemExit(f"total_batch_tokens {preset['total_batch_tokens']} is not a multiple of "
                         f"{B} x {T} x {world} processes; use a GPU count that divides it")
    accum = preset["total_batch_tokens"] // (B * T * world)
    loader = ShardLoader(DATA_DIR / "train", B, T, rank, world)

    raw = build_model(config).to(device)
    model = torch.compile(raw) if COMPILE and device.startswith("cuda") else raw
    if distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.startswith("cuda") else None)
    optimizer = make_optimizer(raw, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()
    if rank == 0:
        n_params = sum(p.numel() for p in raw.parameters())
        print(f"params={n_params} preset={PRESET} world={world} accum={accum} device={device} budget_s={BUDGET_S}", flush=True)

    step, step_time, tokens = 0, 0.0, 0
    while not should_stop(step_time, device, distributed, preset["save_reserve_s"]):
        t_step = time.time()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        for micro in range(accum):
            x, y = (t.to(device, non_blocking=True) for t in loader.next_batch())
            sync = contextlib.nullcontext() if not distributed or micro == accum - 1 else model.no_sync()
            with sync:
                with autocast:
                    _, loss = model(x, y)
                (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(raw.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens += preset["total_batch_tokens"]
        if step % LOG_EVERY == 0 or step == 1:
            train_loss = loss.item()  # syncs the device, so step_time below is real
            el = time.time() - START_TIME
            if rank == 0:
                print(f"METRIC step={step} train_loss={train_loss:.4f} lr={lr_at(step):.2e} "
                      f"elapsed_s={el:.1f} tokens_per_s={tokens / el:.0f}", flush=True)
        step_time = time.time() - t_step

    if rank == 0:
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in raw.state_dict().items()}
        torch.save({"config": config, "state_dict": state}, OUT_DIR / "ckpt.pt")
        print(f"done steps={step} tokens={tokens} elapsed_s={time.time() - START_TIME:.1f}", flush=True)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
