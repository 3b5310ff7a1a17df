"""The model-loading function of nanogpt-speedrun's split evaluator (untrusted side).

The harness runs `python -m ideaforge.envs.protocol serve --load serve_model:load ...` jailed,
in the trial's workspace: the protocol reads $IDEAFORGE_OUT/ckpt.pt with weights_only=True and
calls load(ckpt). This rebuilds the model with the trial's own build_model(config) from
train.py, loads the weights, and puts it on the leased GPU when there is one (fp32 with TF32
matmuls, the evaluator's frozen precision), else the CPU. Nothing here is trusted: the scorer
checks every answer and computes the loss itself.
"""

import torch
import torch.nn as nn


class OnDevice(nn.Module):
    """model(ids) with ids on the CPU (as the protocol sends them): run on the model's device."""

    def __init__(self, model: nn.Module, device: str):
        super().__init__()
        self.model, self.device = model, device

    def forward(self, idx: torch.Tensor):
        return self.model(idx.to(self.device))


def load(ckpt: dict) -> nn.Module:
    from train import build_model  # the trial's code, in this jailed process only

    if not isinstance(ckpt.get("config"), dict) or "state_dict" not in ckpt:
        raise ValueError("ckpt.pt must be a dict with keys config and state_dict")
    model = build_model(dict(ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    return OnDevice(model.float().to(device).eval(), device)
