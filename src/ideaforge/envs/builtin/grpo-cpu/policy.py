"""The fixed policy of grpo-cpu: tokenizer and model (visible, read-only).

Only the post-training algorithm in train.py is the research object (as in the reference,
where the base model is fixed and ideas are post-training methods). The trusted evaluator
rebuilds the saved policy with this exact class, so a checkpoint must hold weights for it:
{"config": default_config(), "state_dict": GPT(config).state_dict()}.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------- tokenizer
VOCAB = "0123456789+=,."  # one character per token; "," separates working steps, "." ends a completion
STOI = {c: i for i, c in enumerate(VOCAB)}
END = STOI["."]
PROMPT_LEN = 8  # every prompt is four digits to add, "a+b+c+d=": 8 tokens


def encode(s):
    return [STOI[c] for c in s]


def decode(ids):
    return "".join(VOCAB[i] for i in ids)


# ---------------------------------------------------------------- policy (interface: model(idx) -> logits [B, T, V])
class Block(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        d = config["n_embd"]
        self.tok = nn.Embedding(config["vocab_size"], d)
        self.pos = nn.Embedding(config["block_size"], d)
        self.blocks = nn.ModuleList(Block(d, config["n_head"]) for _ in range(config["n_layer"]))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, config["vocab_size"], bias=False)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def default_config():
    return {"vocab": VOCAB, "vocab_size": len(VOCAB), "block_size": 18, "n_layer": 3, "n_head": 4, "n_embd": 80}


def build_model(config):
    return GPT(config)


# ---------------------------------------------------------------- the verifier's answer key
# train.jsonl holds, per problem, only the prompt and answer_key(prompt, answer): the
# training reward can check a completion's final number against it without the answer
# itself being in the data (as MATH's grader checks a final answer, not the working).
KEY_SALT = "grpo-cpu/v2"


def answer_key(prompt, final):
    """The 16-hex-digit key of `final` (a string) as the answer to `prompt`."""
    import hashlib

    return hashlib.sha256(f"{KEY_SALT}|{prompt}|{final}".encode()).hexdigest()[:16]


def final_answer(completion):
    """The final number of a completion "s1,s2,s3." (the field after the last ",", before the
    first "."), or None when it is malformed: no ".", or a field that is not a plain number."""
    if "." not in completion:
        return None
    fields = completion[: completion.index(".")].split(",")
    if not all(f.isdigit() and (f == "0" or not f.startswith("0")) for f in fields):
        return None
    return fields[-1]
