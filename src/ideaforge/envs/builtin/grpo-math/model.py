"""The fixed policy model and prompt of grpo-math (visible, not editable).

The policy is the causal LM in $IDEAFORGE_PREPARED/model (Qwen2.5-Math-1.5B, or a tiny
randomly initialised Qwen2-architecture model in the tiny profile), loaded with transformers.
The evaluator loads the same directory and only takes the trained weights from a checkpoint,
so the architecture, tokenizer and prompt cannot change.
"""

import os
from pathlib import Path

# The R1-Zero prompt: the model thinks inside <think> and answers inside <answer>.
R1_ZERO_PROMPT = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in the mind and then provides the User with the answer. "
    "The reasoning process is enclosed within <think> </think> and answer is enclosed within <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.\n"
    "User: {question}\n"
    "Assistant: <think>"
)
STOP = "</answer>"  # generation stops after this string (included in the response)


def model_dir() -> Path:
    """The policy's directory; GRPO_MODEL_DIR=tiny-model picks the tiny random model (smoke runs only)."""
    return Path(os.environ.get("IDEAFORGE_PREPARED", "prepared")) / os.environ.get("GRPO_MODEL_DIR", "model")


def format_prompt(question: str) -> str:
    return R1_ZERO_PROMPT.format(question=question)


def load_policy(device: str, dtype=None):
    """(model, tokenizer) from the prepared model directory; bf16 on CUDA, fp32 on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    tok = PreTrainedTokenizerFast.from_pretrained(model_dir())  # exactly tokenizer.json, whatever the model type
    tok.padding_side = "left"  # batched generation continues every prompt from its last token
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir(), dtype=dtype).to(device)
    return model, tok
