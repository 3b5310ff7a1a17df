"""Integrity of the built-in environments: sha256 digests shipped in the package.

A built-in environment lives inside the installed package, so anything that ever wrote
there (a trial before jails existed, a user's experiment, a bad merge) would change every
later campaign on it: a rewritten evaluator, poisoned training data. `load_env` checks a
built-in against `MANIFEST` before it is used and refuses a tampered one, naming the file.

    python -m ideaforge.envs.manifest --write   # regenerate after an intended change
    python -m ideaforge.envs.manifest           # check the installed tree, exit 1 if tampered
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from ideaforge.errors import EnvError

BUILTIN_DIR = Path(__file__).parent / "builtin"
MANIFEST = Path(__file__).parent / "builtin_manifest.json"
_IGNORED_PARTS = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache"}
_REINSTALL = ("reinstall ideaforge (`pip install --force-reinstall ideaforge`), or in a clone "
              "`git checkout -- src/ideaforge/envs/builtin` (or clone again)")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def digests(env_dir: Path) -> dict[str, str]:
    """rel POSIX path -> sha256 of every file of one environment (caches excluded)."""
    out = {}
    for p in sorted(env_dir.rglob("*")):
        rel = p.relative_to(env_dir)
        if p.is_file() and not any(part in _IGNORED_PARTS for part in rel.parts) and p.suffix != ".pyc":
            out[rel.as_posix()] = _digest(p)
    return out


def build_manifest(root: Path = BUILTIN_DIR) -> dict[str, dict[str, str]]:
    return {d.name: digests(d) for d in sorted(root.iterdir()) if (d / "ideaforge.toml").is_file()}


def differences(env_dir: Path, expected: dict[str, str]) -> list[str]:
    """What differs from the manifest, one line per file; empty when intact."""
    found = digests(env_dir)
    out = [f"{rel}: changed" for rel in expected if rel in found and found[rel] != expected[rel]]
    out += [f"{rel}: missing" for rel in expected if rel not in found]
    out += [f"{rel}: added (not shipped)" for rel in found if rel not in expected]
    return out


def verify_builtin(env_dir: Path) -> None:
    """Raise EnvError naming every changed, missing or added file of a built-in environment."""
    env_dir = Path(env_dir)
    try:
        manifest = json.loads(MANIFEST.read_text())
    except (OSError, ValueError) as e:
        raise EnvError(f"{MANIFEST}: the built-in environments' manifest is unreadable ({e}); {_REINSTALL}") from None
    if env_dir.name not in manifest:
        raise EnvError(f"{env_dir}: not a shipped built-in environment (absent from {MANIFEST.name}); {_REINSTALL}")
    diff = differences(env_dir, manifest[env_dir.name])
    if diff:
        shown = "\n  ".join(diff[:20]) + (f"\n  ... and {len(diff) - 20} more" if len(diff) > 20 else "")
        raise EnvError(f"the built-in environment {env_dir.name} at {env_dir} was modified since it was installed; "
                       f"refusing to run it, since its scores would not be comparable:\n  {shown}\n"
                       f"To repair it, {_REINSTALL}. To experiment with a changed copy, copy the directory "
                       f"elsewhere and pass its path instead of the name.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--write"]:
        MANIFEST.write_text(json.dumps(build_manifest(), indent=1, sort_keys=True) + "\n")
        print(f"wrote {MANIFEST}")
        return 0
    bad = 0
    for d in sorted(BUILTIN_DIR.iterdir()):
        if (d / "ideaforge.toml").is_file():
            try:
                verify_builtin(d)
                print(f"{d.name}: intact")
            except EnvError as e:
                print(e)
                bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
