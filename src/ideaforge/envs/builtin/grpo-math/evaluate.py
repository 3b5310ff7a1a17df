"""Trusted evaluator for grpo-math: the best held-out accuracy among the saved policies.

Runs after training in a fresh directory holding only this file; imports nothing from the
trial's workspace. The architecture and tokenizer come from the prepared model directory
($IDEAFORGE_PREPARED/model); only the weights come from each checkpoint
$IDEAFORGE_OUT/ckpt/step_*/ (safetensors, the last MAX_CHECKPOINTS by step). Each policy
answers the first GRPO_EVAL_N held-out problems once with frozen sampling (temperature 1.0,
top-p 1.0, at most GRPO_EVAL_MAX_TOKENS new tokens, stop after </answer>, fixed seed), and
a strict grader scores 1 for a well-formatted correct answer and 0 otherwise (formatted but
wrong is 0). Writes {"status": "ok", "metrics": {"accuracy": best, ...}} to $IDEAFORGE_RESULT.
"""

import json
import os
import re
import traceback
from fractions import Fraction
from pathlib import Path

import torch

N_PROBLEMS = int(os.environ.get("GRPO_EVAL_N", 500))
MAX_TOKENS = int(os.environ.get("GRPO_EVAL_MAX_TOKENS", 1024))
MAX_CHECKPOINTS = 10  # the reference evaluates 10 times during training
EVAL_SEED = 1234
BATCH = 64  # prompts per generate call
STOP = "</answer>"
# Frozen copy of the prompt in model.py (the workspace's copy is not trusted at evaluation time).
PROMPT = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in the mind and then provides the User with the answer. "
    "The reasoning process is enclosed within <think> </think> and answer is enclosed within <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.\n"
    "User: {question}\n"
    "Assistant: <think>"
)


class Invalid(Exception):
    pass


# ---------------------------------------------------------------- strict grader
def _norm(s: str) -> str:
    s = s.strip().strip("$").rstrip(".").strip()
    for a, b in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("dfrac", "frac"),
                 ("tfrac", "frac"), ("^\\circ", ""), ("^{\\circ}", ""), ("\\%", ""), ("%", "")):
        s = s.replace(a, b)
    s = re.sub(r"\\text\{\s*([^}]*)\}", r"\1", s)
    s = re.sub(r"\\mbox\{\s*([^}]*)\}", r"\1", s)
    s = s.replace(" ", "")
    s = re.sub(r"^[a-zA-Z]=", "", s)  # "x=5" -> "5"
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    return s


def _number(s: str) -> Fraction | None:
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s)
    try:
        if m:
            return (-1 if m.group(1) else 1) * Fraction(int(m.group(2)), int(m.group(3)))
        if re.fullmatch(r"-?\d+/\d+", s):
            return Fraction(s)
        if re.fullmatch(r"-?[\d,]*\.?\d+", s):
            return Fraction(s.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None
    return None


def extract(response: str) -> str | None:
    """The answer of a response in the R1-Zero format, else None (unformatted scores 0)."""
    if "</think> <answer>" not in response or STOP not in response:
        return None
    ans = response.split("</think> <answer>")[-1].split(STOP)[0]
    start = ans.rfind("\\boxed{")
    if start >= 0:
        depth, i = 1, start + len("\\boxed{")
        for j in range(i, len(ans)):
            depth += {"{": 1, "}": -1}.get(ans[j], 0)
            if depth == 0:
                return ans[i:j]
        return None
    return ans


def grade(response: str, truth: str) -> float:
    got = extract(response)
    if got is None or not got.strip():
        return 0.0
    a, b = _norm(got), _norm(truth)
    if a == b:
        return 1.0
    x, y = _number(a), _number(b)
    return float(x is not None and y is not None and x == y)


# ---------------------------------------------------------------- scoring
def checkpoints(out_dir: Path) -> list[Path]:
    found = sorted(p for p in (out_dir / "ckpt").glob("step_*") if p.is_dir() and re.fullmatch(r"step_\d+", p.name))
    return found[-MAX_CHECKPOINTS:]


def load_weights(model, ckpt: Path) -> None:
    from safetensors.torch import load_file

    files = sorted(ckpt.glob("*.safetensors"))
    if not files:
        raise Invalid(f"{ckpt.name}: no .safetensors weights (save with save_pretrained(safe_serialization=True))")
    state = {}
    for f in files:
        state.update(load_file(f))
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise Invalid(f"{ckpt.name}: weights do not fit the fixed model (size mismatch for {k}: "
                      f"{tuple(state[k].shape)} saved, {tuple(own[k].shape)} expected; {len(wrong)} tensor(s) differ)")
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise Invalid(f"{ckpt.name}: weights do not fit the fixed model (missing {sorted(set(missing) - tied)[:3]}, "
                      f"unexpected {sorted(unexpected)[:3]})")
    model.tie_weights()


@torch.no_grad()
def accuracy(model, tok, problems: list[dict], device: str) -> float:
    torch.manual_seed(EVAL_SEED)
    score = 0.0
    for i in range(0, len(problems), BATCH):
        chunk = problems[i : i + BATCH]
        enc = tok([PROMPT.format(question=p["problem"]) for p in chunk], return_tensors="pt", padding=True).to(device)
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=MAX_TOKENS,
                             stop_strings=[STOP], tokenizer=tok, pad_token_id=tok.pad_token_id)
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        score += sum(grade(t, p["answer"]) for t, p in zip(texts, chunk))
    return score / len(problems)


def evaluate(out_dir: Path, prepared: Path) -> dict:
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    ckpts = checkpoints(out_dir)
    if not ckpts:
        return {"status": "no_result", "reason": "no saved policy under $IDEAFORGE_OUT/ckpt/step_*"}
    held_out = Path(json.loads((prepared / "meta.json").read_text())["heldout"])  # outside what trials see
    problems = [json.loads(l) for l in held_out.read_text().splitlines() if l.strip()][:N_PROBLEMS]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tok = PreTrainedTokenizerFast.from_pretrained(prepared / "model")
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(prepared / "model", dtype=dtype).to(device).eval()
    scores = {}
    for ck in ckpts:
        load_weights(model, ck)
        step = int(ck.name.split("_")[1])
        scores[step] = accuracy(model, tok, problems, device)
        print(f"{ck.name}: accuracy {scores[step]:.4f}", flush=True)
    best = max(scores, key=lambda s: (scores[s], -s))
    return {"status": "ok", "metrics": {"accuracy": scores[best], "final_accuracy": scores[max(scores)],
                                        "best_step": best, "checkpoints": len(scores), "n": len(problems)}}


def main() -> None:
    result_path = Path(os.environ.get("IDEAFORGE_RESULT", "result.json")).resolve()
    out_dir = Path(os.environ.get("IDEAFORGE_OUT", "out")).resolve()
    prepared = Path(os.environ.get("IDEAFORGE_PREPARED", "prepared")).resolve()
    torch.set_num_threads(int(os.environ.get("IDEAFORGE_THREADS", 1)))
    try:
        result = evaluate(out_dir, prepared)
    except Invalid as e:
        result = {"status": "invalid", "reason": str(e)}
    except Exception as e:
        traceback.print_exc()
        result = {"status": "no_result", "reason": f"evaluation raised {type(e).__name__}: {e}"}
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
