"""The implementer through the real SDKs against a scripted model server: repair loop,
checks, refusals, parallel samples, and `ideaforge implement --run`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fakes.llm_server import FakeLLMServer
from fakes.toyenv import make_toy_env
from ideaforge.envs import load_env
from ideaforge.envs.workspace import read_files
from ideaforge.execute.smoke import run_smoke
from ideaforge.implement.implementer import Implementer
from ideaforge.store import Store

GOOD = """Here is the change.

train.py
<<<<<<< SEARCH
json.dump({"score": 1.0 + 0.01 * seed, "x": 0.0}, open(os.path.join(out, "ckpt.json"), "w"))
=======
json.dump({"score": 2.0 + 0.01 * seed, "x": 0.0}, open(os.path.join(out, "ckpt.json"), "w"))
>>>>>>> REPLACE
"""
UNMATCHED = GOOD.replace('json.dump({"score": 1.0 + 0.01 * seed', 'json.dump({"score": 1.5 + 0.5 * seed * seed')
SYNTAX = GOOD.replace('json.dump({"score": 2.0 + 0.01 * seed, "x": 0.0}', 'json.dump({"score": 2.0 + 0.01 * seed, "x": 0.0')
CRASH = GOOD.replace('json.dump({"score": 2.0 + 0.01 * seed, "x": 0.0}', 'raise RuntimeError("shape mismatch (3, 4)"); json.dump({"score": 2.0}')
HIDDEN = """evaluate.py
<<<<<<< SEARCH
import json, os
=======
import json, os  # always perfect
>>>>>>> REPLACE
"""


@pytest.fixture
def toy(tmp_path):
    spec = load_env(make_toy_env(tmp_path / "env"))
    return spec, read_files(spec)


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")


def _model(srv):
    return f"openai-compatible:fake@{srv.openai_url}"


def _last_user(req):
    return req["json"]["messages"][-1]["content"]


def test_unmatched_edit_is_repaired_with_the_nearest_match(toy):
    spec, files = toy
    with FakeLLMServer([UNMATCHED, GOOD]) as srv:
        result = Implementer(spec, files, _model(srv), samples=1, repairs=2).implement("raise the score")
    assert result.ok, result.error
    assert [a.stage for a in result.attempts] == ["apply", "ok"]
    repair_prompt = _last_user(srv.requests[1])
    assert "could not be used" in repair_prompt
    assert "json.dump" in repair_prompt  # names what was searched for / the nearest match
    assert '"score": 2.0' in result.files["train.py"]
    assert result.diff.startswith("--- a/train.py")
    first_prompt = _last_user(srv.requests[0])
    assert "raise the score" in first_prompt and " | import json, os, time" in first_prompt
    assert "held-out" not in first_prompt and "the model peeked" not in first_prompt  # hidden files never shown


def test_syntax_error_is_sent_back(toy):
    spec, files = toy
    with FakeLLMServer([SYNTAX, GOOD]) as srv:
        result = Implementer(spec, files, _model(srv), samples=1).implement("raise the score")
    assert result.ok and [a.stage for a in result.attempts] == ["syntax", "ok"]
    assert "SyntaxError" in _last_user(srv.requests[1])


def test_smoke_failure_is_sent_back_with_the_log_tail(toy):
    spec, files = toy
    smoke = lambda changes: (lambda r: None if r.ok else r.message)(run_smoke(spec, spec.root, changes))
    with FakeLLMServer([CRASH, GOOD]) as srv:
        result = Implementer(spec, files, _model(srv), samples=1, smoke=smoke).implement("raise the score")
    assert result.ok, result.error
    assert [a.stage for a in result.attempts] == ["smoke", "ok"]
    assert "RuntimeError: shape mismatch (3, 4)" in _last_user(srv.requests[1])


def test_edit_to_hidden_file_is_refused_until_repairs_run_out(toy):
    spec, files = toy
    with FakeLLMServer([HIDDEN] * 3) as srv:
        result = Implementer(spec, files, _model(srv), samples=1, repairs=2).implement("cheat")
    assert not result.ok
    assert len(srv.requests) == 3
    assert "evaluate.py" in result.error and "hidden" in result.error
    assert all(a.stage == "apply" for a in result.attempts)


def test_garbage_and_truncated_replies_are_attempts_not_crashes(toy):
    spec, files = toy
    truncated = GOOD.split("=======")[0]
    with FakeLLMServer(["I think this is a great idea!", truncated, GOOD]) as srv:
        result = Implementer(spec, files, _model(srv), samples=1, repairs=2).implement("raise the score")
    assert result.ok and [a.stage for a in result.attempts] == ["parse", "parse", "ok"]


def test_parallel_samples_first_success_wins(toy):
    spec, files = toy
    replies = {"n": 0}

    def script(provider, req):
        replies["n"] += 1
        return GOOD
    with FakeLLMServer(script) as srv:
        result = Implementer(spec, files, _model(srv), samples=3, repairs=2).implement("raise the score")
    assert result.ok
    assert sum(a.stage == "ok" for a in result.attempts) == 1
    assert replies["n"] <= 3  # nobody repairs after a winner


def test_cli_implement_run_records_everything(tmp_path):
    env = make_toy_env(tmp_path / "env")
    camp = tmp_path / "camp"
    with FakeLLMServer([UNMATCHED, GOOD]) as srv:
        out = subprocess.run(
            [sys.executable, "-m", "ideaforge.cli", "implement", str(env), "raise the score", "--model", _model(srv),
             "--samples", "1", "--run", "--dir", str(camp)],
            capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "OPENAI_API_KEY": "k"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "score = 2.0000" in out.stdout
    store = Store.open_readonly(camp)
    calls = store.execute("SELECT purpose, reply FROM llm_calls ORDER BY id").fetchall()
    assert [c[0] for c in calls] == ["implement", "repair"]
    impl = store.implementations()[0]
    assert impl["status"] == "ok" and [a["stage"] for a in impl["attempts"]] == ["apply", "ok"]
    assert store.trials()[0]["outcome"] == "evaluated"
