"""Replay (issue 11.6): a campaign recorded against a scripted model server replays, with no
server, to the same ideas, edits and trial set; a changed prompt fails with the miss error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fakes.llm_server import FakeLLMServer
from fakes.toyenv import make_toy_env
from ideaforge.errors import LLMError
from ideaforge.llm import CallRecord, complete
from ideaforge.llm.replay import replay_model, replayer, request_hash
from ideaforge.store import Store

SRC = str(Path(__file__).resolve().parents[1] / "src")


LINE = 'json.dump({"score": 1.0 + 0.01 * seed, "x": 0.0}, open(os.path.join(out, "ckpt.json"), "w"))'


def edit(x: float) -> str:
    return f"train.py\n<<<<<<< SEARCH\n{LINE}\n=======\n{LINE.replace('0.0}', f'{x}}}')}\n>>>>>>> REPLACE\n"


BROKEN = "train.py\n<<<<<<< SEARCH\nthis line is not in train.py\n=======\nnor this\n>>>>>>> REPLACE\n"


def idea(title: str, description: str) -> str:
    return f"[Idea] {title}\n[Description] {description}\n[Code Changes] edit train.py\n[Hyperparameters] none\n[End]\n"


class ToyResearcher:
    """Ideas by prompt kind; edits by idea title; one idea needs a repair (its first edit cannot apply)."""

    EDITS = {"Shift x up": edit(0.5), "Shift x a little": edit(0.2), "Shift x further": edit(0.8),
             "Small shift": edit(0.1)}

    def __call__(self, provider: str, req: dict) -> dict:
        users = [m["content"] for m in req["messages"] if m["role"] == "user"]
        first, text = users[0], users[-1]
        if "# The idea to implement" in first:
            title = first.split("# The idea to implement", 1)[1].strip().splitlines()[0]
            reply = BROKEN if title == "Shift x a little" and len(users) == 1 else self.EDITS[title]
        elif "# Results so far" in text:
            reply = idea("Shift x further", "build on the best: x up more")
        elif "# Ideas tried so far" in text:
            reply = idea("Small shift", "a different direction: x up a bit")
        else:
            reply = idea("Shift x up", "raise x to 0.5") + idea("Shift x a little", "raise x to 0.2")
        return {"text": "Here:\n" + reply, "input_tokens": len(json.dumps(req)) // 4, "output_tokens": len(reply) // 4}


def _cli(*argv: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    for k in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "IDEAFORGE_MODEL"):
        e.pop(k, None)
    return subprocess.run([sys.executable, "-m", "ideaforge.cli", *argv], cwd=cwd, env=e, capture_output=True,
                          text=True, timeout=300)


RUN = ("--epochs", "2", "--ideas", "2", "--baseline-seeds", "1", "--confirm-top", "1", "--confirm-seeds", "2",
       "--samples", "2", "--repairs", "1", "--budget", "5", "--slots", "2")


def _campaign(root: Path) -> dict:
    """What a replay must reproduce: ideas, edits, the trial set, and the distinct prompts asked."""
    s = Store.open_readonly(root)
    try:
        impls = {i["id"]: i for i in s.implementations()}
        ideas = {i["id"]: i for i in s.ideas()}
        trials = sorted((t["role"], t["seed"], t["outcome"], t["metric"],
                         impls[t["implementation_id"]]["diff"] if t["implementation_id"] else None)
                        for t in s.trials())
        calls = s.execute("SELECT model, system, messages, input_tokens, output_tokens, cost_usd FROM llm_calls").fetchall()
        return {
            "ideas": [(i["epoch"], i["kind"], i["title"], i["description"], i["status"]) for i in ideas.values()],
            "edits": sorted((ideas[i["idea_id"]]["title"], i["status"], i["diff"]) for i in impls.values()),
            "trials": trials,
            "prompts": {request_hash(c[1], json.loads(c[2])) for c in calls},
            "calls": calls,
        }
    finally:
        s.close()


@pytest.mark.slow
def test_a_recorded_campaign_replays_without_a_model(tmp_path):
    env = make_toy_env(tmp_path / "toy")
    with FakeLLMServer(ToyResearcher()) as srv:
        r = _cli("run", "--env", str(env), "--model", f"openai-compatible:fake@{srv.openai_url}",
                 "--dir", str(tmp_path / "rec"), *RUN, cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
    rec = _campaign(tmp_path / "rec")
    assert {i[2] for i in rec["ideas"]} == {"Shift x up", "Shift x a little", "Shift x further", "Small shift"}
    assert ("Shift x a little", "ok") in {e[:2] for e in rec["edits"]}  # implemented after a repair
    assert any(role == "candidate" for role, *_ in rec["trials"])

    # The server is gone: every call is answered from rec's campaign.db.
    r = _cli("run", "--env", str(env), "--replay", str(tmp_path / "rec"), "--dir", str(tmp_path / "new"), *RUN,
             cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 missed" in r.stdout
    new = _campaign(tmp_path / "new")
    for part in ("ideas", "edits", "trials", "prompts"):
        assert new[part] == rec[part], part
    # Replayed calls cost nothing and carry the recorded token counts.
    assert {c[0] for c in new["calls"]} == {replay_model(tmp_path / "rec")}
    assert all(c[5] == 0 for c in new["calls"])
    recorded_tokens = {(c[1], c[2]): (c[3], c[4]) for c in rec["calls"]}
    assert all(recorded_tokens[(c[1], c[2])] == (c[3], c[4]) for c in new["calls"])
    assert sum(c[3] for c in new["calls"]) > 0

    # A changed setting that changes a prompt (3 ideas asked for, not 2) misses, and says why.
    changed = [a if a != "2" or i != 3 else "3" for i, a in enumerate(RUN)]
    assert changed[2:4] == ["--ideas", "3"]
    r = _cli("run", "--env", str(env), "--replay", str(tmp_path / "rec"), "--dir", str(tmp_path / "miss"), *changed,
             cwd=tmp_path)
    assert r.returncode != 0
    err = r.stdout + r.stderr
    assert "replay miss (ideate:initial)" in err and "cannot call a model" in err, err
    assert "Nearest recorded call: 1 (ideate:initial); first difference: message 1 (user), line " in err, err
    assert "recorded 'Propose 2 novel ideas" in err and "now 'Propose 3 novel ideas" in err, err
    assert not (tmp_path / "miss" / "ideas").exists()


# -- the Replayer itself ------------------------------------------------------------------------
def _record(tmp_path: Path, calls: list[CallRecord]) -> Path:
    root = tmp_path / "rec"
    store = Store.create_or_open(root)
    for c in calls:
        store.add_llm_call(c)
    store.close()
    return root


MSG = [{"role": "user", "content": "implement the idea"}]


def test_identical_prompts_are_answered_in_recorded_order_then_miss(tmp_path):
    root = _record(tmp_path, [
        CallRecord("openai:gpt-5", "implement", "sys", MSG, "first", 10, 1),
        CallRecord("openai:gpt-5", "ideate:initial", "sys", [{"role": "user", "content": "ideas please"}], "ideas", 5, 2),
        CallRecord("openai:gpt-5", "implement", "sys", MSG, "second", 11, 2),
        CallRecord("openai:gpt-5", "implement", "sys", [{"role": "user", "content": "boom"}], None, error="LLMError: 500"),
    ])
    spec = replay_model(root)
    replayer(root, fresh=True)  # the CLI starts each replay run fresh; another test may have used this path
    seen = []
    a = complete(spec, MSG, system="sys", purpose="implement", recorder=seen.append)
    b = complete(spec, MSG, system="sys", purpose="implement", max_tokens=5, temperature=0.3)  # settings not matched
    assert (a.text, a.input_tokens, a.output_tokens, a.cost_usd) == ("first", 10, 1, 0.0)
    assert (b.text, b.input_tokens) == ("second", 11)
    assert seen[0].model == spec and seen[0].reply == "first" and seen[0].cost_usd == 0
    with pytest.raises(LLMError, match=r"recorded 2 time\(s\) and all were already answered"):
        complete(spec, MSG, system="sys", purpose="implement")
    with pytest.raises(LLMError, match="replayed failure of recorded call 4 .*500"):
        complete(spec, [{"role": "user", "content": "boom"}], system="sys", purpose="implement")
    with pytest.raises(LLMError) as e:
        complete(spec, [{"role": "user", "content": "ideas, please"}], system="sys", purpose="ideate:initial")
    msg = str(e.value)
    assert "replay miss (ideate:initial)" in msg and "Nearest recorded call: 2" in msg and "cannot call a model" in msg
    assert "first difference: message 1 (user), line 1: recorded 'ideas please', now 'ideas, please'" in msg
    with pytest.raises(LLMError, match=r"first difference: the system prompt, line 1: recorded 'sys', now 'other'"):
        complete(spec, [{"role": "user", "content": "ideas please"}], system="other", purpose="ideate:initial")
    assert len(replayer(root).misses) == 3


def test_replay_refuses_another_model_and_a_directory_without_a_campaign(cli, tmp_path):
    root = _record(tmp_path, [CallRecord("openai:gpt-5", "implement", "sys", MSG, "first", 10, 1)])
    env = make_toy_env(tmp_path / "toy")
    rc, out, err = cli("run", "--env", str(env), "--replay", str(root), "--model", "openai:gpt-5", "--dir", "x")
    assert rc == 2 and "give no --model" in err and not (tmp_path / "x").exists()
    rc, out, err = cli("run", "--env", str(env), "--replay", str(root), "--offline", "--dir", "x")
    assert rc == 2 and "give no --model or --offline" in err
    rc, out, err = cli("run", "--env", str(env), "--replay", str(tmp_path / "toy"), "--dir", "x")
    assert rc == 2 and "holds no campaign.db" in err and not (tmp_path / "x").exists()
    rc, out, err = cli("implement", str(env), "an idea", "--replay", str(tmp_path / "nowhere"), "--dir", "x")
    assert rc == 2 and "holds no campaign.db" in err and not (tmp_path / "x").exists()


def _diff(out: str) -> str:
    return "--- a/" + out.split("--- a/", 1)[1].split("\nreplay: ")[0].split("\nstored in")[0]


@pytest.mark.slow
def test_implement_replays_its_edit_and_reports_a_miss(cli, tmp_path, monkeypatch):
    for k in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "IDEAFORGE_MODEL"):
        monkeypatch.delenv(k, raising=False)
    env = make_toy_env(tmp_path / "toy")
    with FakeLLMServer(ToyResearcher()) as srv:
        rc, out, err = cli("implement", str(env), "Shift x a little", "--model", f"openai-compatible:fake@{srv.openai_url}",
                           "--dir", "rec", "--samples", "2", "--no-smoke")
        assert rc == 0, out + err
    recorded = _diff(out)
    assert '+json.dump({"score": 1.0 + 0.01 * seed, "x": 0.2}' in recorded
    # Two samples sent the same first prompt, and each repaired: both replayed from their queues.
    rc, out, err = cli("implement", str(env), "Shift x a little", "--replay", "rec", "--dir", "new", "--samples", "2",
                       "--no-smoke")
    assert rc == 0, out + err
    assert _diff(out) == recorded  # (how many attempts it took depends on which sample finished first)
    assert "$0.0000" in out and " 0 missed" in out
    # An idea nobody recorded: the implementer's miss is reported, exit 1. (--model replay:DIR is --replay DIR,
    # the directory made absolute.)
    rc, out, err = cli("implement", str(env), "Multiply the score by two", "--model", "replay:rec", "--dir", "miss",
                       "--samples", "1", "--no-smoke")
    assert rc == 1, out + err
    assert f"implementing with replay:{tmp_path.resolve() / 'rec'}:" in out
    assert "REPLAY FAILED: replay miss (implement): no recorded call has this prompt" in out
    assert "recorded 'Shift x a little', now 'Multiply the score by two'" in out
