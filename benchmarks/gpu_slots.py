"""Check GPU slots on a machine with NVIDIA GPUs: detection, pinning, exclusive leases.

    python benchmarks/gpu_slots.py [--trials 4] [--gpus-per-trial 1]

Runs trials of a small GPU environment through the local executor with the GPUs that
`nvidia-smi` lists. Each trial trains a little MLP on its GPU and records which
device it saw; the script checks that every trial saw exactly its leased GPUs
(CUDA_VISIBLE_DEVICES), that overlapping trials never shared one, and prints the
per-trial time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
from pathlib import Path

from ideaforge.execute.base import detect_gpus
from ideaforge.envs import load_env
from ideaforge.execute.local import LocalExecutor
from ideaforge.search.campaign import Campaign, TrialRunner

TRAIN = """
import json, os, time
import torch
t0 = time.time()
assert torch.cuda.is_available(), "no CUDA device visible"
dev = torch.device("cuda")
torch.manual_seed(int(os.environ["IDEAFORGE_SEED"]))
x = torch.randn(4096, 256, device=dev)
y = (x[:, :1] > 0).float()
model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 1)).to(dev)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
while time.time() - t0 < float(os.environ["IDEAFORGE_BUDGET_S"]) - 1:
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
torch.cuda.synchronize()
json.dump({"loss": loss.item(), "visible": os.environ["CUDA_VISIBLE_DEVICES"], "count": torch.cuda.device_count(),
           "name": torch.cuda.get_device_name(0)}, open(os.path.join(os.environ["IDEAFORGE_OUT"], "ckpt.json"), "w"))
"""
EVALUATE = """
import json, os
ck = json.load(open(os.path.join(os.environ["IDEAFORGE_OUT"], "ckpt.json")))
json.dump({"status": "ok", "metrics": {"loss": ck["loss"], "count": ck["count"]}}, open(os.environ["IDEAFORGE_RESULT"], "w"))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--gpus-per-trial", type=int, default=1)
    ap.add_argument("--budget", type=float, default=8)
    args = ap.parse_args()
    gpus = detect_gpus()
    print(f"nvidia-smi lists {len(gpus)} GPU(s): {gpus}")
    if len(gpus) < args.gpus_per_trial:
        print("not enough GPUs for one trial", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        env = Path(tmp) / "env"
        env.mkdir()
        (env / "train.py").write_text(textwrap.dedent(TRAIN))
        (env / "evaluate.py").write_text(textwrap.dedent(EVALUATE))
        (env / "ideaforge.toml").write_text(textwrap.dedent(f"""
            [env]
            name = "gpu-mlp"
            description = "A tiny GPU training job."
            [files]
            editable = ["train.py"]
            hidden = ["evaluate.py"]
            [run]
            command = "python train.py"
            budget_s = {args.budget}
            [evaluate]
            command = "python evaluate.py"
            [metric]
            name = "loss"
            goal = "min"
            [resources]
            cpus = 1
            gpus = {args.gpus_per_trial}
        """))
        camp = Campaign.create(Path(tmp) / "camp", load_env(env))
        ids = [camp.store.add_trial("baseline", seed=i, budget_s=args.budget) for i in range(args.trials)]
        with LocalExecutor(slots=args.trials, gpus=gpus) as ex:
            TrialRunner(camp, ex).drain()
        spans, ok = [], True
        for tid in ids:
            t = camp.store.trial(tid)
            d = camp.store.trial_dir(tid)
            if t["outcome"] != "evaluated":
                print(f"trial {tid}: {t['outcome']}: {t['reason']}")
                ok = False
                continue
            ck = json.loads((d / "out" / "ckpt.json").read_text())
            lease = json.loads((d / "worker.json").read_text())["gpus"]
            rec = json.loads((d / "record.json").read_text())
            seen_ok = ck["visible"].split(",") == lease and ck["count"] == len(lease)
            ok &= seen_ok
            spans.append((rec["started_at"], rec["ended_at"], set(lease)))
            print(f"trial {tid}: lease {lease}, saw CUDA_VISIBLE_DEVICES={ck['visible']} ({ck['count']} x {ck['name']}), "
                  f"loss {t['metric']:.4f}, train {t['train_s']:.1f} s  {'ok' if seen_ok else 'MISMATCH'}")
        for a in spans:
            for b in spans:
                if a is not b and a[0] < b[1] and b[0] < a[1] and a[2] & b[2]:
                    print(f"overlapping trials shared GPU(s) {a[2] & b[2]}")
                    ok = False
        print("GPU slots:", "ok" if ok else "FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
