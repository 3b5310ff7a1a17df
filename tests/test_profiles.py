"""Environment profiles: `[profile.NAME]` tables override run settings, variables and resources,
are validated like the rest of the spec, and their variables reach training, evaluation and prepare."""

from __future__ import annotations

import json

import pytest

from fakes.toyenv import make_toy_env
from ideaforge.envs import load_env
from ideaforge.envs.workspace import ensure_prepared, prepare_key
from ideaforge.errors import EnvError
from ideaforge.execute.local import LocalExecutor
from ideaforge.search.campaign import Campaign, TrialRunner

PROFILES = """
[profile.tiny]
description = "a quick CPU run"
budget_s = 2
timeout_s = 20
env = { TOY_X = "7", TOY_MODE = "tiny" }

[profile.big]
budget_s = 100
command = "python train.py --big"
cpus = 2
gpus = 1
memory_gb = 3.5
"""


def _env(tmp_path, extra=PROFILES, **kw):
    return make_toy_env(tmp_path / "env", extra_toml=extra, **kw)


def test_plain_load_ignores_profiles_but_lists_them(tmp_path):
    spec = load_env(_env(tmp_path))
    assert spec.profile is None and spec.env == {}
    assert spec.profiles == ("tiny", "big")
    assert spec.budget_s == 5 and spec.run_command == "python train.py" and spec.gpus == 0


def test_profile_overrides_run_settings_resources_and_variables(tmp_path):
    root = _env(tmp_path)
    tiny = load_env(root, profile="tiny")
    assert (tiny.profile, tiny.budget_s, tiny.timeout_s) == ("tiny", 2.0, 20.0)
    assert tiny.env == {"TOY_X": "7", "TOY_MODE": "tiny"}
    assert tiny.run_command == "python train.py" and tiny.cpus == 1
    big = load_env(root, profile="big")
    assert big.run_command == "python train.py --big"
    assert (big.cpus, big.gpus, big.memory_gb) == (2, 1, 3.5)
    # budget without timeout: the base timeout (30 s) is dropped for the default rule, 3x the budget
    assert big.budget_s == 100 and big.timeout_s == 300
    assert big.env == {}


def test_profile_is_part_of_the_fingerprint_and_of_the_prepare_key(tmp_path):
    root = _env(tmp_path)
    plain, tiny, big = load_env(root), load_env(root, profile="tiny"), load_env(root, profile="big")
    assert len({plain.fingerprint(), tiny.fingerprint(), big.fingerprint()}) == 3
    assert load_env(root, profile="tiny").fingerprint() == tiny.fingerprint()
    # prepare output depends on the variables a profile passes, not on its name alone
    assert prepare_key(tiny) != prepare_key(plain)
    assert prepare_key(big) != prepare_key(tiny)


@pytest.mark.parametrize("extra, message", [
    ("[profile.tiny]\nbudget = 3\n", "unknown field 'budget' in [profile.tiny]"),
    ("[profile.tiny]\nbudget_s = \"3\"\n", "[profile.tiny] budget_s = '3' should be a int or float"),
    ("[profile.tiny]\ngpus = 1.5\n", "[profile.tiny] gpus = 1.5 should be a int"),
    ("[profile.tiny]\nenv = { N = 3 }\n", "env.N = 3 should be a string"),
    ("[profile.tiny]\nenv = { IDEAFORGE_OUT = \"/tmp\" }\n", "env.IDEAFORGE_OUT is set by ideaforge"),
    ("[profile.tiny]\nenv = { CUDA_VISIBLE_DEVICES = \"0\" }\n", "env.CUDA_VISIBLE_DEVICES is set by ideaforge"),
    ("[profile.tiny]\nenv = \"X=1\"\n", "env = 'X=1' should be a dict"),
    ("[profile.tiny.run]\nbudget_s = 3\n", "unknown field 'run' in [profile.tiny]"),
    ("[profile]\ntiny = 3\n", "profile.tiny must be a table"),
])
def test_malformed_profiles_are_explained_even_when_not_chosen(tmp_path, extra, message):
    root = _env(tmp_path, extra)
    with pytest.raises(EnvError) as e:
        load_env(root)
    assert message in str(e.value)
    assert str(root / "ideaforge.toml") in str(e.value)


def test_profile_checks_still_apply_after_merging(tmp_path):
    root = _env(tmp_path, "[profile.bad]\nbudget_s = 50\ntimeout_s = 40\n[profile.neg]\ncpus = 0\n")
    with pytest.raises(EnvError, match="timeout_s = 40.0 must exceed budget_s = 50.0"):
        load_env(root, profile="bad")
    with pytest.raises(EnvError, match=r"\[resources\] needs cpus >= 1"):
        load_env(root, profile="neg")


def test_unknown_profile_names_the_known_ones(tmp_path):
    with pytest.raises(EnvError, match=r"no \[profile.huge\] in this environment \(profiles: tiny, big\)"):
        load_env(_env(tmp_path), profile="huge")
    with pytest.raises(EnvError, match=r"profiles: none"):
        load_env(make_toy_env(tmp_path / "plain"), profile="tiny")


TRAIN_ECHO = """
import json, os
out = os.environ["IDEAFORGE_OUT"]
json.dump({"score": float(os.environ.get("TOY_X", "0")), "budget": os.environ["IDEAFORGE_BUDGET_S"]},
          open(os.path.join(out, "ckpt.json"), "w"))
"""
# The evaluator reads the profile's variable too: score = train's TOY_X + 100 * eval's TOY_X.
EVAL_ECHO = """
import json, os
ck = json.load(open(os.path.join(os.environ["IDEAFORGE_OUT"], "ckpt.json")))
x = float(os.environ.get("TOY_X", "0"))
json.dump({"status": "ok", "metrics": {"score": ck["score"] + 100 * x, "budget": float(ck["budget"])}},
          open(os.environ["IDEAFORGE_RESULT"], "w"))
"""


def test_profile_variables_reach_training_and_evaluation_and_the_campaign_records_the_profile(tmp_path):
    root = _env(tmp_path, train=TRAIN_ECHO)
    (root / "evaluate.py").write_text(EVAL_ECHO)
    camp = Campaign.create(tmp_path / "camp", load_env(root, profile="tiny"))
    tid = camp.store.add_trial("candidate", seed=0, budget_s=camp.spec.budget_s)
    with LocalExecutor(slots=1) as ex:
        TrialRunner(camp, ex).drain()
    t = camp.store.trial(tid)
    assert t["outcome"] == "evaluated", t["reason"]
    assert t["metric"] == 707.0
    assert t["metrics"]["budget"] == 2.0  # the profile's budget, not the base 5 s
    reopened = Campaign.open(camp.root)
    assert reopened.spec.profile == "tiny" and reopened.spec.env["TOY_X"] == "7"
    assert not reopened.env_changed()


def test_profile_variables_reach_prepare_and_profiles_prepare_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("IDEAFORGE_CACHE", str(tmp_path / "cache"))
    root = _env(tmp_path, PROFILES + '\n[prepare]\ncommand = "python -c \\"import os; '
                "open(os.environ['IDEAFORGE_PREPARED'] + '/mode', 'w').write(os.environ.get('TOY_MODE', 'full'))\\\"\"\n")
    tiny = ensure_prepared(load_env(root, profile="tiny"), log=lambda m: None)
    full = ensure_prepared(load_env(root), log=lambda m: None)
    assert tiny != full
    assert (tiny / "mode").read_text() == "tiny" and (full / "mode").read_text() == "full"
    assert json.loads(json.dumps(str(tiny)))  # plain paths, recordable in job.json
