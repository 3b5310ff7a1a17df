"""Trusted evaluator for grpo-cpu (hidden from the models).

Loads $IDEAFORGE_OUT/policy.pt ({"config", "state_dict"}), rebuilds the policy with
build_model(config) from the trial's train.py, and measures accuracy on the 500 held-out
problems in eval/heldout.jsonl (drawn with random.Random(20240611) from all 16,200
two-digit "+"/"-" problems; prepare.py excludes them from the training set).

Sampling is fixed here, whatever train.py does: temperature 1, no top-k, K_SAMPLES answers
per problem, each at most MAX_NEW tokens, from a torch.Generator seeded with EVAL_SEED; it
calls only model(idx) -> logits [B, T, V]. The metric, accuracy, is the mean sampled reward:
the fraction of the 500 * K_SAMPLES answers that are exactly the correct integer followed by
the end marker "." (anything else, malformed or not, scores 0).
"""

import importlib.util
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

VOCAB = "0123456789+-=."  # the fixed tokenizer: one character per token
END = VOCAB.index(".")
PROMPT_LEN = 6
K_SAMPLES = 4  # samples per held-out problem
MAX_NEW = 5  # tokens generated per answer ("-99." and "198." need 4)
EVAL_SEED = 20240611
TEMPERATURE = 1.0


def write(result):
    with open(os.environ["IDEAFORGE_RESULT"], "w") as f:
        json.dump(result, f)
    print(json.dumps(result))


def grade(tokens, answer):
    """Strict: the answer's exact digits, then "."; nothing else counts."""
    text = "".join(VOCAB[t] for t in tokens)
    return 1.0 if "." in text and text[: text.index(".")] == str(answer) else 0.0


def load_policy():
    ws = os.environ.get("IDEAFORGE_WORKSPACE", ".")
    spec = importlib.util.spec_from_file_location("trial_train", os.path.join(ws, "train.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, ws)
    spec.loader.exec_module(mod)
    ckpt = torch.load(os.path.join(os.environ["IDEAFORGE_OUT"], "policy.pt"), map_location="cpu", weights_only=False)
    config = ckpt["config"]
    if config.get("vocab") != VOCAB or config.get("vocab_size") != len(VOCAB):
        raise ValueError(f"checkpoint vocabulary {config.get('vocab')!r} differs from the evaluator's {VOCAB!r}")
    model = mod.build_model(config)
    model.load_state_dict(ckpt["state_dict"])
    return model.float().eval()


def check_interface(model):
    """Shape, finiteness and causality: logits at t must not change when tokens after t change."""
    g = torch.Generator().manual_seed(0)
    T = PROMPT_LEN + MAX_NEW
    a = torch.randint(len(VOCAB), (8, T), generator=g)
    b = a.clone()
    cut = PROMPT_LEN
    b[:, cut:] = torch.randint(len(VOCAB), (8, T - cut), generator=g)
    la, lb = model(a), model(b)
    if tuple(la.shape) != (8, T, len(VOCAB)):
        return f"model(idx) returned shape {tuple(la.shape)}, expected {(8, T, len(VOCAB))}"
    if not torch.isfinite(la).all():
        return "model produces non-finite logits"
    if not torch.allclose(la[:, :cut], lb[:, :cut], atol=1e-5, rtol=1e-4):
        return f"logits before position {cut} change when later tokens change (future-token leak)"
    return None


@torch.no_grad()
def main():
    torch.set_num_threads(int(os.environ.get("IDEAFORGE_THREADS", "1")))
    if not os.path.isfile(os.path.join(os.environ["IDEAFORGE_OUT"], "policy.pt")):
        return write({"status": "no_result", "reason": "no policy.pt in IDEAFORGE_OUT"})
    try:
        model = load_policy()
        problem = check_interface(model)
    except Exception as e:  # a checkpoint that does not load into the trial's own model is invalid
        return write({"status": "invalid", "reason": f"cannot load or run the policy: {type(e).__name__}: {e}"})
    if problem:
        return write({"status": "invalid", "reason": problem})

    with open(os.path.join("eval", "heldout.jsonl")) as f:
        held = [json.loads(line) for line in f if line.strip()]
    prompts = torch.tensor([[VOCAB.index(c) for c in p["prompt"]] for p in held for _ in range(K_SAMPLES)])
    answers = [p["answer"] for p in held for _ in range(K_SAMPLES)]
    gen = torch.Generator().manual_seed(EVAL_SEED)
    idx = prompts
    for _ in range(MAX_NEW):
        logits = model(idx)[:, -1, :].float()
        if not torch.isfinite(logits).all():
            return write({"status": "invalid", "reason": "model produces non-finite logits on held-out prompts"})
        nxt = torch.multinomial(F.softmax(logits / TEMPERATURE, dim=-1), 1, generator=gen)
        idx = torch.cat([idx, nxt], dim=1)
    scores = [grade(s[PROMPT_LEN:].tolist(), a) for s, a in zip(idx, answers)]
    acc = sum(scores) / len(scores)
    assert math.isfinite(acc)
    write({"status": "ok", "metrics": {"accuracy": acc, "n": len(held), "samples_per_problem": K_SAMPLES}})


if __name__ == "__main__":
    main()
