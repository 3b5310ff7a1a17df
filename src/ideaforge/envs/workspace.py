"""Environment snapshots, trial workspaces and the cached prepare step.

A campaign snapshots the environment's editable, visible and hidden files once, so
that a user editing their environment mid-campaign cannot change what later trials
run against, and so that hidden files come from a copy no trial workspace contains.
Data is never copied: workspaces link to it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ideaforge.envs.spec import SPEC_NAME, EnvSpec
from ideaforge.errors import EditRefused, EnvError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def snapshot_env(spec: EnvSpec, dest: Path) -> list[tuple[str, str, str, int]]:
    """Copy spec + editable/visible/hidden files into dest; return (path, cls, sha256, size) rows."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(spec.spec_path, dest / SPEC_NAME)
    rows = []
    for cls in ("editable", "visible", "hidden"):
        for rel in spec.files[cls]:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(spec.root / rel, target)
            rows.append((rel, cls, sha256_file(target), target.stat().st_size))
    return rows


def read_files(spec: EnvSpec, root: Path | None = None, classes=("editable", "visible")) -> dict[str, str]:
    """The text of the files a model may see (from `root`, default the environment itself)."""
    base = root or spec.root
    out: dict[str, str] = {}
    for cls in classes:
        for rel in spec.files[cls]:
            try:
                out[rel] = (base / rel).read_text()
            except UnicodeDecodeError:
                continue  # binary files are copied into workspaces but never shown
    return out


def build_workspace(spec: EnvSpec, source: Path, dest: Path, changes: dict[str, str | None] | None = None) -> None:
    """Lay out a training workspace: editable + visible files from `source`, `changes` applied,
    data linked (absolute symlinks into the environment), hidden files absent.

    This is the last gate before anything runs: a change to a path that is not editable
    raises EditRefused, so such a trial never starts.
    """
    changes = changes or {}
    for rel in changes:
        cls = spec.classify(rel)
        if cls != "editable":
            what = f"is {cls}" if cls else "lies outside every editable path"
            raise EditRefused(f"{rel} {what}; only editable files may change: {', '.join(spec.editable_files)}")
    dest.mkdir(parents=True, exist_ok=True)
    for rel in spec.editable_files + spec.visible_files:
        if rel in changes:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, target)
    for rel, content in changes.items():
        if content is None:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    for rel in spec.data_paths:
        link = dest / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to((spec.root / rel).resolve())


# -- the one-time prepare step -------------------------------------------------------
def cache_root() -> Path:
    return Path(os.environ.get("IDEAFORGE_CACHE", Path.home() / ".cache" / "ideaforge")).expanduser()


def prepare_key(spec: EnvSpec) -> str:
    """What the prepared output depends on: the spec and the non-editable files (not train code)."""
    h = hashlib.sha256(spec.spec_path.read_bytes())
    if spec.profile is not None:  # a profile's variables may change what prepare makes (e.g. miniature data)
        h.update(f"profile:{sorted(spec.env.items())}\0".encode())
    for cls in ("visible", "hidden"):
        for rel in spec.files[cls]:
            h.update(f"{cls}:{rel}\0".encode())
            h.update((spec.root / rel).read_bytes())
    return h.hexdigest()[:16]


def ensure_prepared(spec: EnvSpec, log=print) -> Path | None:
    """Run the environment's [prepare] command once per machine; return its cached output dir."""
    if not spec.prepare_command:
        return None
    root = cache_root() / "prepared"
    final = root / f"{spec.name}-{prepare_key(spec)}"
    if (final / ".complete").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second campaign waits for the first one's prepare
        if (final / ".complete").exists():
            return final
        log(f"preparing {spec.name} (one time, cached in {final}) ...")
        with tempfile.TemporaryDirectory(prefix="prepare-", dir=root) as tmp:
            work, out = Path(tmp) / "work", Path(tmp) / "out"
            snapshot_env(spec, work)
            for rel in spec.data_paths:
                (work / rel).parent.mkdir(parents=True, exist_ok=True)
                (work / rel).symlink_to((spec.root / rel).resolve())
            out.mkdir()
            env = dict(os.environ, **spec.env, IDEAFORGE_PREPARED=str(out), IDEAFORGE_THREADS=str(spec.cpus))
            env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
            rc, lines = _run_logged(spec.prepare_command, work, env, spec.prepare_timeout_s, log)
            if rc is None:
                raise EnvError(f"{spec.name}: prepare step `{spec.prepare_command}` exceeded {spec.prepare_timeout_s:.0f} s")
            if rc != 0:
                tail = "\n".join(lines[-20:])
                raise EnvError(f"{spec.name}: prepare step `{spec.prepare_command}` exited {rc}:\n{tail}")
            (out / ".complete").write_text("ok\n")
            if final.exists():
                shutil.rmtree(final)
            out.rename(final)
    return final


def _run_logged(cmd: str, cwd: Path, env: dict[str, str], timeout_s: float, log) -> tuple[int | None, list[str]]:
    """Run a prepare command, passing each output line to `log` as it comes (downloads show progress).

    Returns (exit code, or None when killed at the timeout with its process group; all lines).
    """
    import signal
    import threading

    proc = subprocess.Popen(cmd, shell=True, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True)
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    timer = threading.Timer(timeout_s, kill)
    timer.start()
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            log(f"  {lines[-1]}")
        rc = proc.wait()
    finally:
        timer.cancel()
    return (None if expired.is_set() else rc), lines


def render_codebase(spec: EnvSpec, files: dict[str, str]) -> str:
    """The codebase as a model sees it: editable and visible files with line numbers; hidden
    files and data named as off limits, never shown."""
    parts = []
    for cls in ("editable", "visible"):
        for rel in spec.files[cls]:
            if rel not in files:
                continue
            lines = files[rel].splitlines()
            width = len(str(len(lines)))
            body = "\n".join(f"{i + 1:>{width}} | {line}" for i, line in enumerate(lines))
            parts.append(f"===== {rel} ({cls}{', may be changed' if cls == 'editable' else ', read-only'}) =====\n{body}")
    for rel in spec.hidden_files:
        parts.append(f"===== {rel} (hidden: exists, is never shown, and may not be read, changed or imported) =====")
    for rel in spec.data_paths:
        parts.append(f"===== {rel}/ (data: read-only, linked into the run; not shown) =====")
    return "\n\n".join(parts)
