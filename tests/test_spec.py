"""ideaforge.toml validation: every malformed spec names the file, the field and the fix."""

from __future__ import annotations

import ast
import pathlib

import pytest

from fakes.toyenv import make_toy_env
from ideaforge.envs import load_env
from ideaforge.errors import EnvError

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "ideaforge"


def _env(tmp_path, edit):
    root = make_toy_env(tmp_path / "env")
    path = root / "ideaforge.toml"
    path.write_text(edit(path.read_text()))
    return root


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace('command = "python train.py"\n', ""), "[run] is missing 'command'"),
    (lambda s: s.replace('goal = "max"', 'goal = "maximise"'), "goal = 'maximise' is not a direction"),
    (lambda s: s.replace('visible = ["helper.py"]', 'visible = ["helper.py", "train.py"]'), "train.py is both editable and visible"),
    (lambda s: s.replace('editable = ["train.py"]', 'editable = ["train.py", "model/*.py"]'), "glob 'model/*.py' matches no file"),
    (lambda s: s.replace('data = ["data"]', 'data = ["datasets/fineweb"]'), "data path 'datasets/fineweb' does not exist"),
    (lambda s: s.replace("[metric]", "[metrics]"), "unknown section [metrics]"),
    (lambda s: s.replace("budget_s = 5", "budget_s = 5\nbudget = 3"), "unknown field 'budget' in [run]"),
    (lambda s: s.replace("budget_s = 5", 'budget_s = "five"'), "budget_s = 'five' should be a int or float"),
    (lambda s: s.replace("timeout_s = 30\n\n[evaluate]", "timeout_s = 2\n\n[evaluate]"), "must exceed budget_s"),
    (lambda s: s.replace('hidden = ["evaluate.py", "eval_secret.txt"]', 'hidden = ["evaluate.py", "eval_secret.txt", "train.py"]'), "train.py is both editable and hidden"),
    (lambda s: s.replace("[env]", "[env"), "not valid TOML"),
    (lambda s: s.replace('data = ["data"]', 'data = ["../elsewhere"]'), "must be a relative path inside"),
])
def test_malformed_specs_are_explained(tmp_path, edit, message):
    root = _env(tmp_path, edit)
    with pytest.raises(EnvError) as e:
        load_env(root)
    assert message in str(e.value)
    assert str(root / "ideaforge.toml") in str(e.value)


def test_unknown_env_names_builtins(tmp_path):
    with pytest.raises(EnvError, match="not a built-in"):
        load_env("no-such-env")
    with pytest.raises(EnvError, match="no ideaforge.toml"):
        load_env(tmp_path)


def test_classes_of_existing_and_new_paths(tmp_path):
    spec = load_env(make_toy_env(tmp_path / "env", extra_toml=""))
    assert spec.classify("train.py") == "editable"
    assert spec.classify("./train.py") == "editable"
    assert spec.classify("helper.py") == "visible"
    assert spec.classify("evaluate.py") == "hidden"
    assert spec.classify("data/train.txt") == "data"
    assert spec.classify("data/new.txt") == "data"
    assert spec.classify("new.py") is None
    assert spec.classify("../train.py") is None
    assert spec.classify("/etc/passwd") is None


def test_default_timeout_and_builtin_envs_load():
    from ideaforge.envs import builtin_names
    names = builtin_names()
    assert "nanogpt-cpu" in names
    for name in names:
        spec = load_env(name)
        assert spec.hidden_files, f"{name} must hide its evaluator"
        assert spec.timeout_s > spec.budget_s


# DESIGN.md's module map, every layer: what each may import besides itself. `errors` and
# `outcomes` (the closed vocabularies: exceptions, trial outcomes) sit at the bottom, under all.
BOTTOM = {"errors", "outcomes"}
_BELOW_SEARCH = BOTTOM | {"envs", "llm", "store", "stats", "edit", "ideate", "implement", "execute"}
LAYERS: dict[str, set[str]] = {
    "errors": set(),
    "outcomes": set(),
    "envs": BOTTOM,
    "llm": BOTTOM,
    "store": BOTTOM | {"stats"},        # store + statistics: one layer
    "stats": BOTTOM | {"store"},
    "edit": BOTTOM | {"envs"},
    "ideate": BOTTOM | {"llm", "envs", "edit"},
    "implement": BOTTOM | {"llm", "envs", "edit"},
    "execute": BOTTOM | {"envs"},
    "search": _BELOW_SEARCH,
    "rl": _BELOW_SEARCH | {"search"},   # runs its trials through search's Campaign and TrialRunner
    "report": BOTTOM | {"store", "stats"},
    "cli": _BELOW_SEARCH | {"search", "rl", "report"},
}


def _layer_files(layer: str) -> list[pathlib.Path]:
    return [SRC / f"{layer}.py"] if (SRC / f"{layer}.py").exists() else sorted((SRC / layer).rglob("*.py"))


def _ideaforge_imports(path: pathlib.Path) -> set[str]:
    """Top-level ideaforge modules `path` imports, absolute or relative, anywhere in the file."""
    package = path.relative_to(SRC.parent).with_suffix("").parts[:-1]  # ("ideaforge", "search")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            mods = [f"{mod}.{a.name}" for a in node.names] if mod == "ideaforge" else [mod]
        else:
            continue
        found |= {m.split(".")[1] for m in mods if m.startswith("ideaforge.")}
    return found


def test_the_map_names_every_module():
    present = {p.stem for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()} - {"__init__"}
    assert present <= set(LAYERS), f"modules missing from DESIGN's map: {sorted(present - set(LAYERS))}"


@pytest.mark.parametrize("layer", list(LAYERS))
def test_lower_layers_never_import_higher_ones(layer):
    """Each layer imports only itself and what DESIGN's table allows it."""
    bad = []
    for f in _layer_files(layer):
        for mod in sorted(_ideaforge_imports(f) - LAYERS[layer] - {layer}):
            bad.append(f"{f.relative_to(SRC)} imports ideaforge.{mod}")
    assert not bad, "\n".join(bad)


def test_importing_the_package_does_nothing():
    import subprocess, sys
    code = ("import sys, ideaforge, ideaforge.cli, ideaforge.llm; "
            "bad = [m for m in ('torch', 'anthropic', 'openai', 'ray') if m in sys.modules]; "
            "import logging; assert not logging.getLogger().handlers; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
