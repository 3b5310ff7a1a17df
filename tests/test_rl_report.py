"""The RL section of `ideaforge report` and `ideaforge status`, on stores made by real short RL
runs (scripted policy, real trials), and the generic `ideaforge resume DIR` on a killed RL run."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fakes.rlenv import make_rl_env
from fakes.scripted_policy import ScriptedPolicy, scripted_loader
from test_rl import _counts, tiny_ideator  # noqa: F401  (tiny_ideator: the module's tiny transformers model)
from ideaforge.store import Store

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _idea(title: str, **settings: str) -> str:
    body = "".join(f"{k} = {v}\n" for k, v in settings.items())
    return f"[Idea] {title}\n" + (f"[Hyperparameters]\n{body}" if body else "") + "[End]"


LR4, LR2, W32, W16 = (_idea("Raise LR", LR="0.4"), _idea("Raise LR a little", LR="0.2"),
                      _idea("Wider", WIDTH="32"), _idea("Somewhat wider", WIDTH="16"))
BIAS, NONE = _idea("Add bias"), "no idea here at all"
# A group of 4 per step, collapsing onto LR as the reference's runs did:
# step 0: rewards 6, 6, 3, 0 (none); step 1: 6, 5, 6, 5; step 2: all LR = 0.4, reward 6.
SCHEDULE = [LR4, W32, BIAS, NONE, LR4, LR2, W32, W16, LR4, LR4, LR4, LR4]


def _run(tmp_path, loader, steps=3, **kw):
    from ideaforge.rl.loop import run_rl
    return run_rl(str(make_rl_env(tmp_path / "env")), "scripted", steps=steps, group=4, dir=tmp_path / "camp",
                  slots=2, policy_loader=loader, **kw)


@pytest.fixture(scope="module")
def camp(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("rlreport"), scripted_loader(SCHEDULE, []))


def test_stored_figures_match_the_analysis(camp):
    from ideaforge.report.rlview import rl_data
    from ideaforge.rl.analysis import clusters, step_metrics
    store = Store.open_readonly(camp)
    rl = rl_data(store)
    live = step_metrics(store)  # computed now, from the rollouts: the stored figures must agree
    assert [s["mean_reward"] for s in rl["steps"]] == pytest.approx([3.75, 5.5, 6.0])
    assert [s["max_reward"] for s in rl["steps"]] == pytest.approx([6.0, 6.0, 6.0])  # the mean rises, the max not
    assert [s["execution_rate"] for s in rl["steps"]] == [0.75, 1.0, 1.0]
    assert [s["distinct_ideas"] for s in rl["steps"]] == [3, 4, 1]
    assert [s["top_cluster_share"] for s in rl["steps"]] == [0.25, 0.5, 1.0]
    for stored, now in zip(rl["steps"], live):
        for k in ("mean_reward", "max_reward", "execution_rate", "mean_tokens", "distinct_ideas",
                  "mean_similarity", "top_cluster", "top_cluster_share", "clusters"):
            assert stored[k] == now[k], k
    assert rl["clusters"] == clusters(store)
    assert rl["clusters"]["LR"] == [1, 2, 4] and rl["clusters"]["(no idea)"] == [1, 0, 0]
    store.close()


def test_report_shows_rl_curves_and_clusters(camp):
    from ideaforge.report import write_report
    page = write_report(camp).read_text()
    section = page[page.index('<section id="rl">'):]
    section = section[:section.index("</section>")]
    for plot in ("plot-rl-reward", "plot-rl-exec", "plot-rl-length", "plot-rl-diversity", "plot-rl-clusters"):
        assert f'id="{plot}"' in section, plot
    reward = section[section.index('id="plot-rl-reward"'):section.index('id="plot-rl-exec"')]
    assert 'data-label="mean"' in reward and 'data-label="max"' in reward and "step 2: 6" in reward
    assert "step 0: 3.75" in reward
    bars = section[section.index('id="plot-rl-clusters"'):]
    lr = re.findall(r'data-cluster="LR"[^>]*><title>step (\d): (\d) of (\d) rollouts \((\d+)%\)', bars)
    assert lr == [("0", "1", "4", "25"), ("1", "2", "4", "50"), ("2", "4", "4", "100")]  # the collapse
    assert 'data-cluster="(no idea)"' in bars and 'data-cluster="WIDTH"' in bars
    assert len(re.findall(r'<tr data-step="\d">', section)) == 3


def test_status_prints_the_rl_steps(camp):
    from ideaforge.cli import app
    out = CliRunner().invoke(app, ["status", str(camp)], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    head = lines.index("RL steps (3 done):")
    rows = [ln.split() for ln in lines[head + 2:head + 5]]
    assert [r[:5] for r in rows] == [["0", "done", "4", "3.75", "6"], ["1", "done", "4", "5.5", "6"],
                                     ["2", "done", "4", "6", "6"]]
    assert rows[2][-1] == "LR" and any(ln.split()[-1:] == ["LR"] and ln.split()[:3] == ["1", "2", "4"] for ln in lines)


class _CrashingPolicy(ScriptedPolicy):
    """Fails its update of step 1: the run stops with step 1 in stage `updating`."""

    def update(self, *a, **kw):
        if sum(e[0] == "update" for e in self.log) == 1:
            raise RuntimeError("update crashed")
        return super().update(*a, **kw)


def test_report_of_an_unfinished_run_then_resumed(tmp_path):
    from ideaforge.report import load_campaign
    from ideaforge.report.html import render
    log: list = []
    with pytest.raises(RuntimeError, match="update crashed"):
        _run(tmp_path, lambda ideator, adapter: _CrashingPolicy(SCHEDULE, log))
    data = load_campaign(tmp_path / "camp", details=False)
    steps = data["rl"]["steps"]
    assert [(s["step"], s["status"], s["done"]) for s in steps] == [(0, "done", True), (1, "updating", False)]
    assert steps[1]["rollout_status"] == {"scored": 4} and data["rl"]["clusters"]["LR"] == [1]
    page = render(data)
    assert '<tr data-step="1"><td class="num">1</td><td>updating</td>' in page
    from ideaforge.report import read_state
    from ideaforge.rl import records as R
    before = read_state(tmp_path / "camp")["version"]
    store = Store.open_existing(tmp_path / "camp")
    R.set_stage(store, 1, "updating")  # a stage change alone (the update writes no trial or idea) ...
    store.close()
    assert read_state(tmp_path / "camp")["version"] != before  # ... refreshes the live view
    _run(tmp_path, scripted_loader(SCHEDULE, log), resume=True)  # finishes steps 1 and 2, samples nothing again
    data = load_campaign(tmp_path / "camp", details=False)
    assert [s["mean_reward"] for s in data["rl"]["steps"]] == pytest.approx([3.75, 5.5, 6.0])
    assert sum(e[2] for e in log if e[0] == "sample") == 12


def test_a_search_campaign_has_no_rl_section(tmp_path):
    from ideaforge.report import load_campaign
    from ideaforge.report.html import render
    from ideaforge.report.rlview import rl_data, rl_status_lines
    store = Store.create_or_open(tmp_path / "c")
    assert rl_data(store) is None and rl_status_lines(store) == []
    page = render(load_campaign(tmp_path / "c", details=False))
    store.close()
    assert '<section id="summary">' in page and 'id="rl"' not in page


# -- the generic `ideaforge resume DIR` on a killed RL run ---------------------------------------------
@pytest.mark.slow
def test_generic_resume_finishes_a_killed_rl_run(tmp_path, tiny_ideator):
    """SIGKILL while step 1's trials run, then `ideaforge resume DIR` (not `rl --resume`): every rollout
    sampled once, every trial run once, the run finished and its summary printed."""
    runs = tmp_path / "runs.log"
    env = make_rl_env(tmp_path / "env", sleep_s=0.8, runs_log=runs)
    camp = tmp_path / "camp"
    # Unjailed (IDEAFORGE_JAIL=none): the trials' runs.log lines are how the test counts runs, and a
    # jailed trial cannot write to the test's directory. Isolation is tested in test_jail.py.
    penv = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
                IDEAFORGE_JAIL="none")
    proc = subprocess.Popen([sys.executable, "-m", "ideaforge.rl", str(env), "--ideator", str(tiny_ideator),
                             "--dir", str(camp), "--steps", "2", "--group", "6", "--slots", "1",
                             "--max-new-tokens", "60", "--gen-batch", "3", "--lr", "3e-3"],
                            env=penv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while True:  # condition: step 1's rollouts all recorded and one of its trials running
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "step 1 never reached a running trial"
        try:
            c = _counts(camp)
        except sqlite3.OperationalError:  # not created or not migrated yet
            c = {"steps": {}}
        if c["steps"].get(1) == "executing" and c["rollouts"] == 12 and c["running"]:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert _counts(camp)["steps"] == {0: "done", 1: "executing"}

    out = subprocess.run([sys.executable, "-m", "ideaforge.cli", "resume", str(camp)], env=penv,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "step 2/2: executing" in out.stdout and "clusters" in out.stdout
    c = _counts(camp)
    assert c["steps"] == {0: "done", 1: "done"} and c["calls"] == c["rollouts"] == 12  # sampled once
    store = Store.open_readonly(camp)
    trials = store.trials(role="candidate")
    assert all(t["status"] == "done" and t["attempt"] == 0 for t in trials)
    ok = [i for i in store.implementations() if i["status"] == "ok"]
    assert sorted(t["implementation_id"] for t in trials) == sorted(i["id"] for i in ok)  # one trial per edit
    assert len(runs.read_text().splitlines()) == len(store.trials())  # every trial ran exactly once
    assert store.get_meta("rl_finished") is True
    from ideaforge.report.rlview import rl_data
    assert [s["done"] for s in rl_data(store)["steps"]] == [True, True]
    store.close()


def test_steps_stored_without_cluster_counts_still_render(camp):
    """A run recorded before the loop kept cluster counts: its curves draw, its bars skip those steps."""
    from ideaforge.report.rlview import cluster_table, rl_data, rl_section
    store = Store.open_readonly(camp)
    rl = rl_data(store)
    store.close()
    rl["steps"][0]["clusters"] = None
    rl["clusters"] = cluster_table(rl["steps"])
    html = rl_section(rl)
    bars = html[html.index('id="plot-rl-clusters"'):]
    assert rl["clusters"]["LR"] == [2, 4] and "<title>step 0:" not in bars and "<title>step 1: 2 of 4" in bars
    assert "step 0: 3.75" in html  # the reward curve keeps step 0
