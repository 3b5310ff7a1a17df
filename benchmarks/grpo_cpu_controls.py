"""The controls of grpo-cpu: is there headroom that only the verifier's reward can fill?

Measures, at the environment's budget (60 CPU-seconds, IDEAFORGE_BUDGET_CLOCK=cpu, one thread):
  sft_start    the SFT checkpoint of the cached [prepare] step, scored as is;
  grpo         the baseline train.py, --seeds K seeds;
  sft_control  the same budget spent on more supervised fine-tuning of the SFT start on the
               very demonstrations it was made from (prepare.demonstrations, same batch and
               peak learning rate), --seeds K seeds: what the data allows without the verifier;
  ideas        each catalogue idea (or those named with --ideas) applied alone through the
               real edit path (parse_reply + apply_edits with the environment's spec),
               --seeds K seeds, reported as the difference of means against the baseline
               with a two-sided Welch t-test p-value.

Every run is a fresh workspace holding the environment's editable and visible files, trained
with the harness's variables, then scored by the hidden evaluate.py in a fresh directory
holding only the hidden files, as the executor does. The last line is

    sft_start=A grpo=B±s sft_control=C±s ideas: name=+d(p=..) ...

    python benchmarks/grpo_cpu_controls.py --parallel 2 --seeds 3
    python benchmarks/grpo_cpu_controls.py --ideas higher-learning-rate,no-baseline --seeds 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ideaforge.edit.apply import apply_edits
from ideaforge.edit.parse import parse_reply
from ideaforge.envs import load_env
from ideaforge.envs.workspace import ensure_prepared
from ideaforge.errors import EditRefused

# The supervised control: continued SFT on prepare.py's demonstrations (the SFT start's own
# data), with its batch size and peak learning rate, for the same CPU budget.
SFT_CONTROL = '''
import json, os, time
import torch
import torch.nn.functional as F
import prepare
from policy import build_model


def main():
    budget_s = float(os.environ.get("IDEAFORGE_BUDGET_S", "60"))
    prepared = os.environ["IDEAFORGE_PREPARED"]
    out_dir = os.environ.get("IDEAFORGE_OUT", ".")
    torch.set_num_threads(int(os.environ.get("IDEAFORGE_THREADS", "1")))
    torch.manual_seed(int(os.environ.get("IDEAFORGE_SEED", "0")))
    with open(os.path.join(prepared, "train.jsonl")) as f:
        prompts = [json.loads(line)["prompt"] for line in f if line.strip()]
    problems = [tuple(int(x) for x in p[:-1].split("+")) for p in prompts]
    data, mask = prepare.sft_tensors(prepare.demonstrations(problems))  # the same demonstrations, same order and noise
    ckpt = torch.load(os.path.join(prepared, "sft.pt"), map_location="cpu", weights_only=True)
    model = build_model(ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    opt = torch.optim.AdamW(model.parameters(), lr=prepare.LR, betas=(0.9, 0.95), weight_decay=0.0)
    step = 0
    while time.process_time() < budget_s:
        ix = torch.randint(len(data), (prepare.BATCH,))
        x, m = data[ix], mask[ix]
        loss = F.cross_entropy(model(x[:, :-1]).transpose(1, 2), x[:, 1:], reduction="none")
        loss = (loss * m[:, 1:]).sum() / m[:, 1:].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
    os.makedirs(out_dir, exist_ok=True)
    torch.save({"config": ckpt["config"], "state_dict": model.state_dict()}, os.path.join(out_dir, "policy.pt"))
    print(f"done: {step} steps", flush=True)


if __name__ == "__main__":
    main()
'''


def welch_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of Welch's t-test (nan with fewer than 2 values a side)."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return 0.0 if statistics.mean(a) != statistics.mean(b) else 1.0
    t = (statistics.mean(a) - statistics.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return _betainc(df / 2, 0.5, df / (df + t * t))  # P(|T| > |t|) = I_{df/(df+t^2)}(df/2, 1/2)


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (continued fraction, Numerical Recipes)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x))
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1 - x)
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > 1e-30 else 1e-30)
    f = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > 1e-30 else 1e-30)
            c = 1.0 + num / c
            c = c if abs(c) > 1e-30 else 1e-30
            f *= c * d
        if abs(c * d - 1.0) < 1e-12:
            break
    return front * f / a


def run_one(spec, name: str, source: str | None, budget: float, seed: int, root: Path, prepared: Path) -> dict:
    """Train `source` as train.py (None: no training, score the SFT start), then evaluate."""
    job = root / f"{name}-s{seed}"
    ws, ev, out = job / "ws", job / "ev", job / "out"
    for d in (ws, ev, out):
        d.mkdir(parents=True)
    for rel in spec.editable_files + spec.visible_files:
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(spec.root / rel, ws / rel)
    for rel in spec.hidden_files:
        (ev / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(spec.root / rel, ev / rel)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDEAFORGE_")}
    env.update(IDEAFORGE_OUT=str(out), IDEAFORGE_PREPARED=str(prepared), IDEAFORGE_SEED=str(seed),
               IDEAFORGE_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               IDEAFORGE_BUDGET_S=str(budget), IDEAFORGE_BUDGET_CLOCK=spec.budget_clock)
    info: dict = {}
    if source is None:
        shutil.copy2(prepared / "sft.pt", out / "policy.pt")
    else:
        (ws / "train.py").write_text(source)
        t0 = time.time()
        try:
            tr = subprocess.run([sys.executable, "train.py"], cwd=ws, capture_output=True, text=True,
                                timeout=spec.timeout_s * 10, env=env)
        except subprocess.TimeoutExpired:
            return {"status": "timeout"}
        (job / "train.log").write_text(tr.stdout + tr.stderr)
        info = {"train_wall_s": round(time.time() - t0, 1),
                "steps": next((line.split()[1] for line in tr.stdout.splitlines() if line.startswith("done: ")), None)}
        if tr.returncode != 0:
            return {"status": "failed", "reason": (tr.stderr.strip().splitlines() or ["?"])[-1], **info}
    result = job / "result.json"
    evp = subprocess.run([sys.executable, "evaluate.py"], cwd=ev, capture_output=True, text=True, timeout=600,
                         env={**env, "IDEAFORGE_WORKSPACE": str(ws), "IDEAFORGE_RESULT": str(result)})
    if evp.returncode != 0 or not result.is_file():
        return {"status": "eval_failed", "reason": (evp.stderr.strip().splitlines() or ["?"])[-1], **info}
    return {**json.loads(result.read_text()), **info}


def _mean_sd(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"{statistics.mean(xs):.4f}±{statistics.stdev(xs) if len(xs) > 1 else 0.0:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=None, help="training CPU-seconds per run (default: the env's, 60)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per arm (0..K-1)")
    ap.add_argument("--ideas", default="", help="comma-separated idea ids (default: all; 'none' for the controls only)")
    ap.add_argument("--no-control", action="store_true", help="skip the SFT control")
    ap.add_argument("--parallel", type=int, default=1, help="runs at once (each uses one thread)")
    ap.add_argument("--prepared", type=Path, help="a [prepare] output to use (default: the cached one, made if missing)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary workspaces and print where")
    ap.add_argument("--json", type=Path, help="also write every run's result here")
    args = ap.parse_args()

    spec = load_env("grpo-cpu")
    budget = args.budget if args.budget is not None else spec.budget_s
    prepared = args.prepared or ensure_prepared(spec, log=lambda m: print(m, flush=True))
    base = (spec.root / "train.py").read_text()
    catalogue = tomllib.loads((spec.root / "catalogue" / "ideas.toml").read_text())["idea"]
    by_id = {i["id"]: i for i in catalogue}
    names = [] if args.ideas == "none" else [x.strip() for x in args.ideas.split(",") if x.strip()] or list(by_id)
    unknown = [n for n in names if n not in by_id]
    if unknown:
        sys.exit(f"unknown idea(s): {', '.join(unknown)}; known: {', '.join(by_id)}")

    arms: dict[str, str | None] = {"sft_start": None, "grpo": base}
    if not args.no_control:
        arms["sft_control"] = SFT_CONTROL
    refused: dict[str, str] = {}
    for n in names:
        try:
            arms[n] = apply_edits({"train.py": base}, parse_reply(by_id[n]["edit"]), spec).files["train.py"]
        except EditRefused as e:
            refused[n] = str(e).strip().splitlines()[-1]
    jobs = [("sft_start", 0)] + [(a, s) for a in arms if a != "sft_start" for s in range(args.seeds)]

    root = Path(tempfile.mkdtemp(prefix="grpo-controls-"))
    results: dict[str, dict[int, dict]] = {a: {} for a in arms}
    print(f"budget={budget:g} CPU-s seeds={args.seeds} parallel={args.parallel} runs={len(jobs)} "
          f"prepared={prepared} dir={root}", flush=True)

    def work(job):
        arm, seed = job
        res = run_one(spec, arm, arms[arm], budget, seed, root, prepared)
        results[arm][seed] = res
        acc = res.get("metrics", {}).get("accuracy")
        print(f"[{time.strftime('%H:%M:%S')}] {arm} seed={seed}: {res['status']}"
              + (f" accuracy={acc:.4f}" if acc is not None else f" ({res.get('reason', '')})")
              + (f" steps={res['steps']} wall={res['train_wall_s']}s" if res.get("steps") else ""), flush=True)

    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        list(pool.map(work, jobs))

    def accs(arm):
        return [r["metrics"]["accuracy"] for _, r in sorted(results[arm].items()) if r.get("status") == "ok"]

    grpo = accs("grpo")
    print()
    print(f"{'arm':<26} {'accuracy (mean±sd)':>20} {'delta':>8} {'p':>7}  per seed")
    effects = []
    for arm in arms:
        xs = accs(arm)
        delta = p = ""
        if arm not in ("sft_start", "grpo") and xs and grpo:
            d = statistics.mean(xs) - statistics.mean(grpo)
            pv = welch_p(xs, grpo)
            delta, p = f"{d:+.4f}", f"{pv:.3f}"
            if arm != "sft_control":
                effects.append(f"{arm}={d:+.3f}(p={pv:.3f})")
        print(f"{arm:<26} {_mean_sd(xs):>20} {delta:>8} {p:>7}  {' '.join(f'{x:.4f}' for x in xs)}")
    for n, why in refused.items():
        print(f"{n:<26} refused: {why}")
        effects.append(f"{n}=refused")
    if args.json:
        args.json.write_text(json.dumps({"budget": budget, "results": results}, indent=2))
    if args.keep:
        print(f"workspaces kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    start = accs("sft_start")
    ctrl = accs("sft_control") if "sft_control" in arms else []
    print(f"sft_start={start[0] if start else float('nan'):.4f} grpo={_mean_sd(grpo)} sft_control={_mean_sd(ctrl)}"
          + (" ideas: " + " ".join(effects) if effects else ""))


if __name__ == "__main__":
    main()
