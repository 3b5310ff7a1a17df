"""Trusted evaluator for nanogpt-speedrun: validation loss in nats per token, frozen settings.

Runs after training, in a fresh directory holding only this file. Reads the checkpoint
$IDEAFORGE_OUT/ckpt.pt with weights_only=True, rebuilds the model with the trial's
build_model(config) (in `build_trial_model`, the only place trial code runs), checks the
output shape, causality and batch independence, and scores it in fp32 (TF32 matmuls on
CUDA) on the first SPEEDRUN_VAL_TOKENS tokens of the validation shard, cut into
non-overlapping windows of SPEEDRUN_EVAL_SEQ_LEN tokens, every position of every window.
Writes one JSON object to $IDEAFORGE_RESULT and exits 0.

Frozen settings (from the environment's profile, never from the trial):
  SPEEDRUN_VAL_TOKENS    tokens scored (default 10,485,760, the reference's figure)
  SPEEDRUN_EVAL_SEQ_LEN  context per window (default 1024)
"""

import importlib.util
import json
import math
import os
import sys
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

VAL_TOKENS = int(os.environ.get("SPEEDRUN_VAL_TOKENS", 10_485_760))
SEQ_LEN = int(os.environ.get("SPEEDRUN_EVAL_SEQ_LEN", 1024))
EVAL_BATCH = 8  # windows per forward pass while scoring
LEAK_WINDOWS = 2  # windows used by the future-token check
LEAK_POSITIONS = 3  # positions t checked per window (t = 0 always included)
TOL = 1e-3  # max abs logit change allowed, relative to the logit scale (floored at 1)
CHECK_SEED = 1234  # the checks are seeded: same model, same verdict
MAGIC, VERSION, HEADER_INTS = 20240520, 1, 256


class Invalid(Exception):
    pass


def read_val(data_dir: Path) -> torch.Tensor:
    """The first VAL_TOKENS + 1 tokens of the validation shard(s), int64."""
    files = sorted((data_dir / "val").glob("*.bin"))
    if not files:
        raise RuntimeError(f"no validation shard in {data_dir / 'val'}; the prepare step did not run")
    parts, have = [], 0
    for path in files:
        header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
        if header[0] != MAGIC or header[1] != VERSION:
            raise RuntimeError(f"{path}: not a version-1 token shard")
        toks = np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_INTS * 4, shape=(int(header[2]),))
        parts.append(np.asarray(toks[: VAL_TOKENS + 1 - have]))
        have += len(parts[-1])
        if have >= VAL_TOKENS + 1:
            break
    return torch.from_numpy(np.concatenate(parts).astype(np.int64))


def build_trial_model(workspace: Path, config: dict):
    """The one place the trial's code runs: import its train.py and call build_model(config).

    (To move onto the jailed split-evaluator protocol: everything else here only touches
    tensors, never the trial's code.)
    """
    path = workspace / "train.py"
    if not path.is_file():
        raise Invalid(f"no train.py in the workspace {workspace}")
    os.chdir(workspace)
    sys.dont_write_bytecode = True
    sys.path.insert(0, str(workspace))
    spec = importlib.util.spec_from_file_location("ideaforge_trial_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "build_model", None)):
        raise Invalid("train.py defines no build_model(config) function")
    return module.build_model(dict(config))


def logits_of(model, idx: torch.Tensor, vocab_size: int) -> torch.Tensor:
    out = model(idx)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise Invalid(f"model(idx) returned {type(out).__name__}, expected a logits tensor")
    want = (idx.shape[0], idx.shape[1], vocab_size)
    if tuple(out.shape) != want:
        raise Invalid(f"model(idx) returned logits of shape {tuple(out.shape)}, expected {want}")
    out = out.float()
    if not torch.isfinite(out).all():
        raise Invalid("non-finite logits (NaN or inf)")
    return out


def max_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() / max(1.0, a.abs().max().item())


def check_causal(model, val: torch.Tensor, V: int, gen: torch.Generator) -> None:
    """Logits at positions <= t must not change when the tokens after t change."""
    T = SEQ_LEN
    for _ in range(LEAK_WINDOWS):
        s = int(torch.randint(len(val) - T, (1,), generator=gen))
        x = val[s : s + T].unsqueeze(0)
        base = logits_of(model, x, V)
        for t in [0] + torch.randint(T - 1, (LEAK_POSITIONS - 1,), generator=gen).tolist():
            y = x.clone()
            y[0, t + 1 :] = torch.randint(V, (T - t - 1,), generator=gen).to(y.device)
            d = max_change(base[0, : t + 1], logits_of(model, y, V)[0, : t + 1])
            if not math.isfinite(d) or d > TOL:
                raise Invalid(f"logits at position {t} change when tokens after {t} change (future-token leak; max change {d:.3g})")


def check_batch_independent(model, val: torch.Tensor, V: int, gen: torch.Generator) -> None:
    T = SEQ_LEN
    a, b, c = (val[i : i + T] for i in torch.randint(len(val) - T, (3,), generator=gen).tolist())
    d = max_change(logits_of(model, torch.stack([a, b]), V)[0], logits_of(model, torch.stack([a, c]), V)[0])
    if not math.isfinite(d) or d > TOL:
        raise Invalid(f"logits of a sequence change when another sequence in the batch changes (max change {d:.3g})")


def score(model, val: torch.Tensor, V: int) -> tuple[float, int]:
    """Mean cross-entropy over every full window of SEQ_LEN in the first VAL_TOKENS tokens."""
    n = min(VAL_TOKENS, len(val) - 1) // SEQ_LEN
    if n == 0:
        raise RuntimeError(f"the validation data has fewer than {SEQ_LEN + 1} tokens")
    x, y = val[: n * SEQ_LEN].view(n, SEQ_LEN), val[1 : n * SEQ_LEN + 1].view(n, SEQ_LEN)
    total = 0.0
    for i in range(0, n, EVAL_BATCH):
        logits = logits_of(model, x[i : i + EVAL_BATCH], V)
        total += F.cross_entropy(logits.reshape(-1, V), y[i : i + EVAL_BATCH].reshape(-1), reduction="sum").item()
    return total / (n * SEQ_LEN), n * SEQ_LEN


def evaluate(out_dir: Path, workspace: Path, data_dir: Path) -> dict:
    ckpt_path = out_dir / "ckpt.pt"
    if not ckpt_path.is_file():
        return {"status": "no_result", "reason": f"no checkpoint at $IDEAFORGE_OUT/ckpt.pt ({ckpt_path})"}
    meta = json.loads((data_dir / "meta.json").read_text())
    V = int(meta["vocab_size"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    val = read_val(data_dir).to(device)
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise Invalid(f"cannot load ckpt.pt with weights_only=True: {type(e).__name__}: {e}") from None
    if not isinstance(ckpt, dict) or not {"config", "state_dict"} <= set(ckpt):
        raise Invalid("ckpt.pt must be a dict with keys config and state_dict")
    config = ckpt["config"]
    if not isinstance(config, dict) or config.get("vocab_size") != V:
        raise Invalid(f"config['vocab_size'] must be {V}, the vocabulary of the data")
    if not isinstance(config.get("block_size"), int) or config["block_size"] < SEQ_LEN:
        raise Invalid(f"config['block_size'] = {config.get('block_size')!r}; it must be an int >= {SEQ_LEN}, the evaluation context")

    model = build_trial_model(workspace, config)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except Exception as e:
        raise Invalid(f"load_state_dict failed: {e}") from None
    model = model.float().to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(CHECK_SEED)
    gen = torch.Generator().manual_seed(CHECK_SEED)
    with torch.no_grad():
        check_causal(model, val, V, gen)
        check_batch_independent(model, val, V, gen)
        val_loss, n_tokens = score(model, val, V)
    if not math.isfinite(val_loss):
        raise Invalid(f"non-finite validation loss ({val_loss})")
    return {"status": "ok", "metrics": {"val_loss": val_loss, "params": params, "eval_tokens": n_tokens}}


def main() -> None:
    result_path = Path(os.environ.get("IDEAFORGE_RESULT", "result.json")).resolve()
    out_dir = Path(os.environ.get("IDEAFORGE_OUT", "out")).resolve()
    workspace = Path(os.environ.get("IDEAFORGE_WORKSPACE", ".")).resolve()
    data_dir = Path(os.environ.get("IDEAFORGE_DATA") or os.environ.get("IDEAFORGE_PREPARED") or "data").resolve()
    torch.set_num_threads(int(os.environ.get("IDEAFORGE_THREADS", 1)))
    try:
        result = evaluate(out_dir, workspace, data_dir)
    except Invalid as e:
        result = {"status": "invalid", "reason": str(e)}
    except Exception as e:
        traceback.print_exc()
        result = {"status": "invalid", "reason": f"evaluation of the model raised {type(e).__name__}: {e}"}
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
