"""Trusted evaluator for grpo-cpu (hidden from the models).

Loads $IDEAFORGE_OUT/policy.pt ({"config", "state_dict"}) with torch.load(weights_only=True)
(a pickled object is refused, no code in it runs) into the trusted, fixed policy class of
policy.py, and measures accuracy on the 500 held-out
problems in eval/heldout.jsonl (drawn with random.Random(20240611) from all 6,561
"a+b+c+d=" problems with digits 1..9; prepare.py excludes them from the training set).

Sampling is fixed here, whatever train.py does: temperature 1, no top-k, K_SAMPLES answers
per problem, each at most MAX_NEW tokens, from a torch.Generator seeded with EVAL_SEED; it
calls only model(idx) -> logits [B, T, V]. The metric, accuracy, is the mean sampled reward:
the fraction of the 500 * K_SAMPLES completions whose final number is exactly right. A
completion is working steps and a final number separated by ",", ended by "." ("15,20,23.");
only the final number is graded (as MATH grades the boxed answer, not the working), and it
counts only when the completion is well formed: a "." within MAX_NEW tokens and every field
before it a plain number without leading zeros. Anything else scores 0.
"""

import hashlib
import json
import math
import os
import types

import torch
import torch.nn.functional as F

VOCAB = "0123456789+=,."  # the fixed tokenizer: one character per token
END = VOCAB.index(".")
PROMPT_LEN = 8
K_SAMPLES = 4  # samples per held-out problem
MAX_NEW = 9  # tokens generated per completion (the longest right one, "17,26,35.", needs 9)
EVAL_SEED = 20240611
TEMPERATURE = 1.0
# IDEAFORGE_EVAL_MODE=smoke (the harness's smoke check): the same loading and interface
# checks, scored on only this many held-out problems; the number means nothing then.
SMOKE_PROBLEMS = 8
SMOKE = os.environ.get("IDEAFORGE_EVAL_MODE") == "smoke"


def write(result):
    with open(os.environ["IDEAFORGE_RESULT"], "w") as f:
        json.dump(result, f)
    print(json.dumps(result))


def grade(tokens, answer):
    """Strict: well-formed fields up to the first ".", the last being the answer's exact digits."""
    text = "".join(VOCAB[t] for t in tokens)
    if "." not in text:
        return 0.0
    fields = text[: text.index(".")].split(",")
    if not all(f.isdigit() and (f == "0" or not f.startswith("0")) for f in fields):
        return 0.0
    return 1.0 if fields[-1] == str(answer) else 0.0


# No split evaluator is needed here (unlike nanogpt-cpu): the policy architecture is not
# editable, so no edited code is ever imported. policy.py is visible, hence copied into the
# workspace, where a trial could rewrite it at run time; it is executed only when its bytes
# are exactly the pristine file's (tests/test_grpo_env.py keeps this digest in step).
POLICY_SHA256 = "2380446206262ef0bdc94b512ea2c58b98e8605ddaaad8ca2c9f08e6abe95969"


def trusted_policy_module():
    path = os.path.join(os.environ.get("IDEAFORGE_WORKSPACE", "."), "policy.py")
    with open(path, "rb") as f:
        source = f.read()  # read once, hashed and executed from memory: no swap between check and use
    if hashlib.sha256(source).hexdigest() != POLICY_SHA256:
        raise ValueError("policy.py in the workspace differs from the pristine policy (it is read-only)")
    module = types.ModuleType("grpo_trusted_policy")
    exec(compile(source, "policy.py", "exec"), module.__dict__)
    return module


def load_policy():
    policy = trusted_policy_module()
    path = os.path.join(os.environ["IDEAFORGE_OUT"], "policy.pt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickled objects (code) are refused by the weights-only unpickler
        raise ValueError(f"policy.pt is not a weights-only checkpoint ({type(e).__name__}: {str(e)[:300]})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("config"), dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError("policy.pt must be {\"config\": dict, \"state_dict\": dict}")
    config = ckpt["config"]
    if config.get("vocab") != VOCAB or config.get("vocab_size") != len(VOCAB):
        raise ValueError(f"checkpoint vocabulary {config.get('vocab')!r} differs from the evaluator's {VOCAB!r}")
    if config != policy.default_config():
        raise ValueError(f"checkpoint config {config} is not the fixed policy's {policy.default_config()}")
    model = policy.build_model(policy.default_config())
    model.load_state_dict(ckpt["state_dict"])  # strict: every weight of the fixed class, nothing else
    return model.float().eval()


def check_interface(model):
    """Shape and finiteness of the fixed policy's logits (causal by construction)."""
    g = torch.Generator().manual_seed(0)
    T = PROMPT_LEN + MAX_NEW
    la = model(torch.randint(len(VOCAB), (8, T), generator=g))
    if tuple(la.shape) != (8, T, len(VOCAB)):
        return f"model(idx) returned shape {tuple(la.shape)}, expected {(8, T, len(VOCAB))}"
    if not torch.isfinite(la).all():
        return "model produces non-finite logits"
    return None


@torch.no_grad()
def main():
    torch.set_num_threads(int(os.environ.get("IDEAFORGE_THREADS", "1")))
    if not os.path.isfile(os.path.join(os.environ["IDEAFORGE_OUT"], "policy.pt")):
        return write({"status": "no_result", "reason": "no policy.pt in IDEAFORGE_OUT"})
    try:
        model = load_policy()
        problem = check_interface(model)
    except Exception as e:  # a checkpoint that does not load into the fixed policy is invalid
        return write({"status": "invalid", "reason": f"cannot load or run the policy: {type(e).__name__}: {e}"})
    if problem:
        return write({"status": "invalid", "reason": problem})

    with open(os.path.join("eval", "heldout.jsonl")) as f:
        held = [json.loads(line) for line in f if line.strip()]
    if SMOKE:
        held = held[:SMOKE_PROBLEMS]
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
