"""The built-in nanogpt-speedrun environment: the d12 recipe, its tiny CPU profile end to end
(prepare -> train -> hidden evaluator, through the executor as `env check --profile tiny` does),
and multi-GPU trials launched with torchrun over exactly the leased devices (fake GPU ids)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fakes.toyenv import make_toy_env
from ideaforge.envs import load_env
from ideaforge.envs.protocol import run_split
from ideaforge.execute.local import LocalExecutor
from ideaforge.search.campaign import Campaign, TrialRunner

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

ENV = load_env("nanogpt-speedrun")


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.dont_write_bytecode = True
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def train_mod():
    return _module(ENV.root / "train.py", "speedrun_train")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    cache = tmp_path_factory.mktemp("cache")  # the held-out shard goes to $IDEAFORGE_CACHE/data, outside `out`
    env = dict(os.environ, IDEAFORGE_PREPARED=str(out), SPEEDRUN_DATA="tiny", IDEAFORGE_CACHE=str(cache))
    r = subprocess.run([sys.executable, str(ENV.root / "prepare.py")], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def test_spec_and_profiles():
    assert ENV.editable_files == ("train.py",) and ENV.visible_files == ("prepare.py", "serve_model.py")
    assert ENV.hidden_files == ("evaluate.py",)
    assert "protocol serve --load serve_model:load" in ENV.evaluate_serve  # a split evaluator
    assert (ENV.gpus, ENV.budget_s, ENV.metric, ENV.goal) == (8, 1500.0, "val_loss", "min")
    assert ENV.run_command.startswith("torchrun --standalone") and "--nproc_per_node=$IDEAFORGE_GPUS" in ENV.run_command
    assert set(ENV.profiles) == {"tiny", "1gpu"}
    tiny, one = load_env("nanogpt-speedrun", profile="tiny"), load_env("nanogpt-speedrun", profile="1gpu")
    assert tiny.gpus == 0 and tiny.budget_s <= 30 and tiny.run_command == "python train.py"
    assert tiny.env["SPEEDRUN_DATA"] == "tiny" and tiny.env["SPEEDRUN_PRESET"] == "tiny"
    assert one.gpus == 1 and one.budget_s == 300 and one.env["SPEEDRUN_PRESET"] == "1gpu"
    assert ENV.classify("catalogue/ideas.toml") is None


def test_d12_is_gpt2_small(train_mod):
    p = train_mod.PRESETS["d12"]
    config = dict(vocab_size=50257, block_size=p["block_size"], n_layer=p["n_layer"], n_head=p["n_head"], n_embd=p["n_embd"])
    assert (config["n_layer"], config["n_head"], config["n_embd"], config["block_size"]) == (12, 12, 768, 1024)
    with torch.device("meta"):
        model = train_mod.build_model(config)
    n = sum(q.numel() for q in model.parameters())  # tied embeddings are counted once
    C = 768
    assert n == 50257 * C + 1024 * C + 12 * 12 * C * C == 124_318_464
    assert model.lm_head.weight is model.wte.weight
    assert model.h[0].attn_scale == pytest.approx(1 / math.sqrt(24))
    assert p["total_batch_tokens"] == 262_144 == 8 * p["device_batch"] * p["block_size"]  # no accumulation on 8 GPUs
    assert train_mod.PRESETS["1gpu"]["total_batch_tokens"] % (p["block_size"] * train_mod.PRESETS["1gpu"]["device_batch"]) == 0


def test_schedule_and_optimizer_settings(train_mod):
    assert (train_mod.LEARNING_RATE, train_mod.BETAS, train_mod.WEIGHT_DECAY, train_mod.GRAD_CLIP) == (0.0015, (0.9, 0.95), 0.1, 1.0)
    assert train_mod.lr_at(0) == pytest.approx(0.0015 / 256)
    assert train_mod.lr_at(255) == pytest.approx(0.0015)
    assert train_mod.lr_at(256) == pytest.approx(0.0015)
    assert train_mod.lr_at(26880) == pytest.approx(0.0015 * 0.1 / 1.1)
    assert train_mod.lr_at(10**6) == pytest.approx(0.0015 * 0.1 / 1.1)


def test_tiny_model_is_causal_and_reads_the_generated_shards(train_mod, tiny_data):
    meta = json.loads((tiny_data / "meta.json").read_text())
    assert meta["vocab_size"] == 512 and meta["data"] == "tiny"
    # the validation shard is held out: not in the prepared directory that the jail binds
    assert not (tiny_data / "val").exists() and not list(tiny_data.rglob("*val*.bin"))
    held = Path(meta["heldout"][0])
    assert held.is_file() and tiny_data not in held.parents
    loader = train_mod.ShardLoader(tiny_data / "train", 4, 64, rank=1, world=2)
    x, y = loader.next_batch()
    tokens = train_mod.read_shard(sorted((tiny_data / "train").glob("*.bin"))[0])
    assert torch.equal(x[0], torch.from_numpy(tokens[256 : 256 + 64].astype("int64")))  # rank 1's slice
    assert torch.equal(x[0, 1:], y[0, :-1]) and int(x.max()) < 512
    p = train_mod.PRESETS["tiny"]
    torch.manual_seed(0)
    model = train_mod.build_model(dict(vocab_size=512, block_size=64, n_layer=p["n_layer"], n_head=p["n_head"], n_embd=p["n_embd"])).eval()
    with torch.no_grad():
        a = model(x)
        x2 = x.clone()
        x2[:, 10:] = (x2[:, 10:] + 1) % 512
        b = model(x2)
    assert a.shape == (4, 64, 512)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-5) and not torch.allclose(a[:, 10:], b[:, 10:])


def _evaluate(ws: Path, out: Path, prepared: Path, tmp_path: Path) -> dict:
    ev = tmp_path / "ev"
    ev.mkdir(exist_ok=True)
    shutil.copy(ENV.root / "evaluate.py", ev / "evaluate.py")
    shutil.copy(ENV.root / "serve_model.py", ws / "serve_model.py")  # a visible file of the workspace
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDEAFORGE_")}
    env.update(load_env("nanogpt-speedrun", profile="tiny").env, IDEAFORGE_OUT=str(out), IDEAFORGE_PREPARED=str(prepared),
               IDEAFORGE_WORKSPACE=str(ws), IDEAFORGE_RESULT=str(tmp_path / "result.json"), OMP_NUM_THREADS="1",
               IDEAFORGE_THREADS="1", CUDA_VISIBLE_DEVICES="")
    with open(tmp_path / "serve.err", "wb") as err:
        rc = run_split(ENV.evaluate_serve, f"{sys.executable} evaluate.py", serve_cwd=ws, scorer_cwd=ev, env=env,
                       timeout_s=120, serve_err=err)
    assert rc == 0, (tmp_path / "serve.err").read_text()[-2000:]
    return json.loads((tmp_path / "result.json").read_text())


@pytest.mark.slow
def test_evaluator_rejects_a_future_token_leak(train_mod, tiny_data, tmp_path):
    leaky = (ENV.root / "train.py").read_text().replace("is_causal=True", "is_causal=False")
    ws, out = tmp_path / "ws", tmp_path / "out"
    ws.mkdir()
    out.mkdir()
    (ws / "train.py").write_text(leaky)
    p = train_mod.PRESETS["tiny"]
    config = dict(vocab_size=512, block_size=64, n_layer=p["n_layer"], n_head=p["n_head"], n_embd=p["n_embd"])
    torch.save({"config": config, "state_dict": train_mod.build_model(config).state_dict()}, out / "ckpt.pt")
    res = _evaluate(ws, out, tiny_data, tmp_path)
    assert res["status"] == "invalid" and "future-token leak" in res["reason"], res


def run_env_check(spec, tmp_path: Path, gpus=(), budget: float | None = None) -> dict:
    """What `ideaforge env check` does: a campaign with one baseline trial, run through the executor."""
    camp = Campaign.create(tmp_path / "camp", spec, {"command": "env check"})
    tid = camp.store.add_trial("check", seed=0, budget_s=budget or min(spec.budget_s, 15.0))
    with LocalExecutor(slots=1, gpus=list(gpus)) as ex:
        TrialRunner(camp, ex).drain()
    return camp.store.trial(tid) | {"dir": camp.store.trial_dir(tid)}


@pytest.mark.slow
def test_env_check_tiny_profile_passes_on_cpu_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("IDEAFORGE_CACHE", str(tmp_path / "cache"))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # any download attempt would fail
    t = run_env_check(load_env("nanogpt-speedrun", profile="tiny"), tmp_path, budget=20)
    assert t["outcome"] == "evaluated", t["reason"]
    # below log(512) = 6.24 means it learned something; no honest model beats the data's entropy, about
    # 1.34 nats per token (Zipf over 2,048 words of 4.2 tokens on average: 5.64 nats per word)
    assert 1.3 < t["metric"] < 6.3, t["metric"]
    assert t["metrics"]["eval_tokens"] == 16384


@pytest.mark.slow
def test_ddp_over_two_fake_gpus_runs_the_real_training_with_gloo(tiny_data, tmp_path):
    """The shipped run command with 2 leased (fake) GPUs: torchrun starts 2 ranks that train with DDP
    on the CPU (gloo), agree when to stop, and rank 0 saves a checkpoint the evaluator accepts."""
    spec = load_env("nanogpt-speedrun", profile="tiny")
    ws, out = tmp_path / "ws", tmp_path / "out"
    ws.mkdir()
    out.mkdir()
    shutil.copy(ENV.root / "train.py", ws / "train.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDEAFORGE_")}
    env.update(spec.env, IDEAFORGE_OUT=str(out), IDEAFORGE_PREPARED=str(tiny_data), IDEAFORGE_GPUS="2",
               CUDA_VISIBLE_DEVICES="0,1", IDEAFORGE_BUDGET_S="25", OMP_NUM_THREADS="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    r = subprocess.run(["/bin/sh", "-c", ENV.run_command], cwd=ws, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "world=2" in r.stdout
    assert _evaluate(ws, out, tiny_data, tmp_path)["status"] == "ok"


ECHO_RANKS = """
import json, os
out = os.environ["IDEAFORGE_OUT"]
keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "CUDA_VISIBLE_DEVICES", "IDEAFORGE_GPUS")
json.dump({k: os.environ.get(k) for k in keys}, open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w"))
if os.environ["RANK"] == "0":
    json.dump({"score": 1.0}, open(os.path.join(out, "ckpt.json"), "w"))
"""


@pytest.mark.slow
def test_multi_gpu_trials_launch_torchrun_over_exactly_the_leased_devices(tmp_path):
    """Fake GPU ids: the executor leases 3 of 5 to a trial; the speedrun's own run command starts one
    process per leased id, each seeing exactly the lease in CUDA_VISIBLE_DEVICES."""
    root = make_toy_env(tmp_path / "env", ECHO_RANKS, gpus=3, timeout_s=120)
    toml = (root / "ideaforge.toml").read_text().replace('command = "python train.py"', f'command = "{ENV.run_command}"', 1)
    (root / "ideaforge.toml").write_text(toml)
    spec = load_env(root)
    assert spec.run_command == ENV.run_command
    camp = Campaign.create(tmp_path / "camp", spec)
    tid = camp.store.add_trial("candidate", seed=0, budget_s=5)
    with LocalExecutor(slots=1, gpus=["0", "1", "2", "3", "4"]) as ex:
        TrialRunner(camp, ex).drain()
    t = camp.store.trial(tid)
    assert t["outcome"] == "evaluated", t["reason"]
    d = camp.store.trial_dir(tid)
    lease = json.loads((d / "worker.json").read_text())["gpus"]
    assert len(lease) == 3
    ranks = [json.loads((d / "out" / f"rank{r}.json").read_text()) for r in range(3)]
    assert not (d / "out" / "rank3.json").exists()
    for r, seen in enumerate(ranks):
        assert seen == {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "3",
                        "CUDA_VISIBLE_DEVICES": ",".join(lease), "IDEAFORGE_GPUS": "3"}


# ---------------------------------------------------------------- the idea catalogue
import itertools  # noqa: E402
import tomllib  # noqa: E402

from ideaforge.errors import EditRefused  # noqa: E402
from ideaforge.ideate.catalogue import load_catalogue  # noqa: E402
from ideaforge.edit.apply import apply_edits  # noqa: E402
from ideaforge.edit.parse import parse_reply  # noqa: E402

BASE = (ENV.root / "train.py").read_text()
IDEAS = tomllib.loads((ENV.root / "catalogue" / "ideas.toml").read_text())["idea"]


def apply_ideas(*ideas: dict) -> str:
    edits = [e for idea in ideas for e in parse_reply(idea["edit"])]
    return apply_edits({"train.py": BASE}, edits, ENV).files["train.py"]


def test_catalogue_loads_for_the_offline_ideator():
    entries = load_catalogue(ENV)
    assert {e["id"] for e in entries} >= {"swiglu", "weight-ema", "residual-scalars", "beta2-099"}
    assert len({e["id"] for e in entries}) == len(entries) == len(IDEAS)


@pytest.mark.parametrize("idea", IDEAS, ids=[i["id"] for i in IDEAS])
def test_idea_applies_and_keeps_the_interface(idea, tmp_path):
    for e in parse_reply(idea["edit"]):
        for h in e.hunks:
            assert BASE.count("\n".join(h.old_lines) + "\n") == 1, (idea["id"], h.old_lines)
    source = apply_ideas(idea)
    assert source != BASE
    (tmp_path / "train.py").write_text(source)
    mod = _module(tmp_path / "train.py", f"speedrun_idea_{idea['id'].replace('-', '_')}")
    p = mod.PRESETS["tiny"]
    config = dict(vocab_size=512, block_size=64, n_layer=p["n_layer"], n_head=p["n_head"], n_embd=p["n_embd"])
    torch.manual_seed(0)
    model = mod.build_model(config)
    model.load_state_dict(model.state_dict())
    x = torch.randint(512, (2, 32))
    with torch.no_grad():
        a = model.eval()(x)
        y = x.clone()
        y[:, 8:] = (y[:, 8:] + 1) % 512
        b = model(y)
    assert a.shape == (2, 32, 512) and torch.allclose(a[:, :8], b[:, :8], atol=1e-5)
    opt = mod.make_optimizer(model.train(), "cpu")
    _, loss = model(x, y)
    loss.backward()
    opt.step()
    assert mod.lr_at(0) > 0


def test_pairs_compose():
    refused = []
    for a, b in itertools.combinations(IDEAS, 2):
        try:
            compile(apply_ideas(a, b), "train.py", "exec")
        except EditRefused:
            refused.append((a["id"], b["id"]))
    assert not refused, refused


@pytest.mark.slow
def test_all_ideas_together_train_and_pass_the_evaluator(tiny_data, tmp_path):
    ws, out = tmp_path / "ws", tmp_path / "out"
    ws.mkdir()
    out.mkdir()
    (ws / "train.py").write_text(apply_ideas(*IDEAS))
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDEAFORGE_")}
    env.update(IDEAFORGE_OUT=str(out), IDEAFORGE_PREPARED=str(tiny_data), IDEAFORGE_BUDGET_S="20",
               SPEEDRUN_PRESET="tiny", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "train.py"], cwd=ws, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    res = _evaluate(ws, out, tiny_data, tmp_path)
    assert res["status"] == "ok", res
