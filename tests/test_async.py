"""`--mode evolve-async`: ideas asked as slots free, the budget of evolve, batches recorded once,
generations read as epochs by status and the report, and a SIGKILLed controller resumed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_search import quadratic_env  # the synthetic landscape of the search tests
from ideaforge.envs import load_env
from ideaforge.errors import ConfigError
from ideaforge.execute.local import LocalExecutor
from ideaforge.ideate import offline_ideator
from ideaforge.search.async_loop import SEED_STRIDE, AsyncPhase
from ideaforge.search.campaign import Campaign
from ideaforge.search.loop import Search, SearchConfig
from ideaforge.stats import leaderboard, trial_epochs
from ideaforge.store import Store

TRAIN = """
import json, math, os, random, time
LR = 0.1  # learning rate
WIDTH = 8  # channels
DEPTH = 2  # layers
seed = int(os.environ["IDEAFORGE_SEED"])
LOG = None
if LOG:  # trials count their runs outside the trial (only where the test runs them unjailed)
    with open(LOG, "a") as f:
        f.write(os.environ["IDEAFORGE_OUT"] + "\\n")
time.sleep(SLEEP)
score = -math.log2(LR / 0.4) ** 2 - math.log2(WIDTH / 32) ** 2 - (DEPTH - 4) ** 2 + random.Random(seed).gauss(0, 0.05)
print(f"METRIC step=1 score={score}")
json.dump({"score": score}, open(os.path.join(os.environ["IDEAFORGE_OUT"], "ckpt.json"), "w"))
"""


def make_env(root: Path, sleep: float, log: Path | None = None) -> Path:
    log_path = str(log) if log else None
    return quadratic_env(root, TRAIN.replace("SLEEP", repr(sleep)).replace("LOG = None", f"LOG = {log_path!r}"))


EPOCHS, IDEAS = 2, 4


@pytest.fixture(scope="module")
def async_campaign(tmp_path_factory) -> Path:
    """One finished evolve-async campaign, shared by the checks below (a few seconds)."""
    tmp = tmp_path_factory.mktemp("async")
    spec = load_env(make_env(tmp / "env", sleep=0.1))
    cfg = SearchConfig(mode="evolve-async", epochs=EPOCHS, ideas=IDEAS, confirm_top=1, confirm_seeds=2)
    camp = Campaign.create(tmp / "camp", spec, {"command": "run", "search": cfg.__dict__})
    with LocalExecutor(slots=2) as ex:
        assert Search(camp, ex, offline_ideator(spec), cfg).run() == "finished"
    camp.close()
    return tmp / "camp"


def check_batches(store: Store, epochs: int, ideas: int) -> None:
    """The budget asked for exactly; each batch numbered once, its generation from the ideas asked before it,
    its ideas stored with it (idea.epoch = generation, origin names the batch); no idea twice."""
    batches = store.batches()
    assert sum(b["asked"] for b in batches) == epochs * ideas
    numbers = sorted({b["batch"] for b in batches})
    assert numbers == list(range(len(numbers)))
    asked = 0
    for n in numbers:
        rows = [b for b in batches if b["batch"] == n]
        assert {b["generation"] for b in rows} == {asked // ideas}
        asked += sum(b["asked"] for b in rows)
        assert (asked - 1) // ideas == rows[0]["generation"], "a batch spans two generations"
    stored = store.ideas()
    assert len(stored) == sum(b["kept"] for b in batches)
    by_key = {(b["batch"], b["kind"]): b for b in batches}
    for kind_batch, b in by_key.items():
        mine = [i for i in stored if (i["origin"]["batch"], i["kind"]) == kind_batch]
        assert len(mine) == b["kept"] and all(i["epoch"] == b["generation"] for i in mine)
    titles = [i["title"] for i in stored]
    assert len(titles) == len(set(titles)), "an idea was proposed twice"


def test_async_keeps_to_the_budget_with_contemporaneous_baselines(async_campaign):
    store = Store.open_readonly(async_campaign)
    assert store.get_meta("finished") is True and store.get_meta("epochs_done") == EPOCHS
    check_batches(store, EPOCHS, IDEAS)
    batches = store.batches()
    # Ideas from the baseline alone until something finished; then exploit and explore, annealed.
    assert all(b["kind"] == "initial" for b in batches if b["finished"] == 0)
    assert {"exploit", "explore"} <= {b["kind"] for b in batches}
    assert all(0.5 <= b["exploit_share"] <= 0.8 for b in batches if b["kind"] != "initial")
    ideas = store.ideas()
    assert all(i["parents"] for i in ideas if i["kind"] == "exploit")
    # One candidate trial per implemented idea; baselines re-run for each later generation and the confirmation.
    impls = store.implementations()
    candidates = store.trials(role="candidate")
    assert len(candidates) == sum(i["status"] == "ok" for i in impls) == len(ideas)
    epochs = trial_epochs(store)
    tagged = sorted(epochs[t["id"]] for t in store.trials(role="baseline") if t["id"] in epochs)
    assert tagged == [g for g in range(1, EPOCHS)] + [EPOCHS] * 2
    _, rows = leaderboard(store, "max")
    assert rows[0]["stats"].n == 2 and rows[0]["beats"]
    # No barrier: ideas were asked for while candidate trials ran (evolve ideates only between epochs).
    assert any(t["started"] < b["created"] < t["ended"] for b in batches for t in candidates)
    store.close()


def test_status_and_report_read_an_async_campaign(async_campaign, cli, tmp_path):
    rc, out, err = cli("status", str(async_campaign))
    assert rc == 0, err
    table = out[out.index("epoch ideas executed"):].splitlines()[1:1 + EPOCHS]
    assert [int(line.split()[0]) for line in table] == list(range(EPOCHS))  # generations, as epochs
    assert sum(int(line.split()[1]) for line in table) == EPOCHS * IDEAS
    html = tmp_path / "report.html"
    rc, out, err = cli("report", str(async_campaign), "--out", str(html))
    assert rc == 0, err
    text = html.read_text()
    assert "evolve-async" in text and f"{EPOCHS} / {EPOCHS}" in text


def test_bad_mode_combinations_are_refused(cli, tmp_path):
    with pytest.raises(ConfigError, match="unknown search mode"):
        SearchConfig(mode="async")
    with pytest.raises(ConfigError, match="evolve-async only"):
        SearchConfig(mode="best-of-n", ahead=2)
    env = make_env(tmp_path / "env", sleep=0)
    rc, _, err = cli("run", "--env", str(env), "--mode", "evolve", "--ahead", "1", "--offline", "--dir", "c")
    assert rc == 2 and "--ahead applies to --mode evolve-async only" in err
    assert not (tmp_path / "c").exists()


class Counting:
    """The offline ideator, noting the batch of every call (its context's seed carries it)."""

    def __init__(self, spec):
        self.base = offline_ideator(spec)
        self.name = "offline"
        self.asked: list[int] = []

    def _note(self, ctx) -> None:
        self.asked.append(ctx.seed % SEED_STRIDE)

    def initial(self, ctx, n):
        self._note(ctx)
        return self.base.initial(ctx, n)

    def exploit(self, ctx, parents, n):
        self._note(ctx)
        return self.base.exploit(ctx, parents, n)

    def explore(self, ctx, history, n):
        self._note(ctx)
        return self.base.explore(ctx, history, n)


def test_resume_never_asks_again_for_a_stored_batch(tmp_path):
    """A batch stored before a crash is not asked for again; its ideas are implemented and run on resume."""
    spec = load_env(make_env(tmp_path / "env", sleep=0))
    cfg = SearchConfig(mode="evolve-async", epochs=2, ideas=2, confirm_top=0)
    camp = Campaign.create(tmp_path / "camp", spec, {"command": "run", "search": cfg.__dict__})
    ideator = Counting(spec)
    with LocalExecutor(slots=2) as ex:
        phase = AsyncPhase(Search(camp, ex, ideator, cfg))
        ask = phase._next()
        assert ask is not None and ask.batch == 0 and ask.counts == {"initial": 2}
        phase._store(ask, phase._answer(ask))  # ... and the controller dies here
        camp.close()
        camp = Campaign.open(tmp_path / "camp")
        assert Search(camp, ex, ideator, cfg).run() == "finished"
    assert ideator.asked.count(0) == 1 and len(ideator.asked) == len(set(ideator.asked)), \
        f"a batch was asked for twice: {ideator.asked}"
    check_batches(camp.store, 2, 2)
    first = [i for i in camp.store.ideas() if i["origin"]["batch"] == 0]
    assert first and all(i["status"] == "implemented" for i in first)
    assert len(camp.store.trials(role="candidate")) == 4


# -- a model ideates and implements (fake server), smoke check on -------------------------------------
class ScriptedModel:
    """Answers ideation prompts with one fresh idea each, implementation prompts with an LR edit."""

    def __init__(self):
        self.kinds: list[str] = []
        self.n = 0

    def __call__(self, provider: str, req: dict) -> str:
        users = [m["content"] for m in req["messages"] if m["role"] == "user"]
        if "# The idea to implement" in users[0]:
            i = int(users[0].split("# The idea to implement", 1)[1].split("Variant q", 1)[1].split()[0])
            lr = 0.1 * 2 ** (i % 4 + 1)
            return (f"train.py\n<<<<<<< SEARCH\nLR = 0.1  # learning rate\n=======\nLR = {lr}  # learning rate\n"
                    ">>>>>>> REPLACE\n")
        text = users[-1]
        self.kinds.append("exploit" if "# Results so far" in text else "explore" if "# Ideas tried so far" in text
                          else "initial")
        self.n += 1
        return (f"[Idea] Variant q{self.n} r{self.n}\n[Description] s{self.n} t{self.n}\n"
                "[Code Changes] edit train.py\n[Hyperparameters] none\n[End]\n")


@pytest.mark.slow
def test_async_with_a_model_implements_while_trials_run(tmp_path, monkeypatch):
    from fakes.llm_server import FakeLLMServer
    from ideaforge.search.assemble import build_search

    monkeypatch.setenv("OPENAI_API_KEY", "test")
    spec = load_env(make_env(tmp_path / "env", sleep=0.4))
    model = ScriptedModel()
    with FakeLLMServer(model) as srv:
        cfg = SearchConfig(mode="evolve-async", epochs=2, ideas=3, confirm_top=0, samples=1, repairs=0,
                           model=f"openai-compatible:fake@{srv.openai_url}", smoke=True)
        camp = Campaign.create(tmp_path / "camp", spec, {"command": "run", "search": cfg.__dict__})
        with LocalExecutor(slots=2) as ex:
            assert build_search(camp, cfg, ex, log=lambda m: None).run() == "finished"
    store = camp.store
    check_batches(store, 2, 3)
    assert {"initial", "exploit", "explore"} <= set(model.kinds)
    ideas = store.ideas()
    assert all(i["status"] == "implemented" for i in ideas)
    calls = store.execute("SELECT started_at FROM llm_calls WHERE purpose = 'implement'").fetchall()
    assert len(calls) == len(ideas)
    # Ideation and implementation (its smoke run included) went on while candidate trials ran.
    candidates = store.trials(role="candidate")
    assert len(candidates) == len(ideas) and all(t["outcome"] == "evaluated" for t in candidates)
    assert any(t["started"] < c["started_at"] < t["ended"] for c in calls for t in candidates)


# -- kill -9 of the controller, real processes ----------------------------------------------------
def _count(camp: Path, what) -> int:
    try:
        store = Store.open_readonly(camp)
    except Exception:  # not created yet, or mid-migration
        return 0
    try:
        return what(store)
    except Exception:  # the table is not there yet
        return 0
    finally:
        store.close()


def _wait_until(cond, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for a kill point"
        time.sleep(0.02)


@pytest.mark.slow
def test_sigkill_mid_async_campaign_loses_nothing_and_runs_nothing_twice(tmp_path):
    runs = tmp_path / "runs.log"
    env = make_env(tmp_path / "env", sleep=0.3, log=runs)
    camp = tmp_path / "camp"
    epochs, ideas = 3, 4
    args = ["--env", str(env), "--dir", str(camp), "--mode", "evolve-async", "--epochs", str(epochs), "--ideas",
            str(ideas), "--confirm-top", "2", "--confirm-seeds", "2", "--slots", "2", "--offline"]
    # The trials log their runs outside the trial, which a jail forbids: this test is about the controller.
    environ = dict(os.environ, IDEAFORGE_JAIL="none")

    def start(*argv: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "ideaforge.cli", *argv], env=environ,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = start("run", *args)
    done = lambda s: s.trial_counts()["done"]  # noqa: E731
    # Kill points are states, not times: just created, mid-search (twice in quick succession, and
    # as batches are asked), and in the confirmation phase.
    points = [lambda: (camp / "campaign.db").exists(), lambda: _count(camp, done) >= 4, lambda: True,
              lambda: _count(camp, lambda s: len({b["batch"] for b in s.batches()})) >= 6,
              lambda: _count(camp, done) >= 12, lambda: _count(camp, lambda s: s.get_meta("confirm_set") is not None)]
    kills = 0
    for point in points:
        _wait_until(lambda: point() or proc.poll() is not None)
        if proc.poll() is not None:
            break
        proc.kill()
        proc.wait()
        kills += 1
        proc = start("resume", str(camp))
    assert proc.wait(timeout=180) == 0
    assert kills >= 4
    store = Store.open_readonly(camp)
    assert store.get_meta("finished") is True
    check_batches(store, epochs, ideas)
    impls = store.implementations()
    assert len({i["idea_id"] for i in impls}) == len(impls), "an idea was implemented twice"
    assert len(impls) == len(store.ideas())
    trials = store.trials()
    assert all(t["status"] == "done" and t["outcome"] == "evaluated" for t in trials)
    keys = [(t["implementation_id"], t["seed"], t["role"]) for t in trials]
    assert len(keys) == len(set(keys)), "a trial was queued twice"
    assert len(store.trials(role="candidate")) == len(impls)
    ran = sorted(os.path.realpath(p) for p in runs.read_text().split())
    assert ran == sorted(os.path.realpath(store.trial_dir(t["id"]) / "out") for t in trials), \
        "a trial ran twice or never"
    tagged = sorted(trial_epochs(store)[t["id"]] for t in store.trials(role="baseline") if t["id"] in trial_epochs(store))
    assert tagged == list(range(1, epochs)) + [epochs] * 2
    store.close()
