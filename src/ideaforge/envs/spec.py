"""Loading and validating `ideaforge.toml`, the environment contract.

An environment is a directory: a baseline codebase, a run command, a trusted
evaluator, a metric with a direction. The split of its files into editable,
visible, hidden and data is data here and is enforced by code everywhere else
(workspaces, edit application, prompts), never only by a prompt.
"""

from __future__ import annotations

import fnmatch
import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ideaforge.errors import EnvError

BUILTIN_DIR = Path(__file__).parent / "builtin"
SPEC_NAME = "ideaforge.toml"
FILE_CLASSES = ("editable", "visible", "hidden", "data")
# Never part of any class: the spec itself and build/cache litter.
_IGNORED_PARTS = {"__pycache__", ".git", ".ipynb_checkpoints"}

# section -> {key: (type, required, default)}; unknown keys are errors so typos surface.
_SCHEMA: dict[str, dict[str, tuple[type | tuple[type, ...], bool, object]]] = {
    "env": {"name": (str, True, None), "description": (str, True, None), "source": (str, False, None)},
    "files": {
        "editable": (list, True, None),
        "visible": (list, False, []),
        "hidden": (list, False, []),
        "data": (list, False, []),
    },
    "run": {
        "command": (str, True, None),
        "budget_s": ((int, float), True, None),
        "timeout_s": ((int, float), False, None),
        "budget_clock": (str, False, "wall"),
    },
    "evaluate": {"command": (str, True, None), "timeout_s": ((int, float), False, 300), "serve": (str, False, None),
                 "jailed": (bool, False, True)},
    "smoke": {
        "command": (str, False, None),
        "budget_s": ((int, float), False, 3),
        "timeout_s": ((int, float), False, 120),
        "steps": (int, False, None),
        "evaluate": (bool, False, False),
    },
    "prepare": {"command": (str, False, None), "timeout_s": ((int, float), False, 600)},
    "metric": {"name": (str, True, None), "goal": (str, True, None)},
    "resources": {"cpus": (int, False, 1), "gpus": (int, False, 0), "memory_gb": ((int, float), False, None),
                  "network": (bool, False, False)},
    "rules": {"text": (list, False, [])},
}
_REQUIRED_SECTIONS = ("env", "files", "run", "evaluate", "metric")

# [profile.NAME] key -> the "section.key" it overrides (None: handled apart); see _apply_profile.
_PROFILE_KEYS: dict[str, str | None] = {
    "description": None, "env": None,
    "command": "run.command", "budget_s": "run.budget_s", "timeout_s": "run.timeout_s",
    "cpus": "resources.cpus", "gpus": "resources.gpus", "memory_gb": "resources.memory_gb",
}
# Variables ideaforge sets for every trial; a profile may not override them.
_RESERVED_ENV = ("IDEAFORGE_", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                 "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "PYTHONUNBUFFERED")


@dataclass(frozen=True)
class EnvSpec:
    """A validated environment. Paths in the file lists are POSIX, relative to `root`."""

    root: Path
    name: str
    description: str
    editable_globs: tuple[str, ...]
    visible_globs: tuple[str, ...]
    hidden_globs: tuple[str, ...]
    data_paths: tuple[str, ...]
    run_command: str
    budget_s: float  # seconds of training the code must respect (IDEAFORGE_BUDGET_S)
    timeout_s: float  # hard kill of the whole process tree, seconds
    evaluate_command: str
    evaluate_timeout_s: float
    metric: str
    goal: str  # "min" or "max"
    cpus: int = 1
    gpus: int = 0
    memory_gb: float | None = None
    smoke_command: str | None = None
    smoke_budget_s: float = 3.0
    smoke_timeout_s: float = 120.0
    smoke_steps: int | None = None  # IDEAFORGE_SMOKE_STEPS: optimizer steps of a smoke run (None: budget_s)
    smoke_evaluate: bool = False    # the smoke run is checked by the evaluator with IDEAFORGE_EVAL_MODE=smoke
    prepare_command: str | None = None
    prepare_timeout_s: float = 600.0
    evaluate_serve: str | None = None  # untrusted model server of a split evaluator (envs/protocol.py)
    evaluate_jailed: bool = True  # False: the evaluator runs no workspace code (weights only), so runs unjailed
    rules: tuple[str, ...] = ()
    budget_clock: str = "wall"  # what budget_s counts: "wall" seconds or the training tree's "cpu" seconds
    network: bool = False  # trials may reach the network (otherwise a private loopback only)
    files: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    profile: str | None = None  # the [profile.NAME] applied, None for the plain spec
    profiles: tuple[str, ...] = ()  # every profile the spec defines
    env: dict[str, str] = field(default_factory=dict, compare=False)  # the profile's variables for trials

    @property
    def spec_path(self) -> Path:
        return self.root / SPEC_NAME

    @property
    def editable_files(self) -> tuple[str, ...]:
        return self.files["editable"]

    @property
    def visible_files(self) -> tuple[str, ...]:
        return self.files["visible"]

    @property
    def hidden_files(self) -> tuple[str, ...]:
        return self.files["hidden"]

    def better(self, a: float, b: float) -> bool:
        """True when metric value `a` is strictly better than `b`."""
        return a < b if self.goal == "min" else a > b

    def classify(self, rel: str) -> str | None:
        """The class of a path (existing or new): editable, visible, hidden, data or None.

        A new file is editable when it lies under a directory that an editable glob
        names (``model/`` or ``model/*.py``); otherwise it belongs to no class and
        may not be created.
        """
        rel = _normalise(rel)
        if rel is None:
            return None
        for cls in ("hidden", "data", "visible", "editable"):
            if rel in self.files[cls]:
                return cls
        for d in self.data_paths:
            if rel == d or rel.startswith(d.rstrip("/") + "/"):
                return "data"
        if any(_glob_match(rel, g) for g in self.hidden_globs):
            return "hidden"
        if any(_glob_match(rel, g) for g in self.visible_globs):
            return "visible"
        if any(_glob_match(rel, g) for g in self.editable_globs):
            return "editable"
        return None

    def is_editable(self, rel: str) -> bool:
        return self.classify(rel) == "editable"

    def fingerprint(self) -> str:
        """sha256 over the spec and every editable/visible/hidden file: what a campaign snapshots."""
        h = hashlib.sha256()
        h.update(self.spec_path.read_bytes())
        if self.profile is not None:  # the same spec under another profile runs differently
            h.update(f"profile:{self.profile}\0".encode())
        for cls in ("editable", "visible", "hidden"):
            for rel in self.files[cls]:
                h.update(f"{cls}:{rel}\0".encode())
                h.update((self.root / rel).read_bytes())
        return h.hexdigest()


def _normalise(rel: str) -> str | None:
    """A clean relative POSIX path, or None when it escapes the root or is absolute."""
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or any(part == ".." for part in p.parts):
        return None
    parts = [x for x in p.parts if x not in ("", ".")]
    return "/".join(parts) if parts else None


def _glob_match(rel: str, pattern: str) -> bool:
    # fnmatch's `*` also crosses `/`, so `model/*.py` admits new files deeper under model/;
    # a plain directory name admits every file under it.
    pattern = pattern.rstrip("/")
    return fnmatch.fnmatchcase(rel, pattern) or rel.startswith(pattern + "/")


def _expand(root: Path, pattern: str) -> list[str]:
    """Files a glob names under root; a directory stands for every file below it."""
    out: list[str] = []
    for p in sorted(root.glob(pattern)):
        if any(part in _IGNORED_PARTS for part in p.relative_to(root).parts):
            continue
        if p.is_dir():
            out += [
                q.relative_to(root).as_posix()
                for q in sorted(p.rglob("*"))
                if q.is_file() and not any(part in _IGNORED_PARTS for part in q.relative_to(root).parts)
            ]
        elif p.is_file() and p.name != SPEC_NAME:
            out.append(p.relative_to(root).as_posix())
    return out


def builtin_names() -> list[str]:
    return sorted(p.parent.name for p in BUILTIN_DIR.glob(f"*/{SPEC_NAME}"))


def resolve_env_dir(name_or_path: str | Path) -> Path:
    """A built-in name or a directory (or its ideaforge.toml) -> the environment directory."""
    p = Path(name_or_path).expanduser()
    if p.name == SPEC_NAME and p.is_file():
        return p.parent.resolve()
    if p.is_dir():
        if not (p / SPEC_NAME).is_file():
            raise EnvError(f"{p}: no {SPEC_NAME} in this directory; an environment directory needs one (see `ideaforge env show nanogpt-cpu` for an example)")
        return p.resolve()
    if (BUILTIN_DIR / str(name_or_path) / SPEC_NAME).is_file():
        return (BUILTIN_DIR / str(name_or_path)).resolve()
    raise EnvError(
        f"unknown environment {str(name_or_path)!r}: not a built-in ({', '.join(builtin_names()) or 'none'}) "
        f"and not a directory with an {SPEC_NAME}"
    )


def load_env(name_or_path: str | Path, profile: str | None = None) -> EnvSpec:
    """Load and validate an environment, with `[profile.<profile>]` applied when one is named;
    every problem is an EnvError naming file, field and fix."""
    root = resolve_env_dir(name_or_path)
    if root.parent == BUILTIN_DIR.resolve():
        from ideaforge.envs.manifest import verify_builtin  # a tampered install is refused before use
        verify_builtin(root)
    path = root / SPEC_NAME
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise EnvError(f"{path}: not valid TOML: {e}") from None
    profiles = raw.pop("profile", {})
    vals = _check_schema(path, raw)
    if vals["env.source"]:  # code from a pinned git repository, merged with this directory (envs/source.py)
        from ideaforge.envs.source import resolve

        root = resolve(root, vals["env.source"], path)
    profile_env = _apply_profile(path, vals, profiles, profile)

    goal = vals["metric.goal"]
    if goal not in ("min", "max"):
        raise EnvError(f"{path}: [metric] goal = {goal!r} is not a direction; write goal = \"min\" (lower is better) or goal = \"max\"")
    for key in ("run.command", "evaluate.command", "metric.name", "env.name"):
        if not vals[key].strip():
            raise EnvError(f"{path}: [{key.split('.')[0]}] {key.split('.')[1]} is empty; give it a value")
    budget = float(vals["run.budget_s"])
    if budget <= 0:
        raise EnvError(f"{path}: [run] budget_s = {budget} must be a positive number of seconds")
    timeout = float(vals["run.timeout_s"]) if vals["run.timeout_s"] is not None else max(3 * budget, budget + 60)
    if timeout <= budget:
        raise EnvError(f"{path}: [run] timeout_s = {timeout} must exceed budget_s = {budget}; the timeout is the hard kill, the budget what training may use")
    if vals["resources.cpus"] < 1 or vals["resources.gpus"] < 0:
        raise EnvError(f"{path}: [resources] needs cpus >= 1 and gpus >= 0")

    if vals["run.budget_clock"] not in ("wall", "cpu"):
        raise EnvError(f"{path}: [run] budget_clock = {vals['run.budget_clock']!r}; write \"wall\" (wall-clock seconds) or \"cpu\" (the training tree's CPU seconds, measured by the harness)")

    files: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    for cls in ("editable", "visible", "hidden"):
        found: list[str] = []
        for pattern in vals[f"files.{cls}"]:
            if not isinstance(pattern, str) or _normalise(pattern) is None:
                raise EnvError(f"{path}: [files] {cls} entry {pattern!r} must be a relative path or glob inside the environment")
            matched = _expand(root, pattern)
            if not matched:
                raise EnvError(f"{path}: [files] {cls} glob {pattern!r} matches no file under {root}; fix the pattern or remove it")
            for rel in matched:
                if rel in owner and owner[rel] != cls:
                    raise EnvError(f"{path}: [files] {rel} is both {owner[rel]} and {cls}; a file belongs to exactly one class")
                owner[rel] = cls
                if rel not in found:
                    found.append(rel)
        files[cls] = tuple(found)
    data_paths: list[str] = []
    for d in vals["files.data"]:
        rel = _normalise(d) if isinstance(d, str) else None
        if rel is None:
            raise EnvError(f"{path}: [files] data entry {d!r} must be a relative path inside the environment")
        if not (root / rel).exists():
            raise EnvError(f"{path}: [files] data path {rel!r} does not exist under {root}; create it or run the environment's prepare step")
        for f, cls in owner.items():
            if f == rel or f.startswith(rel + "/"):
                raise EnvError(f"{path}: [files] {f} is both {cls} and data; a file belongs to exactly one class")
        data_paths.append(rel)
    files["data"] = tuple(data_paths)
    if not files["editable"]:
        raise EnvError(f"{path}: [files] editable is empty; name at least one file the implementer may change")
    if vals["smoke.steps"] is not None and vals["smoke.steps"] < 1:
        raise EnvError(f"{path}: [smoke] steps must be at least 1 (or left out to smoke-run by budget_s)")
    rules = vals["rules.text"]
    if not all(isinstance(r, str) for r in rules):
        raise EnvError(f"{path}: [rules] text must be a list of strings")

    return EnvSpec(
        root=root,
        name=vals["env.name"],
        description=vals["env.description"].strip(),
        editable_globs=tuple(vals["files.editable"]),
        visible_globs=tuple(vals["files.visible"]),
        hidden_globs=tuple(vals["files.hidden"]),
        data_paths=tuple(data_paths),
        run_command=vals["run.command"],
        budget_s=budget,
        timeout_s=timeout,
        evaluate_command=vals["evaluate.command"],
        evaluate_timeout_s=float(vals["evaluate.timeout_s"]),
        evaluate_serve=vals["evaluate.serve"],
        evaluate_jailed=vals["evaluate.jailed"],
        metric=vals["metric.name"],
        goal=goal,
        cpus=vals["resources.cpus"],
        gpus=vals["resources.gpus"],
        memory_gb=vals["resources.memory_gb"],
        smoke_command=vals["smoke.command"],
        smoke_budget_s=float(vals["smoke.budget_s"]),
        smoke_timeout_s=float(vals["smoke.timeout_s"]),
        smoke_steps=vals["smoke.steps"],
        smoke_evaluate=vals["smoke.evaluate"],
        prepare_command=vals["prepare.command"],
        prepare_timeout_s=float(vals["prepare.timeout_s"]),
        rules=tuple(rules),
        budget_clock=vals["run.budget_clock"],
        network=vals["resources.network"],
        files=files,
        profile=profile,
        profiles=tuple(profiles),
        env=profile_env,
    )


def _apply_profile(path: Path, vals: dict[str, object], profiles: object, name: str | None) -> dict[str, str]:
    """Check every [profile.*] table; merge the chosen one into `vals`; return its variables.

    A profile that sets budget_s but no timeout_s drops the base timeout, so the default
    (3x the budget, at least budget + 60 s) applies to its budget.
    """
    if not isinstance(profiles, dict):
        raise EnvError(f"{path}: `profile` must hold tables, e.g. [profile.tiny] followed by budget_s = 20")
    for pname, table in profiles.items():
        if not isinstance(table, dict):
            raise EnvError(f"{path}: profile.{pname} must be a table: write [profile.{pname}] on its own line")
        for key, v in table.items():
            if key not in _PROFILE_KEYS:
                raise EnvError(f"{path}: unknown field {key!r} in [profile.{pname}]; known fields: {', '.join(_PROFILE_KEYS)}")
            target = _PROFILE_KEYS[key]
            section, _, field_ = (target or "").partition(".")
            typ = _SCHEMA[section][field_][0] if target else {"description": str, "env": dict}[key]
            if isinstance(v, bool) or not isinstance(v, typ):
                want = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
                raise EnvError(f"{path}: [profile.{pname}] {key} = {v!r} should be a {want}")
        for var, value in table.get("env", {}).items():
            if not isinstance(value, str):
                raise EnvError(f"{path}: [profile.{pname}] env.{var} = {value!r} should be a string; quote it: {var} = \"{value}\"")
            if var.startswith(_RESERVED_ENV):
                raise EnvError(f"{path}: [profile.{pname}] env.{var} is set by ideaforge for every trial; use another name")
    if name is None:
        return {}
    if name not in profiles:
        known = ", ".join(profiles) or "none"
        raise EnvError(f"{path}: no [profile.{name}] in this environment (profiles: {known}); pick one of those or add the table")
    table = profiles[name]
    if "budget_s" in table and "timeout_s" not in table:
        vals["run.timeout_s"] = None
    for key, target in _PROFILE_KEYS.items():
        if target is not None and key in table:
            vals[target] = table[key]
    return dict(table.get("env", {}))


def _check_schema(path: Path, raw: dict) -> dict[str, object]:
    vals: dict[str, object] = {}
    for section in raw:
        if section not in _SCHEMA:
            raise EnvError(f"{path}: unknown section [{section}]; known sections: {', '.join('[' + s + ']' for s in _SCHEMA)}")
        if not isinstance(raw[section], dict):
            raise EnvError(f"{path}: [{section}] must be a table, e.g. [{section}] on its own line followed by key = value lines")
    for section in _REQUIRED_SECTIONS:
        if section not in raw:
            raise EnvError(f"{path}: missing section [{section}]; it needs: {', '.join(k for k, v in _SCHEMA[section].items() if v[1])}")
    for section, keys in _SCHEMA.items():
        table = raw.get(section, {})
        for key in table:
            if key not in keys:
                raise EnvError(f"{path}: unknown field {key!r} in [{section}]; known fields: {', '.join(keys)}")
        for key, (typ, required, default) in keys.items():
            if key not in table:
                if required:
                    raise EnvError(f"{path}: [{section}] is missing {key!r}; add `{key} = ...`")
                vals[f"{section}.{key}"] = default
                continue
            v = table[key]
            if (isinstance(v, bool) and typ is not bool) or not isinstance(v, typ):
                want = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
                raise EnvError(f"{path}: [{section}] {key} = {v!r} should be a {want}")
            vals[f"{section}.{key}"] = v
    return vals
