"""Trusted scorer for nanogpt-speedrun: validation loss in nats per token, frozen settings.

The trusted half of a split evaluator (ideaforge.envs.protocol); it never imports the trial's
code. The harness starts the model server ([evaluate] serve in ideaforge.toml), jailed in the
trial's workspace: it reads $IDEAFORGE_OUT/ckpt.pt with weights_only=True, rebuilds the model
with the trial's build_model(config) (serve_model.py), and answers "logits for these token ids"
over a pipe, on the leased GPU when there is one. This script alone holds the validation tokens
(meta.json's "heldout" shards, which no jail binds) and $IDEAFORGE_RESULT. It sends the first
SPEEDRUN_VAL_TOKENS tokens cut into non-overlapping windows of SPEEDRUN_EVAL_SEQ_LEN, each once,
shuffled, EVAL_BATCH windows per request, computes the cross-entropy itself over every position
of every window (fp32 on the leased GPU when there is one, else float64 numpy), and checks causality and batch
independence on the model's answers at that batch size over every position of CHECK_WINDOWS
sampled windows, with a seed drawn per trial and recorded in the result. Writes one JSON object
to $IDEAFORGE_RESULT and exits 0.

Frozen settings (from the environment's profile, never from the trial):
  SPEEDRUN_VAL_TOKENS      tokens scored (default 10,485,760, the reference's figure)
  SPEEDRUN_EVAL_SEQ_LEN    context per window (default 1024)
  SPEEDRUN_CHECK_WINDOWS   windows whose every position is checked (default 1); each costs
                           SEQ_LEN extra rows of SEQ_LEN tokens (1,048,576 tokens at full size,
                           10% of the scoring work)
"""

import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np

from ideaforge.envs.protocol import ModelClient, WindowScorer, draw_seed
from ideaforge.errors import ModelInvalid

VAL_TOKENS = int(os.environ.get("SPEEDRUN_VAL_TOKENS", 10_485_760))
SEQ_LEN = int(os.environ.get("SPEEDRUN_EVAL_SEQ_LEN", 1024))
CHECK_WINDOWS = int(os.environ.get("SPEEDRUN_CHECK_WINDOWS", 1))
EVAL_BATCH = 8  # windows (rows) per request, while scoring and checking alike
MAGIC, VERSION, HEADER_INTS = 20240520, 1, 256


def read_val(meta: dict) -> np.ndarray:
    """The first VAL_TOKENS + 1 held-out tokens, int64, from the shards meta.json names."""
    files = meta.get("heldout")
    if not files:
        raise RuntimeError("meta.json names no held-out shard; re-run `ideaforge env prepare nanogpt-speedrun`")
    parts, have = [], 0
    for name in files:
        path = Path(name)
        header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
        if header[0] != MAGIC or header[1] != VERSION:
            raise RuntimeError(f"{path}: not a version-1 token shard")
        toks = np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_INTS * 4, shape=(int(header[2]),))
        parts.append(np.asarray(toks[: VAL_TOKENS + 1 - have]))
        have += len(parts[-1])
        if have >= VAL_TOKENS + 1:
            break
    return np.concatenate(parts).astype(np.int64)


class CrossEntropy:
    """Sum over rows and positions of -log softmax(logits)[target], accumulated in float64.

    With a leased GPU (CUDA_VISIBLE_DEVICES set), in fp32 on it with torch: at full size each
    request's answer is 8 x 1024 x 50257 floats. Without one, in float64 numpy, one row at a
    time (the tiny profile: no torch import, about 2 CPU seconds saved).
    """

    def __init__(self):
        self.total = 0.0
        self.torch = None
        if os.environ.get("CUDA_VISIBLE_DEVICES"):
            import torch  # trusted: no trial code is ever imported in this process

            if torch.cuda.is_available():
                self.torch = torch

    def add(self, logits: np.ndarray, targets: np.ndarray) -> None:
        if self.torch is not None:
            torch = self.torch
            z = torch.from_numpy(np.array(logits, copy=True)).cuda()  # [b, T, V]
            ce = torch.nn.functional.cross_entropy(z.reshape(-1, z.shape[-1]), torch.from_numpy(targets).cuda().reshape(-1),
                                                   reduction="none")
            self.total += float(ce.double().sum())
            return
        for z, y in zip(logits, targets):  # [T, V], [T]
            z = z.astype(np.float64)
            z -= z.max(axis=-1, keepdims=True)
            lse = np.log(np.exp(z).sum(axis=-1))
            self.total += float((lse - z[np.arange(len(y)), y]).sum())


def check_config(info: dict, V: int) -> None:
    config = info.get("config")
    if not isinstance(config, dict) or config.get("vocab_size") != V:
        raise ModelInvalid(f"config['vocab_size'] must be {V}, the vocabulary of the data")
    T = config.get("block_size")
    if not isinstance(T, int) or isinstance(T, bool) or T < SEQ_LEN:
        raise ModelInvalid(f"config['block_size'] = {T!r}; it must be an int >= {SEQ_LEN}, the evaluation context")


def evaluate(client: ModelClient, data_dir: Path) -> dict:
    meta = json.loads((data_dir / "meta.json").read_text())
    V = int(meta["vocab_size"])
    val = read_val(meta)
    n = min(VAL_TOKENS, len(val) - 1) // SEQ_LEN
    if n == 0:
        raise RuntimeError(f"the validation data has fewer than {SEQ_LEN + 1} tokens")
    x, y = val[: n * SEQ_LEN].reshape(n, SEQ_LEN), val[1 : n * SEQ_LEN + 1].reshape(n, SEQ_LEN)

    info = client.info()  # the checkpoint's JSON-safe entries, as the model server read them
    check_config(info, V)
    scorer = WindowScorer(client, x, vocab_size=V, batch_size=EVAL_BATCH, seed=draw_seed(), n_check=CHECK_WINDOWS)
    ce, seen = CrossEntropy(), 0
    for idx, logits in scorer:
        ce.add(logits, y[idx])
        seen += len(idx)
    assert seen == n, (seen, n)
    val_loss = ce.total / (n * SEQ_LEN)
    if not np.isfinite(val_loss):
        raise ModelInvalid(f"non-finite validation loss ({val_loss})")
    params = info.get("params")
    return {"status": "ok", "checks": scorer.report,
            "metrics": {"val_loss": val_loss, "params": params if isinstance(params, int) else 0,
                        "eval_tokens": n * SEQ_LEN, "check_seed": scorer.seed}}


def write(result_path: Path, obj: dict) -> None:
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(obj))
    print(json.dumps(obj), flush=True)


def main() -> None:
    result_path = Path(os.environ.get("IDEAFORGE_RESULT", "result.json")).resolve()
    out_dir = Path(os.environ.get("IDEAFORGE_OUT", "out")).resolve()
    data_dir = Path(os.environ.get("IDEAFORGE_PREPARED") or os.environ.get("IDEAFORGE_DATA") or "data").resolve()
    if not (out_dir / "ckpt.pt").is_file():
        return write(result_path, {"status": "no_result", "reason": f"no checkpoint at $IDEAFORGE_OUT/ckpt.pt ({out_dir / 'ckpt.pt'})"})
    client = ModelClient.from_env()
    try:
        result = evaluate(client, data_dir)
    except ModelInvalid as e:
        result = {"status": "invalid", "reason": str(e)}
    except Exception as e:
        traceback.print_exc()
        result = {"status": "invalid", "reason": f"evaluation of the model raised {type(e).__name__}: {e}"}
    finally:
        client.close()
    write(result_path, result)


if __name__ == "__main__":
    sys.exit(main())
