"""Trusted evaluator for nanogpt-cpu: validation loss in nats per character.

Runs after training, in a fresh directory holding this file and eval/val.txt.
Reads the checkpoint from $IDEAFORGE_OUT/ckpt.pt, rebuilds the model with
build_model(config) from the trial's train.py ($IDEAFORGE_WORKSPACE), checks it
(vocabulary, output shape, causality, batch independence) and scores it in fp32
on every full non-overlapping window of val.txt, every position of each window.
Writes one JSON object to $IDEAFORGE_RESULT and exits 0.
"""

import importlib.util
import json
import math
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

MIN_BLOCK, MAX_BLOCK = 32, 2048  # allowed context lengths, characters
EVAL_BATCH_TOKENS = 8192  # tokens per forward pass while scoring
LEAK_WINDOWS = 4  # random windows used by the future-token check
LEAK_POSITIONS = 4  # positions t checked per window (t = 0 always included)
TOL = 1e-3  # max abs logit change allowed (relative to logit scale, floored at 1)
CHECK_SEED = 1234  # the checks are seeded: same model, same verdict

HERE = Path(__file__).resolve().parent


def build_vocab(text: str) -> str:
    """Must match train.py: every distinct character of train.txt, sorted by code point."""
    return "".join(sorted(set(text)))


class Invalid(Exception):
    pass


def write(result_path: Path, obj: dict) -> None:
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(obj))
    print(json.dumps(obj), flush=True)


def load_train_module(workspace: Path):
    path = workspace / "train.py"
    if not path.is_file():
        raise Invalid(f"no train.py in the workspace {workspace}")
    sys.dont_write_bytecode = True
    sys.path.insert(0, str(workspace))
    spec = importlib.util.spec_from_file_location("ideaforge_trial_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "build_model", None)):
        raise Invalid("train.py defines no build_model(config) function")
    return module


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
    scale = max(1.0, a.abs().max().item())
    return (a - b).abs().max().item() / scale


def check_causal(model, val: torch.Tensor, T: int, V: int, gen: torch.Generator) -> None:
    """Logits at positions <= t must not change when the tokens after t change."""
    for _ in range(LEAK_WINDOWS):
        s = int(torch.randint(len(val) - T, (1,), generator=gen))
        x = val[s : s + T].unsqueeze(0)
        base = logits_of(model, x, V)
        ts = [0] + torch.randint(T - 1, (LEAK_POSITIONS - 1,), generator=gen).tolist()
        for t in ts:
            y = x.clone()
            y[0, t + 1 :] = torch.randint(V, (T - t - 1,), generator=gen)
            if torch.equal(y, x):
                continue
            d = max_change(base[0, : t + 1], logits_of(model, y, V)[0, : t + 1])
            if not math.isfinite(d) or d > TOL:
                raise Invalid(f"logits at position {t} change when tokens after {t} change (future-token leak; max change {d:.3g})")


def check_batch_independent(model, val: torch.Tensor, T: int, V: int, gen: torch.Generator) -> None:
    """The logits of one sequence must not depend on the other sequences in the batch."""
    s = torch.randint(len(val) - T, (3,), generator=gen).tolist()
    a, b, c = (val[i : i + T] for i in s)
    la = logits_of(model, torch.stack([a, b]), V)[0]
    lb = logits_of(model, torch.stack([a, c]), V)[0]
    d = max_change(la, lb)
    if not math.isfinite(d) or d > TOL:
        raise Invalid(f"logits of a sequence change when another sequence in the batch changes (max change {d:.3g})")


def score(model, val: torch.Tensor, T: int, V: int) -> tuple[float, int]:
    """Mean cross-entropy (nats/char) over every full non-overlapping window of val."""
    n = (len(val) - 1) // T
    x = val[: n * T].view(n, T)
    y = val[1 : n * T + 1].view(n, T)
    bs = max(1, EVAL_BATCH_TOKENS // T)
    total = 0.0
    for i in range(0, n, bs):
        logits = logits_of(model, x[i : i + bs], V)
        total += F.cross_entropy(logits.reshape(-1, V), y[i : i + bs].reshape(-1), reduction="sum").item()
    return total / (n * T), n * T


def evaluate(out_dir: Path, workspace: Path, data_dir: Path) -> dict:
    ckpt_path = out_dir / "ckpt.pt"
    if not ckpt_path.is_file():
        return {"status": "no_result", "reason": f"no checkpoint at $IDEAFORGE_OUT/ckpt.pt ({ckpt_path})"}
    val_text = (HERE / "eval" / "val.txt").read_text(encoding="utf-8")
    vocab = build_vocab((data_dir / "train.txt").read_text(encoding="utf-8"))
    stoi = {ch: i for i, ch in enumerate(vocab)}
    val = torch.tensor([stoi[ch] for ch in val_text], dtype=torch.long)  # val chars are a subset by construction
    V = len(vocab)

    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise Invalid(f"cannot load ckpt.pt: {type(e).__name__}: {e}") from None
    if not isinstance(ckpt, dict) or not {"config", "state_dict", "vocab"} <= set(ckpt):
        raise Invalid("ckpt.pt must be a dict with keys config, state_dict, vocab")
    if ckpt["vocab"] != vocab:
        raise Invalid("the checkpoint's vocab differs from the sorted character set of train.txt")
    config = ckpt["config"]
    T = config.get("block_size") if isinstance(config, dict) else None
    if not isinstance(T, int) or not MIN_BLOCK <= T <= MAX_BLOCK:
        raise Invalid(f"config['block_size'] = {T!r}; it must be an int in [{MIN_BLOCK}, {MAX_BLOCK}]")

    # Model code runs from the workspace, away from the validation file.
    os.chdir(workspace)
    module = load_train_module(workspace)
    model = module.build_model(dict(config))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except Exception as e:
        raise Invalid(f"load_state_dict failed: {e}") from None
    model = model.float().eval()
    params = sum(p.numel() for p in model.parameters())

    torch.manual_seed(CHECK_SEED)
    gen = torch.Generator().manual_seed(CHECK_SEED)
    with torch.no_grad():
        check_causal(model, val, T, V, gen)
        check_batch_independent(model, val, T, V, gen)
        val_loss, n_tokens = score(model, val, T, V)
    if not math.isfinite(val_loss):
        raise Invalid(f"non-finite validation loss ({val_loss})")
    return {"status": "ok", "metrics": {"val_loss": val_loss, "params": params, "eval_tokens": n_tokens}}


def main() -> None:
    result_path = Path(os.environ.get("IDEAFORGE_RESULT", "result.json")).resolve()
    out_dir = Path(os.environ.get("IDEAFORGE_OUT", "out")).resolve()
    workspace = Path(os.environ.get("IDEAFORGE_WORKSPACE", ".")).resolve()
    data_dir = Path(os.environ.get("IDEAFORGE_DATA", workspace / "data")).resolve()
    torch.set_num_threads(int(os.environ.get("IDEAFORGE_THREADS", 1)))
    try:
        result = evaluate(out_dir, workspace, data_dir)
    except Invalid as e:
        result = {"status": "invalid", "reason": str(e)}
    except Exception as e:
        traceback.print_exc()
        result = {"status": "invalid", "reason": f"evaluation of the model raised {type(e).__name__}: {e}"}
    write(result_path, result)


if __name__ == "__main__":
    main()
