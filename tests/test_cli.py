"""The `ideaforge` command: help for every option, refused values, one numbering, plain output when piped."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from fakes.toyenv import make_toy_env
from ideaforge.cli import app
from ideaforge.cli.common import minutes_to_seconds
from ideaforge.errors import LLMError, MissingKey
from ideaforge.llm.choose import DEFAULT_MODEL, check_reachable, choose_model
from ideaforge.store import Store

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _cli(*argv: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The command as a user runs it: a subprocess whose stdout is a pipe."""
    e = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    return subprocess.run([sys.executable, "-m", "ideaforge.cli", *argv], cwd=cwd, env=e, capture_output=True,
                          text=True, timeout=300)


def _option_blocks(help_text: str) -> dict[str, str]:
    """--name -> its whole (wrapped) help entry, from click's plain help layout."""
    blocks: dict[str, str] = {}
    name = None
    for line in help_text.splitlines():
        m = re.match(r"^  (?:-\w, )?(--[\w-]+)", line)
        if m:
            name = m.group(1)
            blocks[name] = line
        elif name and line.startswith("    "):
            blocks[name] += " " + line.strip()
        else:
            name = None
    return blocks


# -- help ---------------------------------------------------------------------------------------------
def test_run_help_documents_every_option_with_default_and_unit(cli):
    rc, out, _ = cli("run", "--help")
    assert rc == 0
    blocks = _option_blocks(out)
    command = typer.main.get_command(app).commands["run"]
    names = {opt for p in command.params for opt in p.opts if opt.startswith("--")} - {"--help"}
    assert names <= set(blocks), f"options missing from the help: {names - set(blocks)}"
    for name in names - {"--offline"}:  # a flag's default is "off"
        assert "[default:" in blocks[name], f"{name} does not say its default: {blocks[name]}"
    units = {"--budget": "seconds", "--max-wall": "minutes", "--max-usd": "dollars", "--max-cpu-hours": "CPU-hours",
             "--max-gpu-hours": "GPU-hours", "--ideas": "per epoch", "--slots": "trials at once",
             "--dir": "runs/ENV-MODE-"}
    for name, unit in units.items():
        assert unit in blocks[name], f"{name} does not give its unit ({unit}): {blocks[name]}"
    # What a run costs, and the defaults from SearchConfig (one source of truth).
    assert "trials" in out and "--slots at a time" in out
    from ideaforge.search.loop import SearchConfig
    assert f"[default: {SearchConfig().epochs}]" in blocks["--epochs"]


def test_every_argument_and_option_of_every_command_has_help():
    root = typer.main.get_command(app)
    todo = [("", root)]
    while todo:
        prefix, group = todo.pop()
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                todo.append((f"{prefix}{name} ", cmd))
                continue
            assert cmd.help, f"`ideaforge {prefix}{name}` has no help"
            for p in cmd.params:
                assert getattr(p, "help", None), f"`ideaforge {prefix}{name}` {p.name} has no help"


# -- refused values -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [["--budget", "-5"], ["--budget", "0"], ["--slots", "0"], ["--epochs", "-1"],
                                 ["--ideas", "0"], ["--max-wall", "0"], ["--max-wall", "ten"], ["--max-usd", "-1"],
                                 ["--confirm-seeds", "0"], ["--baseline-seeds", "0"], ["--gpus", "a,b"]])
def test_impossible_values_exit_2_with_a_message_and_create_nothing(cli, tmp_path, bad):
    rc, out, err = cli("run", "--env", "nanogpt-cpu", "--offline", "--dir", str(tmp_path / "camp"), *bad)
    assert rc == 2, out + err
    assert bad[0] in err and ("must be" in err or "give" in err), err
    assert not (tmp_path / "camp").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv", [["baseline", "nanogpt-cpu", "--seeds", "0"], ["baseline", "nanogpt-cpu", "--budget", "0"],
                                  ["env", "check", "nanogpt-cpu", "--budget", "-1"], ["status", "x", "--top", "0"],
                                  ["implement", "nanogpt-cpu", "idea", "--samples", "0"], ["baseline"]])
def test_other_commands_refuse_bad_values_too(cli, tmp_path, argv):
    rc, _, err = cli(*argv)
    assert rc == 2 and "Error" in err, err
    assert list(tmp_path.iterdir()) == []


def test_max_wall_units():
    assert minutes_to_seconds("90") == 5400 and minutes_to_seconds("90m") == 5400
    assert minutes_to_seconds("45s") == 45 and minutes_to_seconds("1.5h") == 5400
    for bad in ("0", "-3", "ten", "5d"):
        with pytest.raises(typer.BadParameter):
            minutes_to_seconds(bad)


# -- the model endpoint, checked before anything is created ---------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", ["run", "implement"])
def test_model_server_not_running_is_an_error_before_a_campaign_exists(cli, tmp_path, command):
    model = f"openai-compatible:m@http://127.0.0.1:{_free_port()}/v1"
    argv = ["run", "--env", "nanogpt-cpu"] if command == "run" else ["implement", "nanogpt-cpu", "an idea"]
    rc, _, err = cli(*argv, "--model", model, "--dir", str(tmp_path / "camp"))
    assert rc == 2
    assert "Is the model server running" in err and "nothing is listening" in err, err
    assert not (tmp_path / "camp").exists()


def test_reachable_server_passes_and_model_choice(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        check_reachable(f"openai-compatible:m@http://127.0.0.1:{s.getsockname()[1]}/v1", timeout_s=5)
    with pytest.raises(LLMError, match="Is the model server running"):
        check_reachable(f"openai-compatible:m@http://127.0.0.1:{_free_port()}/v1")
    assert choose_model(None, environ={}) is None
    assert choose_model(None, offline=True, environ={"ANTHROPIC_API_KEY": "k"}) is None
    assert choose_model(None, environ={"ANTHROPIC_API_KEY": "k"}) == DEFAULT_MODEL
    assert choose_model(None, environ={"OPENAI_API_KEY": "k"}).startswith("openai:")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(MissingKey):
        choose_model("anthropic:claude-opus-4-5", environ={})


# -- output -----------------------------------------------------------------------------------------------
def test_piped_output_is_plain_lines_and_show_without_ideas(tmp_path):
    env = make_toy_env(tmp_path / "env")
    out = _cli("baseline", str(env), "--seeds", "2", "--slots", "2", "--dir", str(tmp_path / "camp"), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "\x1b[" not in out.stdout, "terminal control codes in piped output"
    assert re.search(r"trial 1 \(baseline, seed 0\): score = 1\.0000", out.stdout), out.stdout
    assert "[2/2 trials done, 0 running, 0 queued" in out.stdout and "ETA" in out.stdout
    show = _cli("show", str(tmp_path / "camp"), "1", cwd=tmp_path)
    assert show.returncode == 2 and "has no ideas yet" in show.stdout and "1..0" not in show.stdout


def test_campaign_lines_use_idea_ids_and_epochs_from_0(tmp_path):
    from test_search import quadratic_env  # the synthetic problem of the search tests

    env = quadratic_env(tmp_path / "env")
    camp = tmp_path / "camp"
    out = _cli("run", "--env", str(env), "--dir", str(camp), "--epochs", "2", "--ideas", "1", "--confirm-top", "1",
               "--confirm-seeds", "2", "--baseline-seeds", "2", "--slots", "2", "--offline", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "plan: 8 trials (2 baseline + 3 baseline re-runs + 2 epochs x 1 ideas + 1 x 1 confirmation runs)" in out.stdout
    assert "== epoch 0 (epochs 0..1) ==" in out.stdout and "== epoch 1 (epochs 0..1) ==" in out.stdout
    store = Store.open_readonly(camp)
    idea_of = {i["id"]: i["idea_id"] for i in store.implementations()}
    seen = re.findall(r"trial (\d+) \(idea (\d+), (candidate|confirm), seed \d+\)", out.stdout)
    assert len(seen) == 3
    for trial, idea, _ in seen:
        assert idea_of[store.trial(int(trial))["implementation_id"]] == int(idea)
    epochs = {i["epoch"] for i in store.ideas()}
    assert epochs == {0, 1}
    idea = seen[0][1]
    shown = _cli("show", str(camp), idea, cwd=tmp_path)
    assert shown.returncode == 0 and "train.out (last lines)" in shown.stdout and "METRIC" in shown.stdout


def test_status_wall_time_is_saved_while_a_campaign_runs(tmp_path):
    """`ideaforge status` reads elapsed_s: it must be written during epoch 0, not only after it."""
    from test_search import quadratic_env

    from ideaforge.envs import load_env
    from ideaforge.execute.local import LocalExecutor
    from ideaforge.ideate import offline_ideator
    from ideaforge.search.campaign import Campaign
    from ideaforge.search.loop import Search, SearchConfig

    spec = load_env(quadratic_env(tmp_path / "env"))
    camp = Campaign.create(tmp_path / "camp", spec)
    seen = []

    def on_event(kind, info):
        if kind == "epoch_done":
            seen.append(camp.store.get_meta("elapsed_s", 0.0))
    cfg = SearchConfig(epochs=1, ideas=2, confirm_top=0, baseline_seeds=2)
    with LocalExecutor(slots=2) as ex:
        Search(camp, ex, offline_ideator(spec), cfg, on_event=on_event).run()
    assert seen and seen[0] > 0


def test_tracker_counts_and_eta(tmp_path):
    """The live view's arithmetic: planned trials, running ones, and an ETA of remaining work ÷ slots."""
    from ideaforge.cli.progress import EVAL_SHARE, Tracker
    from ideaforge.envs import load_env
    from ideaforge.search.campaign import Campaign

    camp = Campaign.create(tmp_path / "camp", load_env(make_toy_env(tmp_path / "env")))
    ids = [camp.store.add_trial("baseline", seed=s, budget_s=10) for s in range(4)]
    tr = Tracker(camp, planned=4, slots=2, budget_s=10)
    per = 10 * (1 + EVAL_SHARE)  # no trial has finished: the budget plus a margin
    assert abs(tr.eta_s() - 4 * per / 2) < 0.5
    tr.handle("started", {"trial": ids[0], "pid": 1})
    assert "trial 1 (baseline, seed 0)" in tr.render().renderables[1].columns[0]._cells[0]
    assert camp.store.claim(ids[0])
    camp.store.finish_trial(ids[0], {"outcome": "evaluated", "metric": 1.0, "train_s": 9.0, "eval_s": 1.0})
    lines = tr.handle("finished", {"trial": ids[0], "outcome": "evaluated", "metric": 1.0, "train_s": 9.0, "eval_s": 1.0})
    assert lines[0].endswith("trial 1 (baseline, seed 0): score = 1.0000 (train 9.0 s, eval 1.0 s)")
    assert "[1/4 trials done, 0 running, 3 queued" in lines[1]
    assert tr.durations and tr.eta_s() < 4 * per / 2  # the finished trial took far less than the budget


def test_profile_option_and_env_prepare(tmp_path):
    """--profile reaches load_env (an unknown one is refused, naming the ones there are); `env prepare`
    of an environment without a [prepare] step says so and succeeds."""
    r = subprocess.run([sys.executable, "-m", "ideaforge.cli", "env", "show", "nanogpt-speedrun", "--profile", "tiny"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "profiles:  1gpu, tiny   (this view: tiny)" in r.stdout
    r = subprocess.run([sys.executable, "-m", "ideaforge.cli", "env", "show", "nanogpt-speedrun", "--profile", "huge"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "huge" in r.stdout + r.stderr
    env = make_toy_env(tmp_path / "env")
    r = subprocess.run([sys.executable, "-m", "ideaforge.cli", "env", "prepare", str(env)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "nothing to prepare" in r.stdout, r.stdout + r.stderr
