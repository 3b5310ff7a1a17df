"""Controller cost against campaign size: de-duplication, `status` and `report` on N ideas.

    python benchmarks/scale.py --ideas 2000            # build a synthetic campaign, time all three
    python benchmarks/scale.py --ideas 10000 --no-logs # dedup and status only need the database
    python benchmarks/scale.py --ideas 500 --old-dedup # also time the campaign rescan it replaced

The campaign is synthetic but shaped like a model-driven one: ideas with lineage and
80-200-word descriptions, an implementation per idea (a 40-line diff, the edited file's
12 KB content, 1-3 attempts with errors), a candidate trial per working implementation
with a 500-point learning curve, confirm and baseline seeds, and trial logs on disk.

Each measurement runs in a fresh process and reports that process's CPU seconds
(user + system: steadier than wall time on a shared machine) and its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
WORDS = """learning rate warmup cosine decay schedule linear rmsnorm layernorm rotary embedding attention head
dropout weight tying residual scaling gradient clipping batch size sequence length tokenizer vocabulary optimizer
adam adamw lion momentum beta nesterov muon orthogonal initialisation xavier kaiming gelu swiglu relu squared
activation mlp width depth layer norm pre post parallel block skip connection qk normalisation temperature
label smoothing z-loss logit softcap ema averaging checkpoint curriculum data ordering shuffle packing mask
causal sliding window flash kernel fused bias precision bfloat16 float32 loss reward advantage baseline policy
kl penalty entropy bonus rollout group sampling greedy nucleus top-k reference model value critic clipping ratio
trust region variance reduction whitening normalise advantage per-token sequence-level reward-shaping format
answer correctness partial credit length penalty repetition stop token prompt template few-shot chain thought
""".split()
TRAIN_PY = "".join(f"x_{i} = {i}  # a line of the training script, about sixty characters long\n"
                   for i in range(200))  # ~12 KB: an implementation keeps the edited file whole


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _diff(rng: random.Random) -> str:
    lines = ["--- a/train.py", "+++ b/train.py", "@@ -10,20 +10,20 @@"]
    for i in range(40):
        kind = rng.choice(" +-")
        lines.append(f"{kind}    value_{i} = compute_{rng.randrange(1000)}(x, y)  # {_text(rng, 3)}")
    return "\n".join(lines) + "\n"


def build(root: Path, n: int, logs: bool, seed: int = 0) -> None:
    """A campaign directory with `n` ideas written straight into a fresh store (one transaction)."""
    from ideaforge.store import Store

    rng = random.Random(seed)
    store = Store.create_or_open(root)
    store.env_dir.mkdir(exist_ok=True)
    (store.env_dir / "ideaforge.toml").write_text(
        '[env]\nname = "synthetic"\ndescription = "A synthetic campaign for scale tests."\n'
        '[run]\nbudget_s = 60\n[metric]\nname = "val_loss"\ngoal = "min"\n[resources]\ncpus = 1\n')
    now = time.time()
    per_epoch = max(1, n // 10)
    trials: list[tuple] = []  # (implementation_id, role, seed, metric, curve)
    with store.tx():
        store.set_meta("env_name", "synthetic")
        store.set_meta("config", {"command": "run", "search": {"mode": "evolve", "ideas": per_epoch, "epochs": 10}})
        for s in range(3):
            trials.append((None, "baseline", s, 3.30 + rng.gauss(0, 0.01)))
        for i in range(1, n + 1):
            epoch = (i - 1) // per_epoch
            kind = "initial" if epoch == 0 else rng.choice(("exploit", "explore"))
            parents = sorted(rng.sample(range(1, i), min(2, i - 1))) if kind == "exploit" and i > 2 else []
            ok = rng.random() < 0.85
            store.add_idea(epoch, kind, _text(rng, rng.randrange(4, 9)), _text(rng, rng.randrange(80, 200)),
                           _text(rng, 20), parents, {"model": "synthetic", "prompt": kind})
            attempts = [{"sample": a, "round": 0, "stage": "apply" if a else "ok", "seconds": 12.5,
                         "error": None if a == 0 else _text(rng, 80)} for a in range(rng.randrange(1, 4))]
            impl = store.add_implementation(i, ok, _diff(rng) if ok else "", {"train.py": TRAIN_PY} if ok else {},
                                            attempts, None if ok else _text(rng, 60))
            store.set_idea_status(i, "implemented" if ok else "implement_failed")
            if ok:
                trials.append((impl, "candidate", 0, 3.30 + rng.gauss(0, 0.05)))
        best = sorted((t for t in trials if t[1] == "candidate"), key=lambda t: t[3])[:3]
        for impl, _, _, m in best:
            trials += [(impl, "confirm", s, m + rng.gauss(0, 0.01)) for s in (1, 2)]
        for impl, role, s, metric in trials:
            outcome = "evaluated" if rng.random() < 0.9 or role == "baseline" else rng.choice(("failed", "timeout"))
            curve = [{"step": k * 10.0, "loss": round(6.0 / (1 + k), 4), "lr": 3e-4} for k in range(500)]
            tid = store.add_trial(role, s, 60.0, impl)
            store.execute("UPDATE trials SET status='done', outcome=?, metric=?, curve=?, train_s=60, eval_s=2, "
                          "started=?, ended=? WHERE id=?",
                          (outcome, metric if outcome == "evaluated" else None, json.dumps(curve), now, now, tid))
    store.set_meta("epochs_done", 10)
    if logs:
        for (tid,) in store.execute("SELECT id FROM trials").fetchall():
            tdir = store.trial_dir(tid)
            tdir.mkdir(parents=True)
            (tdir / "train.out").write_text("".join(f"METRIC step={k} loss={6 / (1 + k):.4f}\n" for k in range(800)))
            (tdir / "train.err").write_text("warning: a deprecation\n" * 40)
    store.close()


# -- measurements, each run in a fresh process --------------------------------------------------
def measure(what: str, root: Path, n_new: int) -> dict:
    t0 = time.process_time()
    info: dict = {}
    if what == "dedup":
        from ideaforge.ideate.dedup import DedupIndex
        from ideaforge.ideate.types import Idea
        from ideaforge.store import Store

        store = Store.open_readonly(root)
        texts = [f"{r['title']} {r['description']}" for r in store.execute("SELECT title, description FROM ideas")]
        t_load = time.process_time()
        index = DedupIndex(texts)
        t_built = time.process_time()
        rng = random.Random(1)
        new = [Idea(_text(rng, 6), _text(rng, 40)) for _ in range(n_new)]
        kept = index.keep(new)
        info = {"load_s": t_load - t0, "index_s": t_built - t_load, "check_s": time.process_time() - t_built,
                "kept": len(kept), "of": n_new}
    elif what == "old-dedup":
        from ideaforge.ideate.dedup import is_duplicate
        from ideaforge.ideate.types import Idea
        from ideaforge.store import Store

        store = Store.open_readonly(root)
        texts = [f"{r['title']} {r['description']}" for r in store.execute("SELECT title, description FROM ideas")]
        rng = random.Random(1)
        new = [Idea(_text(rng, 6), _text(rng, 40)) for _ in range(n_new)]
        t1 = time.process_time()
        kept: list = []
        for idea in new:  # what dedup() did before the index: every idea against the whole campaign
            if not is_duplicate(idea, texts + kept):
                kept.append(idea)
        info = {"check_s": time.process_time() - t1, "kept": len(kept), "of": n_new}
    elif what == "status":
        from ideaforge.report.text import status_lines
        from ideaforge.store import Store

        store = Store.open_readonly(root)
        lines = status_lines(store, "synthetic", "val_loss", "min", 1, 0)
        info = {"lines": len(lines)}
    elif what == "report":
        from ideaforge.report import write_report

        out = write_report(root)
        info = {"bytes": out.stat().st_size, "files": sum(1 for _ in (root / "report").rglob("*"))
                if (root / "report").is_dir() else 0}
    info["cpu_s"] = time.process_time() - t0
    info["peak_mb"] = _peak_mb()
    return info


def _peak_mb() -> float:
    with open("/proc/self/status") as f:  # VmHWM: this process image's peak (ru_maxrss keeps the parent's)
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def run_measure(what: str, root: Path, n_new: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, __file__, "--measure", what, "--dir", str(root), "--new", str(n_new)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{what} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ideas", type=int, default=2000, help="ideas in the synthetic campaign")
    ap.add_argument("--new", type=int, default=8, help="new ideas checked against the campaign")
    ap.add_argument("--dir", help="campaign directory (default: a temporary one, removed after)")
    ap.add_argument("--no-logs", action="store_true", help="write no trial logs (and skip the report)")
    ap.add_argument("--old-dedup", action="store_true", help="also time the old rescan (quadratic: keep N small)")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, Path(args.dir), args.new)))
        return
    with tempfile.TemporaryDirectory(prefix="ideaforge-scale-") as tmp:
        root = Path(args.dir) if args.dir else Path(tmp) / "campaign"
        if not (root / "campaign.db").exists():
            t0 = time.process_time()
            build(root, args.ideas, logs=not args.no_logs)
            print(f"built {args.ideas} ideas in {root} ({time.process_time() - t0:.1f} CPU s)")
        d = run_measure("dedup", root, args.new)
        print(f"dedup:  {d['of']} new ideas against {args.ideas}: {d['check_s']:.3f} CPU s "
              f"(index built once per controller in {d['index_s']:.2f} s, ideas read in {d['load_s']:.2f} s; "
              f"{d['kept']} kept), peak {d['peak_mb']:.0f} MB")
        if args.old_dedup:
            o = run_measure("old-dedup", root, args.new)
            print(f"old dedup (rescan): {o['check_s']:.2f} CPU s for the same ideas ({o['kept']} kept)")
        s = run_measure("status", root, args.new)
        print(f"status: {s['cpu_s']:.2f} CPU s, peak {s['peak_mb']:.0f} MB")
        if not args.no_logs:
            r = run_measure("report", root, args.new)
            print(f"report: {r['cpu_s']:.2f} CPU s, page {r['bytes'] / 1e6:.2f} MB"
                  + (f" + {r['files']} per-idea files" if r["files"] else "") + f", peak {r['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
