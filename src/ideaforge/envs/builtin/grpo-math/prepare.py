"""One-time preparation for grpo-math (run by ideaforge, cached per machine and profile).

GRPO_DATA chooses what $IDEAFORGE_PREPARED holds:

  math  (default) the policy Qwen/Qwen2.5-Math-1.5B (about 3.1 GB) and MATH: 7,500 training
        problems and the 500 held-out problems (MATH-500), fetched once into
        $IDEAFORGE_CACHE/data/ (resumable, size- and sha256-checked) and linked here as model/,
        train.jsonl and test.jsonl (and a tiny random model in tiny-model/, for smoke runs on the
        CPU). Variables (all optional):
          GRPO_MODEL_URL   base URL of the model files (default the Hugging Face repo)
          GRPO_MODEL_FILES comma-separated files to fetch from it
          GRPO_TRAIN_URL   a .json or .jsonl of training problems
          GRPO_TEST_URL    a .jsonl of held-out problems
        Records need "problem" (or "question") and "answer" (or a "solution" with \\boxed{...}).
  tiny  generated, no network: a tiny randomly initialised Qwen2-architecture model with a
        character-level tokenizer, and arithmetic problems in the MATH answer format.

Writes train.jsonl as {"problem", "answer"} lines and meta.json into $IDEAFORGE_PREPARED, and the
held-out test.jsonl outside it (meta.json "heldout": only the trusted evaluator reads it).
"""

import json
import os
import random
import sys
from pathlib import Path

MODEL_URL = "https://huggingface.co/Qwen/Qwen2.5-Math-1.5B/resolve/main"
MODEL_FILES = "config.json,generation_config.json,model.safetensors,tokenizer.json,tokenizer_config.json,vocab.json,merges.txt"
TRAIN_URL = "https://huggingface.co/datasets/yinjiewang/MATH_train/resolve/main/train/MATH_train.json"
TEST_URL = "https://huggingface.co/datasets/HuggingFaceH4/MATH-500/resolve/main/test.jsonl"
SEED = 1234
TINY_TRAIN, TINY_TEST = 64, 16  # generated problems


def boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} in text, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def read_problems(path: Path) -> list[dict]:
    text = path.read_text()
    rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(l) for l in text.splitlines() if l.strip()]
    out = []
    for r in rows:
        q = r.get("problem") or r.get("question")
        a = r.get("answer") or (boxed(r["solution"]) if r.get("solution") else None)
        if q and a:
            out.append({"problem": q, "answer": str(a)})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def prepare_math(out: Path) -> dict:
    from ideaforge.envs.download import Remote, data_root, fetch_all

    log = lambda m: print(m, flush=True)  # noqa: E731
    base = os.environ.get("GRPO_MODEL_URL", MODEL_URL).rstrip("/")
    files = os.environ.get("GRPO_MODEL_FILES", MODEL_FILES).split(",")
    model_cache = data_root() / "Qwen2.5-Math-1.5B"
    fetch_all([Remote(f"{base}/{f}", f) for f in files], model_cache, log=log)
    data_cache = data_root() / "MATH"
    train_url, test_url = os.environ.get("GRPO_TRAIN_URL", TRAIN_URL), os.environ.get("GRPO_TEST_URL", TEST_URL)
    train_name, test_name = "train" + Path(train_url).suffix, "test" + Path(test_url).suffix
    fetch_all([Remote(train_url, train_name), Remote(test_url, test_name)], data_cache, log=log)
    (out / "model").mkdir()
    for f in files:
        _link(model_cache / f, out / "model" / f)
    train, test = read_problems(data_cache / train_name), read_problems(data_cache / test_name)
    held = {p["problem"] for p in test}
    train = [p for p in train if p["problem"] not in held]  # never train on a held-out problem
    write_jsonl(out / "train.jsonl", train)
    held_out = heldout_dir() / "test.jsonl"
    write_jsonl(held_out, test)
    build_tiny_model(out / "tiny-model")  # for smoke runs of edited code on the CPU (GRPO_MODEL_DIR=tiny-model)
    return {"data": "math", "model": base, "train": len(train), "test": len(test), "heldout": str(held_out)}


def heldout_dir() -> Path:
    """A fresh directory outside $IDEAFORGE_PREPARED (which training and smoke runs see) for the
    held-out problems; only the trusted evaluator reads it, by the path in meta.json."""
    from ideaforge.envs.download import data_root

    d = data_root() / "grpo-math-heldout" / os.urandom(8).hex()
    d.mkdir(parents=True)
    return d


def _link(src: Path, dest: Path) -> None:
    """Hard link (visible inside the jail, which binds $IDEAFORGE_PREPARED alone); a symbolic link
    where the cache is on another file system (then training works only unjailed)."""
    try:
        os.link(src, dest)
    except OSError:
        print(f"warning: cannot hard-link {src} into {dest.parent}; a symbolic link dangles inside the jail", flush=True)
        dest.symlink_to(src)


def tiny_problems(rng: random.Random, n: int, seen: set) -> list[dict]:
    out = []
    while len(out) < n:
        a, b, op = rng.randint(1, 20), rng.randint(1, 20), rng.choice("+-*")
        sym = "\\times" if op == "*" else op
        q = f"What is ${a} {sym} {b}$?"
        if q in seen:
            continue
        seen.add(q)
        out.append({"problem": q, "answer": str(eval(f"{a}{op}{b}"))})
    return out


def build_tiny_model(dest: Path) -> None:
    """A character-level tokenizer and a 2-layer Qwen2 model, randomly initialised (seeded)."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    specials = ["<unk>", "<pad>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="<|endoftext|>")
    torch.manual_seed(SEED)
    config = Qwen2Config(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                         tie_word_embeddings=True, eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<pad>"],
                         bos_token_id=None)
    Qwen2ForCausalLM(config).save_pretrained(dest)
    tok.save_pretrained(dest)


def prepare_tiny(out: Path) -> dict:
    build_tiny_model(out / "model")
    # held-out problems from a secret seed (this file is visible to trials), kept outside the
    # prepared directory; training problems from the public seed, never one of them
    seen: set = set()
    test = tiny_problems(random.Random(os.urandom(8)), TINY_TEST, seen)
    held_out = heldout_dir() / "test.jsonl"
    write_jsonl(held_out, test)
    write_jsonl(out / "train.jsonl", tiny_problems(random.Random(SEED), TINY_TRAIN, seen))
    return {"data": "tiny", "model": "tiny random Qwen2", "train": TINY_TRAIN, "test": TINY_TEST,
            "heldout": str(held_out)}


def main():
    out = Path(os.environ["IDEAFORGE_PREPARED"])
    kind = os.environ.get("GRPO_DATA", "math")
    if kind not in ("math", "tiny"):
        sys.exit(f"GRPO_DATA={kind!r}: use math or tiny")
    meta = prepare_math(out) if kind == "math" else prepare_tiny(out)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"prepared {meta['data']}: {meta['train']} training and {meta['test']} held-out problems", flush=True)


if __name__ == "__main__":
    main()
