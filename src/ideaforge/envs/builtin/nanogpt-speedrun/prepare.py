"""One-time preparation for nanogpt-speedrun (run by ideaforge, cached per machine and profile).

SPEEDRUN_DATA chooses the data, all in the llm.c shard format (256 int32 header with magic
20240520 and version 1, then uint16 GPT-2 token ids):

  fineweb    (default) the GPT-2-tokenised FineWeb shards the speedrun community publishes,
             fineweb_val_000000.bin and fineweb_train_000001.bin, ... (100M tokens each), fetched
             once into $IDEAFORGE_CACHE/data/fineweb10B (default ~/.cache/ideaforge/data), resuming
             interrupted transfers, checking sizes and sha256 (recorded in SHA256SUMS there), and
             the training shards hard-linked into $IDEAFORGE_PREPARED/train, the validation
             shard held out (below). Variables:
               SPEEDRUN_DATA_URL      base URL of the files
                                      (default https://huggingface.co/datasets/kjj0/fineweb10B-gpt2/resolve/main)
               SPEEDRUN_TRAIN_SHARDS  how many training shards (default 72 = 7.2B tokens, more than the
                                      26,880 x 262,144 = 7.05B tokens the schedule ever reaches)
  miniature  generated tokens in the GPT-2 vocabulary (20M train, 2.1M validation), no network:
             for smoke runs on a GPU machine that has nothing cached.
  tiny       generated tokens in a vocabulary of 512 (1M train, 65,536 validation), for the tiny profile.

Writes $IDEAFORGE_PREPARED/meta.json: {"vocab_size", "data", "train_tokens", "val_tokens", "heldout"}.

The validation shards are held out: they are never placed in $IDEAFORGE_PREPARED (which every
jailed trial and model server reads), only named in meta.json's "heldout" by their host paths,
which the jail does not bind. Only the trusted scorer (evaluate.py, unjailed) reads them. FineWeb's
is the downloaded file in the shared cache; a generated one goes to
$IDEAFORGE_CACHE/data/nanogpt-speedrun-heldout/<random id>/ and is drawn with a seed from
os.urandom, so a trial that reruns this file cannot regenerate it (it can learn the "language": the
word dictionary is shared with training and seeded publicly). Training shards are hard-linked
into $IDEAFORGE_PREPARED/train (a symbolic link would dangle inside the jail).
The generated corpora are sequences of "words" (fixed random token strings of 2 to 6 tokens)
drawn from a Zipf distribution, so a model can learn them: within a word the next token is
determined, between words it follows the word frequencies.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np

MAGIC, VERSION, HEADER_INTS = 20240520, 1, 256
DEFAULT_URL = "https://huggingface.co/datasets/kjj0/fineweb10B-gpt2/resolve/main"
DEFAULT_TRAIN_SHARDS = 72
GPT2_VOCAB = 50257
GENERATED = {  # name -> (vocab size, train tokens per shard, train shards, validation tokens)
    "miniature": (GPT2_VOCAB, 10_000_000, 2, 2_100_000),
    "tiny": (512, 500_000, 2, 65_536),
}
SEED = 1234


def write_shard(path: Path, tokens: np.ndarray) -> None:
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (MAGIC, VERSION, len(tokens))
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.uint16).tobytes())


def shard_tokens(path: Path) -> int:
    """Token count from the header, after checking magic, version and the file size."""
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    if len(header) < 3 or header[0] != MAGIC or header[1] != VERSION:
        raise SystemExit(f"{path}: not a version-1 llm.c token shard")
    n = int(header[2])
    if path.stat().st_size != HEADER_INTS * 4 + 2 * n:
        raise SystemExit(f"{path}: {path.stat().st_size} bytes, but its header announces {n} tokens")
    return n


def generate(vocab: int, n_tokens: int, rng: np.random.Generator, words_rng: np.random.Generator | None = None) -> np.ndarray:
    """n_tokens of Zipf-distributed 'words' (random token strings of 2-6 tokens) in [0, vocab).
    The word dictionary comes from `words_rng` (default `rng`), the word sequence from `rng`."""
    words_rng = rng if words_rng is None else words_rng
    n_words, max_len = 4 * vocab, 6
    words = words_rng.integers(0, vocab, size=(n_words, max_len)).astype(np.uint16)
    lengths = words_rng.integers(2, max_len + 1, size=n_words)
    p = 1.0 / np.arange(1, n_words + 1)
    p /= p.sum()
    ids = rng.choice(n_words, size=n_tokens // 2 + 16, p=p)  # mean length 4 > 2: enough words
    mask = np.arange(max_len)[None, :] < lengths[ids][:, None]
    out = words[ids][mask]
    assert len(out) >= n_tokens
    return out[:n_tokens]


def heldout_dir() -> Path:
    """A fresh directory outside $IDEAFORGE_PREPARED for generated validation shards."""
    from ideaforge.envs.download import data_root

    d = data_root() / "nanogpt-speedrun-heldout" / os.urandom(8).hex()
    d.mkdir(parents=True)
    return d


def prepare_generated(kind: str, out: Path) -> dict:
    vocab, per_shard, shards, n_val = GENERATED[kind]
    train = generate(vocab, per_shard * shards, np.random.default_rng(SEED))
    for k in range(shards):
        write_shard(out / "train" / f"fineweb_train_{k + 1:06d}.bin", train[k * per_shard : (k + 1) * per_shard])
    # the same words (public seed), a word sequence no trial can reproduce (secret seed)
    secret = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
    val = generate(vocab, n_val + 1, secret, words_rng=np.random.default_rng(SEED))
    held = heldout_dir() / "fineweb_val_000000.bin"
    write_shard(held, val)
    return {"vocab_size": vocab, "data": kind, "train_tokens": per_shard * shards, "val_tokens": n_val + 1,
            "heldout": [str(held)]}


def _link(src: Path, dest: Path) -> None:
    """Hard link (visible inside the jail, which binds $IDEAFORGE_PREPARED alone); a symbolic link
    where the cache is on another file system (then training works only unjailed)."""
    try:
        os.link(src, dest)
    except OSError:
        print(f"warning: cannot hard-link {src} into {dest.parent}; a symbolic link dangles inside the jail", flush=True)
        dest.symlink_to(src)


def prepare_fineweb(out: Path) -> dict:
    from ideaforge.envs.download import Remote, data_root, fetch_all  # the shared, resumable downloader

    base = os.environ.get("SPEEDRUN_DATA_URL", DEFAULT_URL).rstrip("/")
    n_train = int(os.environ.get("SPEEDRUN_TRAIN_SHARDS", DEFAULT_TRAIN_SHARDS))
    names = ["fineweb_val_000000.bin"] + [f"fineweb_train_{k:06d}.bin" for k in range(1, n_train + 1)]
    cache = data_root() / "fineweb10B"
    print(f"fetching {len(names)} shards (about {0.2 * len(names):.0f} GB) into {cache} from {base}", flush=True)
    paths = fetch_all([Remote(f"{base}/{n}", n) for n in names], cache, log=lambda m: print(m, flush=True))
    counts = {p.name: shard_tokens(p) for p in paths}
    for p in paths:
        if "_train_" in p.name:
            _link(p, out / "train" / p.name)
    return {"vocab_size": GPT2_VOCAB, "data": "fineweb", "source": base,
            "train_tokens": sum(v for k, v in counts.items() if "_train_" in k),
            "val_tokens": counts["fineweb_val_000000.bin"],
            "heldout": [str(p.resolve()) for p in paths if "_val_" in p.name]}


def main():
    out = Path(os.environ["IDEAFORGE_PREPARED"])
    kind = os.environ.get("SPEEDRUN_DATA", "fineweb")
    (out / "train").mkdir(parents=True, exist_ok=True)
    if kind in GENERATED:
        meta = prepare_generated(kind, out)
    elif kind == "fineweb":
        meta = prepare_fineweb(out)
    else:
        sys.exit(f"SPEEDRUN_DATA={kind!r}: use fineweb, miniature or tiny")
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"prepared {meta['data']}: {meta['train_tokens']:,} training and {meta['val_tokens']:,} validation tokens, "
          f"vocabulary {meta['vocab_size']}", flush=True)


if __name__ == "__main__":
    main()
