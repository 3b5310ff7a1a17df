"""`ideaforge env prepare ENV [--profile NAME]` as library calls: fetch a pinned source, then run
the environment's cached [prepare] step, its output passed to `log` line by line as it comes."""

from __future__ import annotations

from pathlib import Path

from ideaforge.envs.source import materialize_source
from ideaforge.envs.spec import EnvSpec, load_env, resolve_env_dir
from ideaforge.envs.workspace import ensure_prepared


def prepare_env(spec: EnvSpec, log=print) -> Path | None:
    """The [prepare] step of a loaded environment (profile applied), once per machine; downloads go
    to the shared data directory ($IDEAFORGE_CACHE/data). Returns the prepared directory."""
    if not spec.prepare_command:
        log(f"{spec.name} has no [prepare] step; nothing to prepare")
        return None
    return ensure_prepared(spec, log=log)


def prepare_by_name(name_or_path: str | Path, profile: str | None = None, log=print) -> tuple[EnvSpec, Path | None]:
    """Everything `env prepare` does: fetch and verify an `[env] source` if there is one, load the
    environment with the profile, and prepare it. Returns (spec, prepared directory)."""
    materialize_source(resolve_env_dir(name_or_path), log=log)
    spec = load_env(name_or_path, profile=profile)
    return spec, prepare_env(spec, log=log)
