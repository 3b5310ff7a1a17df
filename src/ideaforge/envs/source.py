"""Environments whose code lives in a pinned git repository: `[env] source = "git+URL@COMMIT"`.

The environment directory then holds only what ideaforge adds (the ideaforge.toml, the trusted
evaluator, maybe a prepare script); `materialize_source` fetches the repository at exactly
COMMIT (a full 40-hex id: a branch or tag could move), verifies the checked-out commit, and
builds a merged directory in the cache: the repository's files, then the environment
directory's files over them. `load_env` loads that merged directory; until it exists it says
to run `ideaforge env prepare`.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

from ideaforge.errors import EnvError

MARKER = ".ideaforge-source"  # in a merged directory: the source it was built from
_SOURCE = re.compile(r"^git\+(?P<url>.+)@(?P<commit>[0-9a-f]{40})$")


def parse_source(source: str, where: Path) -> tuple[str, str]:
    m = _SOURCE.match(source.strip())
    if not m:
        raise EnvError(f"{where}: [env] source = {source!r} must be \"git+URL@COMMIT\" with the full 40-character "
                       f"commit id (a branch or tag can move; `git rev-parse HEAD` prints the id)")
    return m.group("url"), m.group("commit")


def merged_dir(env_dir: Path, source: str) -> Path:
    from ideaforge.envs.workspace import cache_root  # workspace imports spec, which imports this lazily

    key = hashlib.sha256(f"{env_dir.resolve()}\0{source}".encode()).hexdigest()[:16]
    return cache_root() / "sources" / f"{env_dir.name}-{key}"


def resolve(env_dir: Path, source: str, spec_path: Path) -> Path:
    """The merged directory to load for an environment with a source (or env_dir if it is one)."""
    if (env_dir / MARKER).is_file():
        return env_dir
    parse_source(source, spec_path)
    merged = merged_dir(env_dir, source)
    if not (merged / MARKER).is_file():
        raise EnvError(f"{spec_path}: its code comes from {source}, which is not fetched on this machine yet; "
                       f"run `ideaforge env prepare {env_dir}` first")
    return merged


def _git(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise EnvError(f"git {' '.join(args)} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc.stdout.strip()


def materialize_source(env_dir: str | Path, log=print) -> Path | None:
    """Fetch and verify the environment's pinned source and build its merged directory (idempotent).
    Returns the merged directory, or None for an environment without a source."""
    env_dir = Path(env_dir).resolve()
    spec_path = env_dir / "ideaforge.toml"
    source = tomllib.loads(spec_path.read_text()).get("env", {}).get("source")
    if not source or (env_dir / MARKER).is_file():
        return None
    url, commit = parse_source(source, spec_path)
    merged = merged_dir(env_dir, source)
    if (merged / MARKER).is_file():
        return merged
    merged.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="source-", dir=merged.parent) as tmp:
        checkout = Path(tmp) / "checkout"
        log(f"fetching {url} at {commit[:12]} ...")
        _git("init", "-q", str(checkout))
        try:
            _git("fetch", "-q", "--depth", "1", url, commit, cwd=checkout)  # servers that allow fetching one commit
        except EnvError:
            _git("fetch", "-q", url, "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*", cwd=checkout)
        _git("-c", "advice.detachedHead=false", "checkout", "-q", "--detach", commit, cwd=checkout)
        head = _git("rev-parse", "HEAD", cwd=checkout)
        if head != commit:
            raise EnvError(f"{spec_path}: checked out {head}, not the pinned {commit}; refusing to use it")
        out = Path(tmp) / "merged"
        shutil.copytree(checkout, out, ignore=shutil.ignore_patterns(".git"), symlinks=True)
        shutil.copytree(env_dir, out, ignore=shutil.ignore_patterns(".git", "__pycache__"), dirs_exist_ok=True)
        (out / MARKER).write_text(f"{source}\n")
        if merged.exists():
            shutil.rmtree(merged)
        out.rename(merged)
    log(f"{env_dir.name}: {url} at {commit[:12]} verified, merged into {merged}")
    return merged
