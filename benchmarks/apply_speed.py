"""CPU time of applying one search/replace block to a 2,000-line file: a miss and hits.

    python benchmarks/apply_speed.py [--lines 2000] [--repeat 7] [--no-reference]

A miss is the costly case: no exact or whitespace match, so the fuzzy matcher looks
for the nearest place to report. The file is generated (seeded) Python that reads
like training code, so that character statistics are realistic; the missing block
is four lines of a real training loop that the file does not contain. Times are
CPU seconds (time.process_time), the median of --repeat runs, so a busy machine
changes them little. The reference line times, side by side, the matcher this one
replaced: difflib run on every window (what a miss cost before edit/windows.py).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from difflib import SequenceMatcher

from ideaforge.edit.apply import apply_edits
from ideaforge.edit.parse import FileEdit, Hunk
from ideaforge.errors import EditRefused

_WORDS = ("loss", "logits", "grad", "step", "lr", "batch", "model", "optimizer", "scale", "weight", "bias", "hidden",
          "tokens", "mask", "scores", "attn", "norm", "eps", "decay", "warmup", "epoch", "params", "state", "out")
_CALLS = ("torch.zeros", "torch.ones_like", "F.softmax", "F.gelu", "math.sqrt", "min", "max", "len", "sum",
          "torch.matmul", "nn.functional.dropout", "np.clip", "float", "int")

# Four lines of a training step that the generated file does not contain: the miss.
MISSING = [
    "    xb, yb = get_batch(train_data, device)",
    "    logits, loss = model(xb, yb)",
    "    optimizer.zero_grad(set_to_none=True)",
    "    loss.backward()",
]


def synthetic_source(n_lines: int = 2000, seed: int = 0) -> str:
    """Deterministic Python-looking code: functions of assignments, calls, branches, comments."""
    rng = random.Random(seed)
    out: list[str] = []
    k = 0
    while len(out) < n_lines:
        k += 1
        name = f"{rng.choice(_WORDS)}_{rng.choice(_WORDS)}_{k}"
        args = ", ".join(rng.sample(_WORDS, rng.randint(1, 3)))
        out.append(f"def {name}({args}):")
        out.append(f'    """Compute the {rng.choice(_WORDS)} of {rng.choice(_WORDS)} for block {k}."""')
        for _ in range(rng.randint(4, 14)):
            var, a, b = rng.choice(_WORDS), rng.choice(_WORDS), rng.choice(_WORDS)
            r = rng.random()
            if r < 0.5:
                out.append(f"    {var} = {rng.choice(_CALLS)}({a}, {b}) * {rng.randint(1, 99) / 10}")
            elif r < 0.65:
                out.append(f"    # {a} is rescaled by {b} here (step {rng.randint(1, 500)})")
            elif r < 0.8:
                out.append(f"    if {a} > {rng.randint(0, 9)}:")
                out.append(f"        {var} = {b} + {rng.randint(1, 9)}")
            else:
                out.append(f"    {var}[{a}] += {b}.{rng.choice(_WORDS)}")
        out.append(f"    return {rng.choice(_WORDS)}")
        out.append("")
        out.append("")
    return "\n".join(out[:n_lines]) + "\n"


def cpu_time(fn, repeat: int) -> float:
    """Median CPU seconds of `fn()` over `repeat` runs."""
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def _apply(files: dict[str, str], old: list[str], new: list[str]) -> str:
    try:
        res = apply_edits(files, [FileEdit("big.py", "modify", [Hunk(old, new)], source="search_replace")])
        return f"applied ({res.changes['big.py'].methods[0]})"
    except EditRefused as e:
        return str(e)


def score_every_window(lines: list[str], old: list[str]) -> tuple[float, int, int]:
    """The replaced matcher's search: difflib on every window (sizes as edit.windows.SIZES); the best one."""
    stripped = [x.strip() for x in lines]
    target = "\n".join(x.strip() for x in old)
    sm = SequenceMatcher(None, autojunk=False)
    sm.set_seq2(target)
    scored = []
    for k in (0, -1, 1, -2, 2):
        size = len(old) + k
        for i in range(0, len(lines) - size + 1 if size > 0 else 0):
            window = "\n".join(stripped[i : i + size])
            sm.set_seq1(window)
            if sm.quick_ratio() * (len(target) + len(window)) < len(target):
                continue
            found = sum(b.size for b in sm.get_matching_blocks())
            scored.append((round(found / max(1, len(target)), 3), i, i + size))
    return min(scored, key=lambda r: (-r[0], abs(r[2] - r[1] - len(old)), r[1]))


def cases(n_lines: int) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (SEARCH lines, REPLACE lines) against synthetic_source(n_lines)."""
    lines = synthetic_source(n_lines).splitlines()
    mid = n_lines // 2
    while not lines[mid].startswith("    ") or not lines[mid + 3].startswith("    "):
        mid += 1
    exact = lines[mid : mid + 4]
    drifted = [exact[0][:-1] + "7"] + exact[1:]  # a context line the model misremembers by one character
    return {
        "miss": (MISSING, MISSING[:3] + ["    loss.backward(retain_graph=False)"]),
        "exact hit": (exact, exact[:3] + ["    pass"]),
        "fuzzy hit": (drifted, drifted[:3] + ["    pass"]),
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-reference", action="store_true", help="skip timing the replaced every-window matcher")
    args = ap.parse_args(argv)
    files = {"big.py": synthetic_source(args.lines)}
    print(f"file: {args.lines} lines, {len(files['big.py'])} characters; CPU seconds, median of {args.repeat}")
    for name, (old, new) in cases(args.lines).items():
        outcome = _apply(files, old, new)
        t = cpu_time(lambda: _apply(files, old, new), args.repeat)
        said = next((ln for ln in outcome.splitlines() if "match" in ln), outcome.splitlines()[0])
        print(f"{name:10s} {t * 1000:9.1f} ms   {said[:100]}")
    if not args.no_reference:
        lines = files["big.py"].splitlines()
        old = cases(args.lines)["miss"][0]
        best = score_every_window(lines, old)
        t = cpu_time(lambda: score_every_window(lines, old), max(1, min(3, args.repeat)))
        print(f"{'reference':10s} {t * 1000:9.1f} ms   a miss scored on every window (the replaced matcher): "
              f"lines {best[1] + 1}-{best[2]}, similarity {best[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
