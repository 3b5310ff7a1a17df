"""envs/protocol.py without training: the window checks against models written in numpy, and the
client's wire checks against a hostile server on real pipes."""

from __future__ import annotations

import json
import os
import threading

import pytest

from ideaforge.envs import protocol
from ideaforge.envs.protocol import ModelClient, WindowScorer, encode_array, encode_frame
from ideaforge.errors import ModelInvalid

np = pytest.importorskip("numpy")
V, T, N = 11, 16, 40


class FakeClient:
    """A model in numpy behind the client interface; `fn(ids [B, T]) -> logits [B, T, V]`."""

    def __init__(self, fn):
        self.fn, self.batches = fn, []

    def logits(self, ids, vocab_size):
        self.batches.append(ids.copy())
        out = np.asarray(self.fn(ids), dtype=np.float32)
        assert out.shape == (*ids.shape, vocab_size)
        return out


def causal(ids):
    """Logits at t from tokens 0..t only: a running sum, one-hot-ish."""
    c = np.cumsum(ids, axis=1) % V
    return np.eye(V)[c] * 3.0 + 0.01 * ids[..., None]


def windows(seed=0):
    return np.random.default_rng(seed).integers(0, V, size=(N, T))


def run(fn, bs=8, seed=123, **kw):
    client = FakeClient(fn)
    scorer = WindowScorer(client, windows(), vocab_size=V, batch_size=bs, seed=seed, **kw)
    seen = []
    for idx, logits in scorer:
        assert logits.shape == (len(idx), T, V)
        seen += idx.tolist()
    return scorer, client, seen


def test_honest_model_passes_every_window_once_at_the_batch_size():
    scorer, client, seen = run(causal)
    assert sorted(seen) == list(range(N))  # each window scored exactly once
    assert all(len(b) == 8 for b in client.batches[:-1]) and 0 < len(client.batches[-1]) <= 8
    k = len(scorer.report["checked_windows"])
    assert k == 4 and scorer.report["positions_checked"] == k * T and scorer.report["check_rows"] == k * T
    assert sum(len(b) for b in client.batches) == N + k * T
    # the seed decides which windows are checked and the order; another seed, another plan
    assert run(causal, seed=124)[0].report["checked_windows"] != scorer.report["checked_windows"] or \
        run(causal, seed=124)[1].batches[0].tolist() != client.batches[0].tolist()


@pytest.mark.parametrize("position", [0, 7, T - 2])
def test_a_leak_at_any_single_position_is_caught(position):
    def leaky(ids):
        out = causal(ids)
        out[:, position, :] += 5.0 * np.eye(V)[ids[:, position + 1]]
        return out

    with pytest.raises(ModelInvalid, match="future-token leak"):
        list(run(leaky)[0])


def test_leak_only_when_batch_has_more_than_one_row():
    def leaky(ids):
        out = causal(ids)
        if len(ids) > 1:
            out[:, :-1] += 5.0 * np.eye(V)[ids[:, 1:]]
        return out

    with pytest.raises(ModelInvalid, match="future-token leak|batch dependence"):
        list(run(leaky)[0])


def test_batch_dependence_at_the_last_position_only_is_caught():
    def mixing(ids):
        out = causal(ids)
        out[:, -1] += ids.mean(axis=0)[-1]  # the last position sees the whole batch
        return out

    with pytest.raises(ModelInvalid, match="batch dependence"):
        list(run(mixing)[0])


def test_nondeterministic_model_is_caught():
    rng = np.random.default_rng(0)
    with pytest.raises(ModelInvalid, match="batch dependence"):
        list(run(lambda ids: causal(ids) + rng.normal(size=(*ids.shape, V)))[0])


# -- the wire ---------------------------------------------------------------------------------
def hostile(frames: list[bytes], read_request: bool = True, timeout_s: float = 10.0):
    """A client connected to a thread that says hello, reads one request, then sends `frames`."""
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()

    def server():
        os.write(resp_w, encode_frame({"op": "hello", "version": protocol.VERSION, "info": {"x": 1}}))
        if read_request:
            os.read(req_r, 1 << 20)
        for f in frames:
            os.write(resp_w, f)

    threading.Thread(target=server, daemon=True).start()
    return ModelClient(resp_r, req_w, timeout_s=timeout_s, load_timeout_s=10.0)


IDS = np.zeros((2, 3), dtype=np.int64)


def test_valid_answer_round_trips():
    logits = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    client = hostile([encode_array({"op": "logits"}, logits)])
    assert client.info() == {"x": 1}
    assert np.array_equal(client.logits(IDS, 5), logits)


@pytest.mark.parametrize("frame, match", [
    (lambda: encode_array({"op": "logits"}, np.zeros((2, 3, 4), np.float32)), "shape"),
    (lambda: encode_array({"op": "logits"}, np.zeros((2, 3, 5), np.int64)), "float32"),
    (lambda: encode_array({"op": "logits"}, np.full((2, 3, 5), np.nan, np.float32)), "non-finite"),
    (lambda: protocol._FRAME.pack(1 << 20, 0), "oversized"),
    (lambda: protocol._FRAME.pack(2, 0) + b"[]", "not an object"),
    (lambda: encode_frame({"op": "logits", "dtype": "<f4", "shape": [2, 3, 5]}, b"\0" * 8), "bytes of logits"),
    (lambda: encode_frame({"op": "error", "message": "boom"}), "boom"),
    (lambda: b"", "time limit"),
])
def test_malformed_or_missing_answers_are_invalid(frame, match):
    client = hostile([frame()], timeout_s=0.5 if match == "time limit" else 10.0)
    client.info()
    with pytest.raises(ModelInvalid, match=match):
        client.logits(IDS, 5)


def test_pickle_never_travels():
    with pytest.raises(TypeError):
        encode_array({}, np.array([object()]))
    header = json.loads(encode_array({}, IDS)[protocol._FRAME.size:][:40].split(b"}")[0] + b"}")
    assert header["dtype"] == "<i8" and header["shape"] == [2, 3]


# -- the harness: both halves through the real worker -----------------------------------------------
TOY_TRAIN = """
import json, os, sys, time
out = os.environ["IDEAFORGE_OUT"]
if sys.argv[1:] == ["serve"]:  # the model server: never answers
    open(os.path.join(out, "serve.pid"), "w").write(str(os.getpid()))
    time.sleep(1000)
json.dump({"score": 1.0}, open(os.path.join(out, "ckpt.json"), "w"))
"""
TOY_SCORER = """
import json, os
from ideaforge.envs.protocol import ModelClient
assert "IDEAFORGE_MODEL_FDS" in os.environ
client = ModelClient.from_env(load_timeout_s=1000)
client.info()  # waits for a hello that never comes: the evaluator timeout ends both halves
"""


def test_worker_runs_split_halves_and_kills_the_server_at_the_timeout(tmp_path, monkeypatch):
    import time

    # The server leaves its host pid in IDEAFORGE_OUT so the test can check it died; a jailed server
    # can write neither there nor a host pid (test_jail.py proves jailed trees die), so this runs unjailed.
    monkeypatch.setenv("IDEAFORGE_JAIL", "none")

    from fakes.toyenv import make_toy_env
    from ideaforge.envs import load_env
    from ideaforge.execute.local import LocalExecutor
    from ideaforge.search.campaign import Campaign, TrialRunner

    env = make_toy_env(tmp_path / "env", TOY_TRAIN)
    (env / "evaluate.py").write_text(TOY_SCORER)
    toml = (env / "ideaforge.toml").read_text()
    (env / "ideaforge.toml").write_text(toml.replace(
        '[evaluate]\ncommand = "python evaluate.py"\ntimeout_s = 30',
        '[evaluate]\ncommand = "python evaluate.py"\nserve = "python train.py serve"\ntimeout_s = 3'))
    spec = load_env(env)
    assert spec.evaluate_serve == "python train.py serve"
    camp = Campaign.create(tmp_path / "camp", spec)
    tid = camp.store.add_trial("candidate", seed=0, budget_s=spec.budget_s)
    with LocalExecutor(slots=1) as ex:
        TrialRunner(camp, ex).drain()
    t = camp.store.trial(tid)
    assert t["outcome"] == "no_result" and "timeout" in t["reason"], t["reason"]
    tdir = camp.store.trial_dir(tid)
    pid = int((tdir / "out" / "serve.pid").read_text())
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.05)
    else:
        assert not os.path.exists(f"/proc/{pid}"), "the model server outlived the evaluation"
