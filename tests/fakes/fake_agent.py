"""A fake headless coding agent for `--implementer agent:CMD` tests.

    python fake_agent.py --mode MODE [--target PATH] PROMPT

It reads the prompt from its last argument (as ideaforge passes it), works on the files in
its current directory, prints what it saw on stderr (the variable names of its environment,
the prompt's first line) and, like Claude Code's `--output-format json`, one JSON result
line with its cost on stdout. Modes:

    edit      raise the toy environment's score in train.py (a correct edit)
    hang      print a line, then never finish (and hold a child, named by --target, that never finishes either)
    hidden    write evaluate.py (a hidden path) beside a correct train.py edit; with --target,
              first try to overwrite that host file (outside its copy) too
    visible   change helper.py (read-only)
    symlink   make train.py a symbolic link to a new file
    nothing   change nothing and fail
It uses only the standard library: it runs inside the jail with no test helpers around.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

OLD = '"score": 1.0 + 0.01 * seed'
NEW = '"score": 2.0 + 0.01 * seed'


def edit_train() -> None:
    p = Path("train.py")
    text = p.read_text()
    if OLD not in text:
        raise SystemExit("fake agent: the line to change is not in train.py")
    p.write_text(text.replace(OLD, NEW))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", required=True)
    ap.add_argument("--target")
    ap.add_argument("prompt")
    a = ap.parse_args()
    print("env: " + " ".join(sorted(os.environ)), file=sys.stderr)
    print("prompt: " + a.prompt.splitlines()[0], file=sys.stderr)
    print("files: " + " ".join(sorted(str(p) for p in Path(".").rglob("*"))), file=sys.stderr, flush=True)
    if a.mode == "hang":
        print("thinking ...", flush=True)
        subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(1)", a.target or "child"])
        while True:
            time.sleep(1)
    if a.mode == "edit":
        edit_train()
    elif a.mode == "hidden":
        if a.target:
            try:
                Path(a.target).write_text("# the agent was here\n")
                print(f"wrote {a.target}", file=sys.stderr)
            except OSError as e:
                print(f"could not write {a.target}: {e}", file=sys.stderr)
        edit_train()
        Path("evaluate.py").write_text("print('always perfect')\n")
    elif a.mode == "visible":
        os.chmod("helper.py", 0o644)  # the copy marks it read-only; a determined agent gets past that
        Path("helper.py").write_text("VALUE = 2\n")
    elif a.mode == "symlink":
        edit_train()
        Path("real_train.py").write_text(Path("train.py").read_text())
        Path("train.py").unlink()
        os.symlink("real_train.py", "train.py")
    elif a.mode == "nothing":
        print(json.dumps({"type": "result", "is_error": True, "result": "I could not do it", "total_cost_usd": 0.001,
                          "num_turns": 1}))
        return 1
    print(json.dumps({"type": "result", "is_error": False, "result": f"done ({a.mode})", "total_cost_usd": 0.0123,
                      "num_turns": 3, "usage": {"input_tokens": 1200, "output_tokens": 345}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
