"""Data loading: the fixed harness. Read-only for the implementer."""

import os

import torch

DATA_DIR = os.environ.get("IDEAFORGE_DATA", "data")
_text = open(os.path.join(DATA_DIR, "x.txt")).read()
chars = sorted(set(_text))
vocab_size = len(chars)
stoi = {c: i for i, c in enumerate(chars)}


def encode(s):
    return [stoi[c] for c in s]


def load_split(name):
    data = torch.tensor(encode(_text), dtype=torch.long)
    n = int(0.9 * len(data))
    return data[:n] if name == "train" else data[n:]
