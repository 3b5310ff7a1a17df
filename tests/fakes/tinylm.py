"""A tiny causal LM built offline for RL tests: a character-level tokenizer and a 2-layer Llama.

`make_tiny_lm(dest, prompt, targets)` builds both from nothing (no hub), then fits the
random model for a few hundred steps on `prompt + target` so that sampling from it
yields parseable ideas some of the time (a purely random model never does), and saves
model and tokenizer with `save_pretrained`: `dest` is then a valid `--ideator`.
"""

from __future__ import annotations

import string
from pathlib import Path

SPECIALS = ["<pad>", "<unk>", "</s>"]


def char_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {t: i for i, t in enumerate(SPECIALS + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")


def make_tiny_lm(dest: Path, prompt: str, targets: list[str], *, steps: int = 80, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = char_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=8192,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    p_ids = tok(prompt)["input_ids"]
    rows = [p_ids + tok(t)["input_ids"] + [tok.eos_token_id] for t in targets]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    labels = ids.clone()
    labels[:, : len(p_ids)] = -100  # learn the answers, not the prompt
    labels[ids == tok.pad_token_id] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest
