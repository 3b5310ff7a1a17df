"""Environments from a pinned git repository (`[env] source = "git+URL@COMMIT"`), against a local
repository: fetched and verified at exactly the commit, merged with the files ideaforge adds,
and run as a trial."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from fakes.toyenv import make_toy_env
from ideaforge.envs import load_env
from ideaforge.envs.source import MARKER, materialize_source
from ideaforge.errors import EnvError
from ideaforge.execute.local import LocalExecutor
from ideaforge.search.campaign import Campaign, TrialRunner

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(*args, cwd):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def upstream(tmp_path):
    """A toy environment split in two: its code in a git repository (two commits), and a directory
    holding only ideaforge.toml and the hidden evaluator."""
    full = make_toy_env(tmp_path / "full", x=0.5)
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    for name in ("train.py", "helper.py"):
        shutil.copy(full / name, repo / name)
    shutil.copytree(full / "data", repo / "data")
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "v1", cwd=repo)
    first = git("rev-parse", "HEAD", cwd=repo)
    (repo / "train.py").write_text((repo / "train.py").read_text().replace('"x": 0.5', '"x": 2.0'))
    git("commit", "-qam", "v2", cwd=repo)
    env = tmp_path / "env"
    env.mkdir()
    for name in ("evaluate.py", "eval_secret.txt"):
        shutil.copy(full / name, env / name)
    toml = (full / "ideaforge.toml").read_text()
    return repo, env, toml, first


def _write(env, toml, source):
    (env / "ideaforge.toml").write_text(toml.replace('name = "toy"', f'name = "toy"\nsource = "{source}"', 1))


def test_source_must_be_fetched_then_loads_the_pinned_commit(upstream, tmp_path, monkeypatch):
    monkeypatch.setenv("IDEAFORGE_CACHE", str(tmp_path / "cache"))
    repo, env, toml, first = upstream
    _write(env, toml, f"git+{repo}@{first}")
    with pytest.raises(EnvError, match="not fetched on this machine yet; run `ideaforge env prepare"):
        load_env(env)
    logs = []
    merged = materialize_source(env, log=logs.append)
    assert (merged / MARKER).is_file() and any("verified" in m for m in logs)
    spec = load_env(env)
    assert spec.root == merged and spec.editable_files == ("train.py",)
    assert '"x": 0.5' in (spec.root / "train.py").read_text()  # the pinned commit, not the newer HEAD
    assert spec.hidden_files == ("evaluate.py", "eval_secret.txt")
    assert not (merged / ".git").exists()
    assert materialize_source(env) == merged  # idempotent
    assert load_env(merged).root == merged  # a campaign reopens the merged directory itself

    camp = Campaign.create(tmp_path / "camp", spec)
    tid = camp.store.add_trial("candidate", seed=0, budget_s=spec.budget_s)
    with LocalExecutor(slots=1) as ex:
        TrialRunner(camp, ex).drain()
    t = camp.store.trial(tid)
    assert t["outcome"] == "evaluated" and t["metric"] == pytest.approx(1.5), t["reason"]


@pytest.mark.parametrize("bad, message", [
    ("git+{repo}@main", "full 40-character commit id"),
    ("{repo}@{first}", "must be \"git+URL@COMMIT\""),
    ("git+{repo}@" + "0" * 40, "failed"),
])
def test_bad_sources_are_explained(upstream, tmp_path, monkeypatch, bad, message):
    monkeypatch.setenv("IDEAFORGE_CACHE", str(tmp_path / "cache"))
    repo, env, toml, first = upstream
    _write(env, toml, bad.format(repo=repo, first=first))
    with pytest.raises(EnvError, match=re.escape(message)):
        materialize_source(env, log=lambda m: None)


def test_prepare_by_name_fetches_the_source_then_prepares(upstream, tmp_path, monkeypatch):
    from ideaforge.envs.prepare import prepare_by_name

    monkeypatch.setenv("IDEAFORGE_CACHE", str(tmp_path / "cache"))
    repo, env, toml, first = upstream
    toml += '\n[prepare]\ncommand = "python -c \\"import os; open(os.environ[\'IDEAFORGE_PREPARED\'] + \'/ok\', \'w\').write(\'1\')\\""\n'
    _write(env, toml, f"git+{repo}@{first}")
    logs = []
    spec, prepared = prepare_by_name(env, log=logs.append)
    assert (spec.root / MARKER).is_file() and (prepared / "ok").read_text() == "1"
    assert any("verified" in m for m in logs) and any("preparing" in m for m in logs)
