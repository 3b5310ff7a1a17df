"""CPU seconds of one nanogpt-cpu evaluation: the split evaluator (scorer + model server) against
the single-process evaluator it replaced, side by side on the same checkpoint.

    python benchmarks/split_eval_cpu.py [--repeats 2] [--budget 8] [--old-rev 4d2d1bf]

Trains the baseline train.py for --budget seconds into a temporary directory, then alternates
old and new evaluations, printing user+system CPU seconds of each process tree (measured with
RUSAGE_CHILDREN) and the val_loss each recorded. CPU seconds, not wall time: the machine may
be shared. The old evaluator is taken from git (--old-rev), run as the harness ran it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ideaforge.envs import load_env
from ideaforge.envs.protocol import run_split

REPO = Path(__file__).resolve().parent.parent


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--budget", type=float, default=8.0)
    ap.add_argument("--old-rev", default="4d2d1bf", help="git revision holding the single-process evaluate.py")
    args = ap.parse_args()
    env = load_env("nanogpt-cpu")
    root = Path(tempfile.mkdtemp(prefix="split-eval-"))
    ws, ev, out = root / "ws", root / "ev", root / "out"
    for d in (ws, ev, out):
        d.mkdir()
    shutil.copy(env.root / "train.py", ws)
    (ws / "data").symlink_to(env.root / "data")
    for rel in env.hidden_files:
        (ev / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(env.root / rel, ev / rel)
    old = subprocess.run(["git", "show", f"{args.old_rev}:src/ideaforge/envs/builtin/nanogpt-cpu/evaluate.py"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    (ev / "evaluate_old.py").write_text(old)
    base = {k: v for k, v in os.environ.items() if not k.startswith("IDEAFORGE_")}
    base.update(IDEAFORGE_OUT=str(out), IDEAFORGE_DATA=str(env.root / "data"), IDEAFORGE_SEED="0",
                IDEAFORGE_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", IDEAFORGE_WORKSPACE=str(ws))
    subprocess.run([sys.executable, "train.py"], cwd=ws, env=dict(base, IDEAFORGE_BUDGET_S=str(args.budget)),
                   check=True, capture_output=True)
    for i in range(args.repeats):
        for kind in ("old", "split"):
            res = root / f"result-{kind}-{i}.json"
            e = dict(base, IDEAFORGE_RESULT=str(res))
            c0 = cpu_s()
            if kind == "old":
                subprocess.run([sys.executable, "evaluate_old.py"], cwd=ev, env=e, check=True, capture_output=True)
            else:
                rc = run_split(env.evaluate_serve, f"{sys.executable} evaluate.py", serve_cwd=ws, scorer_cwd=ev, env=e)
                assert rc == 0
            r = json.loads(res.read_text())
            print(f"{kind:5s} cpu_s={cpu_s() - c0:6.2f} status={r['status']} val_loss={r['metrics']['val_loss']:.6f}")
    shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
