"""Environments: `ideaforge.toml` loading and validation, workspaces, the built-in environments."""

from ideaforge.envs.spec import EnvSpec, builtin_names, load_env, resolve_env_dir

__all__ = ["EnvSpec", "builtin_names", "load_env", "resolve_env_dir"]
