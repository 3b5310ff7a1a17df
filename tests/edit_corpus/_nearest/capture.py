"""Record what the matcher says for many hunks, to hold a faster matcher to exactly the same answers.

    PYTHONPATH=src python tests/edit_corpus/_nearest/capture.py

Run once, at commit 80c3dd8 (the difflib-over-every-window matcher, then in edit/apply.py), to write
cases.json: for each hunk, where `locate` placed it and how, or its refusal message
word for word. tests/test_edits.py replays the cases against the current matcher.
The hunks are the corpus replies' own plus seeded mutations of real windows (drifted
context, drifted removed lines, lines dropped or added, foreign and random blocks,
a duplicated region for two-place ties) on four files, one of them 2,000 lines.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))
import apply_speed  # noqa: E402

from ideaforge.edit.match import MatchFailure, locate  # noqa: E402
from ideaforge.edit.parse import Hunk, parse_reply  # noqa: E402
from ideaforge.errors import EditRefused  # noqa: E402

ENV = ROOT / "tests" / "edit_corpus" / "_env"
NANOGPT = ROOT / "src" / "ideaforge" / "envs" / "builtin" / "nanogpt-cpu" / "train.py"


def outcome(lines: list[str], old: list[str], new: list[str], hint: int | None) -> dict:
    try:
        loc = locate(lines, Hunk(old, new, hint), hint)
    except MatchFailure as f:
        return {"refused": str(f)}
    return {"start": loc.start, "end": loc.end, "method": loc.method, "reindent": loc.reindent}


def mutate(line: str, rate: float, rng: random.Random) -> str:
    chars = list(line)
    for i, c in enumerate(chars):
        if not c.isspace() and rng.random() < rate:
            chars[i] = rng.choice(string.ascii_lowercase)
    out = "".join(chars)
    return out if out != line else line + " x"


def synthetic_hunks(lines: list[str], others: list[str], n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    nonblank = [i for i, x in enumerate(lines) if x.strip()]
    for k in range(n):
        size = rng.randint(2, 6)
        s = rng.choice(nonblank[: len(nonblank) - size])
        old = list(lines[s : s + size])
        kind = ("context", "context", "removed", "drop", "insert", "foreign", "random", "exact")[k % 8]
        j = rng.randrange(size)  # the line the hunk replaces
        if kind == "context":
            m = (j + 1) % size
            old[m] = mutate(old[m], rng.choice((0.03, 0.1, 0.2, 0.4)), rng)
        elif kind == "removed":
            old[j] = mutate(old[j], rng.choice((0.03, 0.1)), rng)
        elif kind == "drop" and size > 2:
            del old[(j + 1) % size]
            j = min(j, len(old) - 1)
        elif kind == "insert":
            old.insert(rng.randrange(size + 1), "    print('debug')")
            j = rng.randrange(len(old))
        elif kind == "foreign":
            f = rng.randrange(len(others) - size)
            old = list(others[f : f + size])
        elif kind == "random":
            old = ["".join(rng.choice(string.ascii_letters + " ()=") for _ in range(rng.randint(10, 50))) for _ in range(size)]
        new = old[:j] + ["    value = 1  # changed"] + old[j + 1 :] if rng.random() < 0.8 else old + ["    extra = 2"]
        hint = s + 1 if rng.random() < 0.3 else None
        out.append({"old": old, "new": new, "hint": hint, "kind": kind})
    return out


def main() -> None:
    env_train = (ENV / "train.py").read_text()
    layers = (ENV / "model" / "layers.py").read_text()
    nanogpt = NANOGPT.read_text()
    tl = env_train.splitlines()
    dup = "\n".join(tl + ["", "# a second copy, slightly changed"] + [x.replace("0.1", "0.2") for x in tl[16:60]]) + "\n"
    files = {"env_train": env_train, "env_layers": layers, "nanogpt_train": nanogpt, "dup": dup}
    synthetic = apply_speed.synthetic_source(2000)
    cases = []
    # the corpus replies' own hunks against the corpus files
    for case in sorted(p for p in (ENV.parent).iterdir() if p.is_dir() and not p.name.startswith("_")):
        try:
            edits = parse_reply((case / "reply.txt").read_bytes().decode())
        except EditRefused:
            continue
        for e in edits:
            key = {"train.py": "env_train", "model/layers.py": "env_layers"}.get(e.path)
            for h in e.hunks or []:
                if key and h.old_lines:
                    cases.append({"file": key, "old": h.old_lines, "new": h.new_lines, "hint": h.old_start_hint, "kind": "corpus " + case.name})
    for n, (key, text) in enumerate(files.items()):
        others = nanogpt if key != "nanogpt_train" else env_train
        for c in synthetic_hunks(text.splitlines(), others.splitlines(), 40, seed=n):
            cases.append({"file": key, **c})
    for c in synthetic_hunks(synthetic.splitlines(), nanogpt.splitlines(), 16, seed=99):
        cases.append({"file": "synthetic", **c})
    for name, (old, new) in apply_speed.cases(2000).items():
        cases.append({"file": "synthetic", "old": old, "new": new, "hint": None, "kind": "speed " + name})
    texts = dict(files, synthetic=synthetic)
    for c in cases:
        c["want"] = outcome(texts[c["file"]].splitlines(), c["old"], c["new"], c["hint"])
    doc = {
        "note": "made by capture.py at commit 80c3dd8; synthetic = benchmarks/apply_speed.synthetic_source(2000)",
        "files": files,
        "synthetic_sha256": hashlib.sha256(synthetic.encode()).hexdigest(),
        "cases": cases,
    }
    (Path(__file__).parent / "cases.json").write_text(json.dumps(doc, indent=1) + "\n")
    kinds = {}
    for c in cases:
        w = c["want"]
        k = "refused: nearest" if "nearest" in w.get("refused", "") else ("refused: " + w["refused"][:30] if "refused" in w else w["method"].split()[0])
        kinds[k] = kinds.get(k, 0) + 1
    print(len(cases), "cases", json.dumps(kinds, indent=1))


if __name__ == "__main__":
    main()
