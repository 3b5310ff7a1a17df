"""Trusted scorer for nanogpt-cpu: validation loss in nats per character.

The trusted half of a split evaluator (ideaforge.envs.protocol). It never imports the
trial's code: the harness starts the model server ([evaluate] serve in ideaforge.toml),
which loads $IDEAFORGE_OUT/ckpt.pt with weights_only=True, rebuilds the model with
build_model(config) from the trial's train.py, and answers "logits for these token ids"
over a pipe. This script holds eval/val.txt and $IDEAFORGE_RESULT; it computes the
vocabulary itself (every distinct character of train.txt, sorted), refuses a checkpoint
whose vocab differs, sends every full non-overlapping window of val.txt once (in a shuffled
order, EVAL_BATCH_TOKENS tokens per request), computes the cross-entropy itself over every
position of every window, and checks causality and batch independence on the model's
answers at that batch size over every position of sampled windows, with a seed drawn per
trial and recorded in the result. Writes one JSON object to $IDEAFORGE_RESULT and exits 0.
With IDEAFORGE_EVAL_MODE=smoke (the harness's smoke check) it scores only SMOKE_WINDOWS windows.
"""

import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np

from ideaforge.envs.protocol import ModelClient, WindowScorer, draw_seed
from ideaforge.errors import ModelInvalid

MIN_BLOCK, MAX_BLOCK = 32, 2048  # allowed context lengths, characters
EVAL_BATCH_TOKENS = 8192  # tokens per request while scoring (and checking)
# IDEAFORGE_EVAL_MODE=smoke (the harness's smoke check): the same checkpoint and interface
# checks, scored on only this many windows, one of them checked at every position; the loss means nothing then.
SMOKE_WINDOWS = 4
SMOKE = os.environ.get("IDEAFORGE_EVAL_MODE") == "smoke"

HERE = Path(__file__).resolve().parent


def build_vocab(text: str) -> str:
    """Must match train.py: every distinct character of train.txt, sorted by code point."""
    return "".join(sorted(set(text)))


def write(result_path: Path, obj: dict) -> None:
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(obj))
    print(json.dumps(obj), flush=True)


def cross_entropy_sum(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sum over rows and positions of -log softmax(logits)[target], in float64. logits [b, T, V]."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=-1))
    picked = np.take_along_axis(z, targets[..., None], axis=-1)[..., 0]
    return float((lse - picked).sum())


def evaluate(client: ModelClient, data_dir: Path) -> dict:
    vocab = build_vocab((data_dir / "train.txt").read_text(encoding="utf-8"))
    stoi = {ch: i for i, ch in enumerate(vocab)}
    val = np.array([stoi[ch] for ch in (HERE / "eval" / "val.txt").read_text(encoding="utf-8")], dtype=np.int64)
    V = len(vocab)

    info = client.info()  # the checkpoint's JSON-safe entries, as the model server read them
    if info.get("vocab") != vocab:
        raise ModelInvalid("the checkpoint's vocab differs from the sorted character set of train.txt")
    config = info.get("config")
    T = config.get("block_size") if isinstance(config, dict) else None
    if not isinstance(T, int) or isinstance(T, bool) or not MIN_BLOCK <= T <= MAX_BLOCK:
        raise ModelInvalid(f"config['block_size'] = {T!r}; it must be an int in [{MIN_BLOCK}, {MAX_BLOCK}]")

    n = (len(val) - 1) // T  # every full non-overlapping window; targets are the next characters
    if SMOKE:
        n = min(n, SMOKE_WINDOWS)
    x = val[: n * T].reshape(n, T)
    y = val[1 : n * T + 1].reshape(n, T)
    scorer = WindowScorer(client, x, vocab_size=V, batch_size=max(1, EVAL_BATCH_TOKENS // T), seed=draw_seed(),
                          n_check=1 if SMOKE else None)
    total, seen = 0.0, 0
    for idx, logits in scorer:
        total += cross_entropy_sum(logits, y[idx])
        seen += len(idx)
    assert seen == n, (seen, n)
    params = info.get("params")
    return {"status": "ok", "checks": scorer.report,
            "metrics": {"val_loss": total / (n * T), "params": params if isinstance(params, int) else 0,
                        "eval_tokens": n * T, "check_seed": scorer.seed}}


def main() -> None:
    result_path = Path(os.environ.get("IDEAFORGE_RESULT", "result.json")).resolve()
    out_dir = Path(os.environ.get("IDEAFORGE_OUT", "out")).resolve()
    data_dir = Path(os.environ.get("IDEAFORGE_DATA", "data")).resolve()
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
