"""Trusted evaluator: loads the checkpoint and writes val_loss. Hidden from models."""

import json
import os

import torch

from prepare import load_split


def main():
    out_dir = os.environ["IDEAFORGE_OUT"]
    val = load_split("val")
    state = torch.load(os.path.join(out_dir, "model.pt"))
    print(json.dumps({"val_loss": float(len(state)) + float(len(val)) * 0.0}))


if __name__ == "__main__":
    main()
