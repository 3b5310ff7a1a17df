"""GPU smoke test of the two full-size environments on one GPU, in about 8 minutes, no network.

For nanogpt-speedrun and grpo-math, `1gpu` profile: prepare (cached data when `ideaforge env
prepare` already fetched it, else miniature data generated on the spot: GPT-2-vocabulary token
shards for the speedrun, the tiny random model and arithmetic problems for GRPO), then the
baseline and one catalogue idea, each as a trial run through ideaforge's own campaign, executor
and hidden evaluator. Prints the metric and the wall time of every stage.

The 8-minute figure is an estimate (speedrun 2 x (75 s + eval), GRPO 2 x (120 s + eval));
it has not been measured on a GPU yet. With the real Qwen model cached, one GRPO step of the 1gpu
preset (256 rollouts of up to 512 tokens with HF generate) can take most of the 120 s budget.

    python benchmarks/gpu_smoke.py                       # on a machine with one GPU
    python benchmarks/gpu_smoke.py --profile tiny --gpus ''   # the same path on the CPU, tiny profiles
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from ideaforge.envs import load_env
from ideaforge.envs.download import data_root, read_sums
from ideaforge.execute.local import LocalExecutor
from ideaforge.ideate.catalogue import load_catalogue
from ideaforge.edit.apply import apply_edits
from ideaforge.edit.parse import parse_reply
from ideaforge.search.campaign import Campaign, TrialRunner

IDEA = {"nanogpt-speedrun": "weight-ema", "grpo-math": "reinforce-baseline-lr3e-5"}


def offline_env(spec) -> tuple[object, str]:
    """The spec, with its data switched to what exists here without a download; and a label."""
    if spec.profile == "tiny":
        return spec, "generated (tiny profile)"
    if spec.name == "nanogpt-speedrun":
        sums = read_sums(data_root() / "fineweb10B")
        n_train = sum(1 for n in sums if n.startswith("fineweb_train_"))
        if "fineweb_val_000000.bin" in sums and n_train:
            return dataclasses.replace(spec, env={**spec.env, "SPEEDRUN_TRAIN_SHARDS": str(n_train)}), f"cached FineWeb, {n_train} shards"
        return dataclasses.replace(spec, env={**spec.env, "SPEEDRUN_DATA": "miniature"}), "miniature (nothing cached)"
    model = data_root() / "Qwen2.5-Math-1.5B" / "model.safetensors"
    if model.is_file() and (data_root() / "MATH" / "test.jsonl").is_file():
        return spec, "cached Qwen2.5-Math-1.5B and MATH"
    return dataclasses.replace(spec, env={**spec.env, "GRPO_DATA": "tiny"}), "tiny random model (nothing cached)"


def stage(label: str, t0: float) -> float:
    now = time.monotonic()
    print(f"  {label:<40s} {now - t0:7.1f} s", flush=True)
    return now


def run_env(name: str, profile: str, budget: float, gpus: list[str], root: Path) -> bool:
    spec, data = offline_env(load_env(name, profile=profile))
    print(f"\n== {name} (profile {profile}, data: {data}, budget {budget:.0f} s per trial)", flush=True)
    t = time.monotonic()
    camp = Campaign.create(root / name, spec, {"command": "gpu_smoke", "budget_s": budget})
    camp.prepared(log=lambda m: None)
    t = stage("prepare", t)
    idea = next(i for i in load_catalogue(spec) if i["id"] == IDEA[name])
    rel = spec.editable_files[0]
    files = apply_edits({rel: (spec.root / rel).read_text()}, parse_reply(idea["edit"]), spec).files
    impl = camp.store.add_implementation(None, True, "", files, [], None)
    ok = True
    with LocalExecutor(slots=1, gpus=gpus) as ex:
        runner = TrialRunner(camp, ex)
        for label, impl_id in (("baseline", None), (idea["id"], impl)):
            tid = camp.store.add_trial("baseline" if impl_id is None else "candidate", seed=0, budget_s=budget,
                                       implementation_id=impl_id)
            runner.drain()
            tr = camp.store.trial(tid)
            metric = f"{spec.metric} = {tr['metric']:.4f}" if tr["outcome"] == "evaluated" else f"{tr['outcome']}: {(tr['reason'] or '')[:300]}"
            t = stage(f"{label}: train {tr['train_s'] or 0:.0f} s + eval {tr['eval_s'] or 0:.0f} s", t)
            print(f"      {metric}", flush=True)
            ok &= tr["outcome"] == "evaluated"
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="1gpu")
    ap.add_argument("--gpus", default="0", help="comma-separated GPU ids to lend ('' for none)")
    ap.add_argument("--speedrun-budget", type=float, default=75.0, help="training seconds per speedrun trial")
    ap.add_argument("--grpo-budget", type=float, default=120.0, help="training seconds per grpo-math trial")
    ap.add_argument("--dir", help="keep the campaigns here (default: a temporary directory)")
    args = ap.parse_args()
    gpus = [g for g in args.gpus.split(",") if g]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        root = Path(args.dir or tmp)
        ok = run_env("nanogpt-speedrun", args.profile, args.speedrun_budget, gpus, root)
        ok &= run_env("grpo-math", args.profile, args.grpo_budget, gpus, root)
    print(f"\ntotal {time.monotonic() - t0:.0f} s: {'ok' if ok else 'FAILED'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
