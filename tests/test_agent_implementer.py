"""Coding agents as implementers, driven by a fake agent CLI (tests/fakes/fake_agent.py) through the
real jail: a correct edit trains and evaluates via `ideaforge implement --implementer agent:CMD --run`;
a hanging agent is killed at its time cap; hidden, read-only and symlinked paths are refused with the
rule and nothing outside the copy changes; the agent's cost and transcript are stored."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fakes.toyenv import make_toy_env
from ideaforge.envs import load_env
from ideaforge.envs.workspace import read_files
from ideaforge.execute.jail import isolation
from ideaforge.implement.agent import (AgentImplementer, AgentLimits, agent_argv, parse_agent, parse_usage)
from ideaforge.search.assemble import AgentSandbox
from ideaforge.store import Store

FAKE = Path(__file__).parent / "fakes" / "fake_agent.py"


def _agent(mode: str, *extra: str) -> str:
    return "agent:" + shlex.join([sys.executable, str(FAKE), "--mode", mode, *extra])


@pytest.fixture
def toy(tmp_path):
    spec = load_env(make_toy_env(tmp_path / "env"))
    return spec, read_files(spec)


def _implementer(spec, files, agent, calls, *, repairs=0, timeout_s=60.0, environ=None):
    return AgentImplementer(spec, files, spec.root, agent, AgentSandbox(), repairs=repairs,
                            limits=AgentLimits(timeout_s=timeout_s), recorder=calls.append,
                            environ={**os.environ, **(environ or {})})


def _env_files(spec) -> dict[str, bytes]:
    return {p.relative_to(spec.root).as_posix(): p.read_bytes() for p in spec.root.rglob("*") if p.is_file()}


def test_correct_edit_passes_with_its_cost_and_transcript_recorded(toy):
    spec, files = toy
    calls = []
    env = {"FAKE_AGENT_KEY": "k-123", "FAKE_SECRET": "s-456", "IDEAFORGE_AGENT_KEYS": "FAKE_AGENT_KEY"}
    result = _implementer(spec, files, _agent("edit"), calls, environ=env).implement("raise the score")
    assert result.ok, result.error
    assert list(result.files) == ["train.py"] and '"score": 2.0 + 0.01 * seed' in result.files["train.py"]
    assert "+json.dump({\"score\": 2.0" in result.diff
    (call,) = calls
    assert call.purpose == "implement:agent" and call.model == _agent("edit")
    assert call.cost_usd == pytest.approx(0.0123) and (call.input_tokens, call.output_tokens) == (1200, 345)
    assert "raise the score" in call.messages[0]["content"] and "train.py" in call.messages[0]["content"]
    env_line = next(line for line in call.reply.splitlines() if line.startswith("env: "))
    assert "FAKE_AGENT_KEY" in env_line.split() and "FAKE_SECRET" not in env_line.split()  # its key alone
    files_line = next(line for line in call.reply.splitlines() if line.startswith("files: "))
    assert "helper.py" in files_line and "evaluate.py" not in files_line and "eval_secret.txt" not in files_line
    assert "$0.0123" in result.attempts[0].reply and result.attempts[0].stage == "ok"


@pytest.mark.parametrize("mode, rule", [
    ("hidden", "evaluate.py is hidden"),
    ("visible", "helper.py is read-only"),
    ("symlink", "train.py is a symbolic link"),
])
def test_forbidden_paths_are_refused_with_the_rule_and_nothing_outside_changes(toy, mode, rule):
    spec, files = toy
    before = _env_files(spec)
    calls = []
    target = spec.root / "evaluate.py"  # the real evaluator: the jail must keep the agent off it
    jailed = isolation() == "bubblewrap"  # unjailed (IDEAFORGE_JAIL=none) nothing stops it: no escape attempt then
    extra = ("--target", str(target)) if jailed else ()
    result = _implementer(spec, files, _agent(mode, *extra), calls).implement("raise the score")
    assert not result.ok
    assert [a.stage for a in result.attempts] == ["apply"]
    assert rule in result.attempts[0].error and "nothing was applied" in result.attempts[0].error
    assert _env_files(spec) == before
    if mode == "hidden" and jailed:
        assert f"could not write {target}" in calls[0].reply


def test_a_refusal_is_sent_back_for_a_repair_round(toy):
    spec, files = toy
    calls = []
    result = _implementer(spec, files, _agent("visible"), calls, repairs=1).implement("raise the score")
    assert [a.stage for a in result.attempts] == ["apply", "apply"]
    assert "helper.py is read-only" in calls[1].messages[0]["content"]  # the repair prompt carries the rule


@pytest.mark.slow
def test_a_hanging_agent_is_killed_at_its_time_cap(toy):
    spec, files = toy
    calls = []
    marker = f"fake-agent-child-{os.getpid()}-{id(calls)}"
    result = _implementer(spec, files, _agent("hang", "--target", marker), calls, repairs=2,
                          timeout_s=3).implement("raise the score")
    assert not result.ok
    assert result.attempts[0].stage == "agent" and "time cap" in result.attempts[0].error
    assert len(result.attempts) == 1  # the time is spent: no repair round starts
    assert 3 <= calls[0].latency_s < 30 and "thinking ..." in calls[0].reply
    assert calls[0].error and "time cap" in calls[0].error
    assert not _running(marker)  # the agent's child died with it (the tree is killed, not just the agent)


def _running(marker: str) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and marker.encode() in (p / "cmdline").read_bytes():
                out.append(int(p.name))
        except OSError:
            continue
    return out


def test_usage_parsers():
    claude = '{"type":"result","total_cost_usd":0.25,"num_turns":7,"is_error":false,"result":"ok",' \
             '"usage":{"input_tokens":10,"cache_read_input_tokens":90,"output_tokens":5}}'
    u = parse_usage(claude)
    assert (u.cost_usd, u.turns, u.input_tokens, u.output_tokens, u.final) == (0.25, 7, 100, 5, "ok")
    codex = "\n".join(['{"type":"turn.completed","usage":{"input_tokens":100,"output_tokens":20}}',
                       '{"type":"item.completed","item":{"type":"agent_message","text":"done"}}',
                       '{"type":"turn.completed","usage":{"input_tokens":50,"output_tokens":10}}'])
    u = parse_usage(codex)
    assert (u.cost_usd, u.turns, u.input_tokens, u.output_tokens, u.final) == (None, 2, 150, 30, "done")
    u = parse_usage("Tokens: 2.3k sent, 150 received. Cost: $0.0100 message, $0.0340 session.")
    assert u.cost_usd == pytest.approx(0.034)


def test_named_agents_get_their_caps_and_keys(tmp_path):
    a = parse_agent("agent:claude-code:claude-sonnet-4-5")
    argv = agent_argv(a, "PROMPT", AgentLimits(max_turns=9), 1.5, tmp_path, ["train.py"], jailed=True)
    assert argv[:2] == ["claude", "-p"] and argv[-1] == "PROMPT"
    assert argv[argv.index("--max-turns") + 1] == "9" and argv[argv.index("--max-budget-usd") + 1] == "1.5000"
    assert argv[argv.index("--permission-mode") + 1] == "bypassPermissions"
    unjailed = agent_argv(a, "P", AgentLimits(), 1.0, tmp_path, ["train.py"], jailed=False)
    assert unjailed[unjailed.index("--permission-mode") + 1] == "acceptEdits"
    codex = agent_argv(parse_agent("agent:codex"), "P", AgentLimits(), 1.0, tmp_path, [], jailed=True)
    assert codex[:2] == ["codex", "exec"] and "--json" in codex
    aider = agent_argv(parse_agent("agent:aider:gpt-5"), "P", AgentLimits(), 1.0, tmp_path, ["train.py"], jailed=True)
    assert aider[-1] == "train.py" and aider[aider.index("--message") + 1] == "P"
    from ideaforge.errors import MissingKey
    from ideaforge.implement.agent import agent_keys

    assert agent_keys(parse_agent("agent:codex"), {"OPENAI_API_KEY": "o", "ANTHROPIC_API_KEY": "a"}) == {"CODEX_API_KEY": "o"}
    assert agent_keys(a, {"OPENAI_API_KEY": "o", "ANTHROPIC_API_KEY": "a"}) == {"ANTHROPIC_API_KEY": "a"}
    with pytest.raises(MissingKey):
        agent_keys(a, {"OPENAI_API_KEY": "o"})


@pytest.mark.slow
def test_cli_implement_with_an_agent_trains_and_evaluates(tmp_path):
    env = make_toy_env(tmp_path / "env")
    camp = tmp_path / "camp"
    out = subprocess.run(
        [sys.executable, "-m", "ideaforge.cli", "implement", str(env), "raise the score",
         "--implementer", _agent("edit"), "--run", "--dir", str(camp)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "score = 2.0000" in out.stdout and "$0.0123" in out.stdout
    store = Store.open_readonly(camp)
    assert [tuple(r) for r in store.execute("SELECT purpose, model, cost_usd FROM llm_calls")] == [
        ("implement:agent", _agent("edit"), pytest.approx(0.0123))]
    impl = store.implementations()[0]
    assert impl["status"] == "ok" and [a["stage"] for a in impl["attempts"]] == ["ok"]
    assert store.trials()[0]["outcome"] == "evaluated"


@pytest.mark.slow
def test_cli_run_campaign_implements_model_ideas_with_the_agent(tmp_path):
    """`ideaforge run --model M --implementer agent:CMD`: the model ideates, the agent implements,
    and the choice is saved with the campaign (so `resume` keeps it)."""
    from fakes.llm_server import FakeLLMServer

    env = make_toy_env(tmp_path / "env")
    camp = tmp_path / "camp"
    reply = "[Idea] Higher score\n[Description] raise the score\n[Code Changes] edit train.py\n" \
            "[Hyperparameters] none\n[End]\n"
    with FakeLLMServer(lambda provider, req: reply) as srv:
        out = subprocess.run(
            [sys.executable, "-m", "ideaforge.cli", "run", "--env", str(env), "--dir", str(camp),
             "--model", f"openai-compatible:fake@{srv.openai_url}", "--implementer", _agent("edit"),
             "--epochs", "1", "--ideas", "1", "--baseline-seeds", "1", "--confirm-top", "0", "--slots", "1"],
            capture_output=True, text=True, timeout=300, env={**os.environ, "OPENAI_API_KEY": "k"})
    assert out.returncode == 0, out.stdout + out.stderr
    store = Store.open_readonly(camp)
    purposes = [r[0] for r in store.execute("SELECT purpose FROM llm_calls ORDER BY id")]
    assert "implement:agent" in purposes and "implement" not in purposes
    impl = store.implementations()[0]
    assert impl["status"] == "ok" and '"score": 2.0' in impl["diff"]
    scores = sorted(t["metric"] for t in store.trials() if t["outcome"] == "evaluated")
    assert scores == [pytest.approx(1.0), pytest.approx(2.0)]
    assert store.get_meta("config")["search"]["implementer"] == _agent("edit")


def test_the_copy_diff_ignores_scratch_and_refuses_new_files_outside_editable(toy, tmp_path):
    from ideaforge.errors import EditRefused
    from ideaforge.implement.agent import collect_changes, lay_out_copy

    spec, files = toy
    work = tmp_path / "work"
    pristine = lay_out_copy(spec, spec.root, work, {})
    assert sorted(pristine) == ["helper.py", "train.py"] and not (work / "evaluate.py").exists()
    (work / "__pycache__").mkdir()
    (work / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0\1")
    (work / ".aider.chat.history.md").write_text("chat")
    assert collect_changes(spec, pristine, files, work) == {}
    (work / "train.py").write_text(files["train.py"] + "# tuned\n")
    assert collect_changes(spec, pristine, files, work) == {"train.py": files["train.py"] + "# tuned\n"}
    (work / "notes.md").write_text("my plan")
    with pytest.raises(EditRefused, match="notes.md may not be created"):
        collect_changes(spec, pristine, files, work)
    (work / "notes.md").unlink()
    (work / "helper.py").unlink()
    with pytest.raises(EditRefused, match="helper.py is read-only"):
        collect_changes(spec, pristine, files, work)
