"""Train and score the nanogpt-cpu catalogue ideas, each applied alone to the baseline.

For every idea (or those named with --ideas) the edit goes through the real path
(parse_reply + apply_edits with the environment's spec); the edited train.py is
written to a fresh workspace next to a symlink to data/, trained with
IDEAFORGE_BUDGET_S/THREADS=1/SEED, and then scored by the hidden evaluate.py run the
way the contract says (a fresh directory holding evaluate.py and eval/val.txt). The
baseline is measured in the same run, and each idea is reported as a delta against it.

    python benchmarks/catalogue_ideas.py                       # baseline + every idea, 60 s each
    python benchmarks/catalogue_ideas.py --ideas rope,muon --parallel 2 --seed 1
    python benchmarks/catalogue_ideas.py --pairs --ideas none  # apply every pair, no training
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
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
from ideaforge.errors import EditRefused

BASELINE = "baseline"


def load_ideas(spec) -> list[dict]:
    return tomllib.loads((spec.root / "catalogue" / "ideas.toml").read_text())["idea"]


def apply_ideas(spec, base: str, ideas: list[dict]) -> str:
    """The baseline train.py with the ideas' edits concatenated and applied in order."""
    edits = [e for idea in ideas for e in parse_reply(idea["edit"])]
    return apply_edits({"train.py": base}, edits, spec).files["train.py"]


def run_one(spec, name: str, source: str, budget: float, seed: int, root: Path) -> dict:
    """Train `source` as train.py for `budget` seconds, then evaluate; the evaluator's result plus timings."""
    job = root / name
    ws, ev, out = job / "ws", job / "ev", job / "out"
    for d in (ws, ev, out):
        d.mkdir(parents=True)
    (ws / "train.py").write_text(source)
    for rel in spec.data_paths:
        (ws / rel).symlink_to(spec.root / rel)
    for rel in spec.hidden_files:
        (ev / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(spec.root / rel, ev / rel)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDEAFORGE_")}
    env.update(IDEAFORGE_OUT=str(out), IDEAFORGE_DATA=str(spec.root / spec.data_paths[0]), IDEAFORGE_SEED=str(seed),
               IDEAFORGE_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.time()
    try:
        tr = subprocess.run([sys.executable, "train.py"], cwd=ws, capture_output=True, text=True,
                            timeout=max(3 * budget, budget + 60), env={**env, "IDEAFORGE_BUDGET_S": str(budget)})
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "train_s": time.time() - t0}
    train_s = time.time() - t0
    (job / "train.log").write_text(tr.stdout + tr.stderr)
    done = re.search(r"done steps=(\d+) tokens=(\d+)", tr.stdout)
    info = {"train_s": train_s, "steps": int(done.group(1)) if done else None,
            "tokens": int(done.group(2)) if done else None}
    if tr.returncode != 0:
        return {"status": "failed", "reason": (tr.stderr.strip().splitlines() or ["?"])[-1], **info}
    result = job / "result.json"
    t1 = time.time()
    ev_proc = subprocess.run([sys.executable, "evaluate.py"], cwd=ev, capture_output=True, text=True, timeout=600,
                             env={**env, "IDEAFORGE_WORKSPACE": str(ws), "IDEAFORGE_RESULT": str(result)})
    info["eval_s"] = time.time() - t1
    if ev_proc.returncode != 0 or not result.is_file():
        return {"status": "eval_failed", "reason": (ev_proc.stderr.strip().splitlines() or ["?"])[-1], **info}
    return {**json.loads(result.read_text()), **info}


def pairs_report(spec, base: str, ideas: list[dict]) -> tuple[int, int]:
    ok = 0
    pairs = list(itertools.combinations(ideas, 2))
    for a, b in pairs:
        try:
            src = apply_ideas(spec, base, [a, b])
            compile(src, "train.py", "exec")
            verdict = "ok"
            ok += 1
        except (EditRefused, SyntaxError) as e:
            verdict = "refused: " + str(e).strip().splitlines()[-1][:100]
        print(f"  {a['id']:>16} + {b['id']:<16} {verdict}")
    print(f"pairs: {ok}/{len(pairs)} apply ({ok / max(1, len(pairs)):.0%})")
    return ok, len(pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=60.0, help="training seconds per run (IDEAFORGE_BUDGET_S)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ideas", default="", help="comma-separated idea ids (default: all; 'none' for no training runs)")
    ap.add_argument("--parallel", type=int, default=1, help="runs at once (each uses one thread)")
    ap.add_argument("--pairs", action="store_true", help="also apply every pair of ideas and report ok/refused (no training)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the baseline run (deltas are then not reported)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary workspaces and print where")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    spec = load_env("nanogpt-cpu")
    base = (spec.root / "train.py").read_text()
    catalogue = load_ideas(spec)
    by_id = {i["id"]: i for i in catalogue}
    if args.ideas == "none":
        chosen = []
    elif args.ideas:
        names = [x.strip() for x in args.ideas.split(",") if x.strip()]
        unknown = [n for n in names if n not in by_id and n != BASELINE]
        if unknown:
            sys.exit(f"unknown idea(s): {', '.join(unknown)}; known: {', '.join(by_id)}")
        chosen = [by_id[n] for n in names if n != BASELINE]
    else:
        chosen = catalogue

    if args.pairs:
        pairs_report(spec, base, catalogue if args.ideas in ("", "none") else chosen)

    jobs: list[tuple[str, str | None, str]] = []  # name, source (None if refused), reason
    if not args.no_baseline and (chosen or args.ideas == BASELINE):
        jobs.append((BASELINE, base, ""))
    for idea in chosen:
        try:
            jobs.append((idea["id"], apply_ideas(spec, base, [idea]), ""))
        except EditRefused as e:
            jobs.append((idea["id"], None, str(e).strip().splitlines()[-1]))
    if not jobs:
        return

    root = Path(tempfile.mkdtemp(prefix="nanogpt-catalogue-"))
    results: dict[str, dict] = {}

    def work(job):
        name, source, reason = job
        if source is None:
            res = {"status": "refused", "reason": reason}
        else:
            res = run_one(spec, name, source, args.budget, args.seed, root)
        results[name] = res
        vl = res.get("metrics", {}).get("val_loss")
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {res['status']}"
              + (f" val_loss={vl:.4f}" if vl is not None else f" ({res.get('reason', '')})")
              + (f" steps={res['steps']}" if res.get("steps") else ""), flush=True)

    print(f"budget={args.budget:g}s seed={args.seed} parallel={args.parallel} runs={len(jobs)} dir={root}", flush=True)
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        list(pool.map(work, jobs))

    base_loss = results.get(BASELINE, {}).get("metrics", {}).get("val_loss")
    print()
    print(f"{'idea':<18} {'status':<10} {'val_loss':>9} {'delta':>8} {'steps':>6} {'tok/s':>7}")
    for name, _, _ in jobs:
        r = results[name]
        vl = r.get("metrics", {}).get("val_loss")
        delta = f"{vl - base_loss:+.4f}" if vl is not None and base_loss is not None and name != BASELINE else ""
        tps = f"{r['tokens'] / r['train_s']:.0f}" if r.get("tokens") and r.get("train_s") else ""
        print(f"{name:<18} {r['status']:<10} {(f'{vl:.4f}' if vl is not None else '-'):>9} {delta:>8} "
              f"{(r.get('steps') or ''):>6} {tps:>7}" + ("" if r["status"] == "ok" else f"  {r.get('reason', '')}"))
    if args.json:
        args.json.write_text(json.dumps({"budget": args.budget, "seed": args.seed, "results": results}, indent=2))
    if args.keep:
        print(f"workspaces kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
