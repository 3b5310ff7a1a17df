"""The split evaluator: a trusted scorer and an untrusted model server, talking over two pipes.

Why: an evaluator that imports the edited model code shares its process with that code,
so module-level code can write the result file, read the held-out data or patch the loss
function. Split in two, the edited code never runs where the score is computed:

  * the **model server** (untrusted, jailed, cwd = the training workspace) loads the
    checkpoint with `torch.load(..., weights_only=True)`, rebuilds the model with a function
    the environment names (`--build train:build_model` gets the checkpoint's config,
    `--load train:load_model` the whole checkpoint dict), and answers "logits for these token
    ids" requests: int64 [B, T] in, float32 [B, T, V] out. It sees only what it is sent.
  * the **scorer** (trusted, never imports edited code, holds the held-out data and the
    result path) connects with `ModelClient.from_env()`, sends windows, validates every
    answer (shape, dtype, finiteness) and computes the metric itself. `WindowScorer` sends
    each held-out window once, in a shuffled order, at the scoring batch size, and checks
    causality and batch independence on the same answers (see its docstring).

Wire format (both directions): a frame is `>IQ` (header length, payload length), a JSON
header, then the payload. Arrays travel as raw little-endian bytes described by the header's
"dtype" and "shape": nothing is ever unpickled. The scorer bounds every header, checks a
payload's declared size against the shape it asked for before reading it, and puts a
timeout on every read and write.

The harness starts both halves (execute/worker.py): `[evaluate] serve` is the server's
command, run with stdin/stdout as the pipes; the scorer gets the other ends as inherited
file descriptors named in IDEAFORGE_MODEL_FDS="read_fd,write_fd". `run_split` does the
same for tests and for trying an evaluator by hand.
"""

from __future__ import annotations

import json
import math
import os
import select
import struct
import subprocess
import sys
import time

from ideaforge.errors import ModelInvalid

# The checks live in envs/checks.py; authors import them from here, with the client.
from ideaforge.envs.checks import CHECK_TOKENS, TOL, WindowScorer, draw_seed, windows_to_check  # noqa: F401

VERSION = 1
FDS_VAR = "IDEAFORGE_MODEL_FDS"
_FRAME = struct.Struct(">IQ")  # header bytes, payload bytes
MAX_HEADER = 1 << 16  # bytes of JSON header the scorer accepts
MAX_PAYLOAD = 1 << 32  # bytes of array payload the scorer accepts in one frame
_DTYPES = ("<i8", "<f4")  # the only array types on the wire: token ids and logits


def _np():
    import numpy  # here: the worker imports this module to start the halves and needs no numpy

    return numpy


# -- frames --------------------------------------------------------------------------------
def encode_frame(header: dict, payload: bytes = b"") -> bytes:
    head = json.dumps(header, allow_nan=False).encode()
    return _FRAME.pack(len(head), len(payload)) + head + payload


def encode_array(header: dict, arr) -> bytes:
    np = _np()
    arr = np.ascontiguousarray(arr)
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    arr = arr.astype(dtype, copy=False)
    if arr.dtype.str not in _DTYPES:
        raise TypeError(f"only {_DTYPES} travel on the wire, not {arr.dtype.str}")
    return encode_frame(dict(header, dtype=arr.dtype.str, shape=list(arr.shape)), arr.tobytes())


def decode_array(header: dict, payload: bytes):
    np = _np()
    dtype, shape = header.get("dtype"), header.get("shape")
    if dtype not in _DTYPES or not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ModelInvalid(f"malformed array header {str(header)[:200]}")
    if len(payload) != math.prod(shape) * np.dtype(dtype).itemsize:
        raise ModelInvalid(f"array payload of {len(payload)} bytes does not match {dtype} {shape}")
    return np.frombuffer(payload, dtype=np.dtype(dtype)).reshape(shape)


class _Pipe:
    """One fd pair with a deadline on every read and write (trusted side)."""

    def __init__(self, rfd: int, wfd: int):
        self.rfd, self.wfd = rfd, wfd
        os.set_blocking(wfd, False)  # a server that stops reading must not hang our writes

    def _wait(self, fd: int, event: int, deadline: float, what: str) -> None:
        poller = select.poll()
        poller.register(fd, event | select.POLLHUP | select.POLLERR)
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise ModelInvalid(f"the model server did not {what} within its time limit")

    def write(self, data: bytes, timeout_s: float) -> None:
        deadline, view = time.monotonic() + timeout_s, memoryview(data)
        while view:
            self._wait(self.wfd, select.POLLOUT, deadline, "read its request")
            try:
                n = os.write(self.wfd, view[: 1 << 20])
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise ModelInvalid("the model server exited (its input pipe is closed)") from None
            view = view[n:]

    def read_exact(self, n: int, deadline: float) -> bytes:
        chunks, got = [], 0
        while got < n:
            self._wait(self.rfd, select.POLLIN, deadline, "answer")
            chunk = os.read(self.rfd, min(n - got, 1 << 20))
            if not chunk:
                raise ModelInvalid("the model server exited before answering (see serve.err)")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def read_frame(self, timeout_s: float, max_payload: int = MAX_PAYLOAD, expect=None) -> tuple[dict, bytes]:
        """A frame; `expect(header, payload_len)` may refuse it before its payload is read."""
        deadline = time.monotonic() + timeout_s
        hlen, plen = _FRAME.unpack(self.read_exact(_FRAME.size, deadline))
        if hlen > MAX_HEADER or plen > max_payload:
            raise ModelInvalid(f"the model server sent an oversized frame ({hlen} + {plen} bytes)")
        try:
            header = json.loads(self.read_exact(hlen, deadline))
        except ValueError:
            raise ModelInvalid("the model server sent a header that is not JSON") from None
        if not isinstance(header, dict):
            raise ModelInvalid("the model server sent a header that is not an object")
        if header.get("op") == "error":
            raise ModelInvalid(f"the model failed: {str(header.get('message'))[:2000]}")
        if expect is not None:
            expect(header, plen)
        return header, self.read_exact(plen, deadline) if plen else b""


# -- the scorer's client ---------------------------------------------------------------------
class ModelClient:
    """The trusted scorer's handle on the untrusted model server.

    Every problem with an answer (timeout, exit, malformed frame, wrong shape or dtype,
    non-finite values, an error the model raised) raises ModelInvalid.
    """

    def __init__(self, rfd: int, wfd: int, timeout_s: float = 120.0, load_timeout_s: float = 300.0):
        self._pipe = _Pipe(rfd, wfd)
        self.timeout_s = timeout_s  # seconds for one request's answer
        self.load_timeout_s = load_timeout_s  # seconds for the server to load the model and say hello
        self._info: dict | None = None
        self.requests = 0
        self.rows = 0

    @classmethod
    def from_env(cls, **kw) -> "ModelClient":
        raw = os.environ.get(FDS_VAR, "")
        try:
            rfd, wfd = (int(x) for x in raw.split(","))
        except ValueError:
            raise RuntimeError(f"{FDS_VAR}={raw!r}: this scorer must be started by the harness with an "
                               "[evaluate] serve command (or by ideaforge.envs.protocol.run_split)") from None
        return cls(rfd, wfd, **kw)

    def info(self) -> dict:
        """What the server reported after loading: the checkpoint's JSON-safe entries, plus `params`."""
        if self._info is None:
            header, _ = self._pipe.read_frame(self.load_timeout_s, max_payload=0)
            if header.get("op") != "hello" or header.get("version") != VERSION or not isinstance(header.get("info"), dict):
                raise ModelInvalid(f"the model server did not say hello (protocol {VERSION}): {str(header)[:200]}")
            self._info = header["info"]
        return self._info

    def logits(self, ids, vocab_size: int):
        """ids int64 [B, T] -> float32 logits [B, T, vocab_size], validated."""
        np = _np()
        self.info()
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        want = [*ids.shape, vocab_size]

        def expect(header, plen):
            if header.get("op") != "logits" or header.get("dtype") != "<f4" or header.get("shape") != want:
                raise ModelInvalid(f"model returned {header.get('dtype')} logits of shape {header.get('shape')}, expected float32 {want}")
            if plen != math.prod(want) * 4:
                raise ModelInvalid(f"model returned {plen} bytes of logits, expected {math.prod(want) * 4}")

        self._pipe.write(encode_array({"op": "logits"}, ids), self.timeout_s)
        header, payload = self._pipe.read_frame(self.timeout_s, expect=expect)
        out = decode_array(header, payload)
        if not np.isfinite(out).all():
            raise ModelInvalid("non-finite logits (NaN or inf)")
        self.requests += 1
        self.rows += ids.shape[0]
        return out

    def close(self) -> None:
        try:
            self._pipe.write(encode_frame({"op": "bye"}), 1.0)
        except ModelInvalid:
            pass
        for fd in (self._pipe.rfd, self._pipe.wfd):
            try:
                os.close(fd)
            except OSError:
                pass


# -- the model server (untrusted side) --------------------------------------------------------
def _read_exact_blocking(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def serve(model, info: dict, rfd: int, wfd: int) -> int:
    """Answer logits requests until "bye" or EOF. `model(ids LongTensor [B, T])` returns logits
    [B, T, V] (or a tuple whose first item is)."""
    import torch

    _write_all(wfd, encode_frame({"op": "hello", "version": VERSION, "info": info}))
    while True:
        head = _read_exact_blocking(rfd, _FRAME.size)
        if head is None:
            return 0
        hlen, plen = _FRAME.unpack(head)
        header = json.loads(_read_exact_blocking(rfd, hlen) or b"{}")
        payload = _read_exact_blocking(rfd, plen) if plen else b""
        if header.get("op") == "bye" or payload is None:
            return 0
        try:
            ids = torch.from_numpy(decode_array(header, payload).copy())
            with torch.no_grad():
                out = model(ids)
            if isinstance(out, (tuple, list)):
                out = out[0]
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"model(idx) returned {type(out).__name__}, expected a logits tensor")
            frame = encode_array({"op": "logits"}, out.detach().float().contiguous().cpu().numpy())
        except Exception as e:  # the scorer decides what a failure means; the server just reports it
            _write_all(wfd, encode_frame({"op": "error", "message": f"{type(e).__name__}: {e}"[:2000]}))
            return 1
        _write_all(wfd, frame)


def _json_safe(ckpt: dict) -> dict:
    out = {}
    for k, v in ckpt.items():
        if k == "state_dict" or not isinstance(k, str):
            continue
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError):
            continue
        out[k] = v
    return out


def load_checkpoint_model(path: str, *, build=None, load=None):
    """(model, info): the checkpoint read with weights_only=True (no pickled code runs), the
    model rebuilt by build(ckpt["config"]) + load_state_dict, or by load(ckpt)."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} holds a {type(ckpt).__name__}, expected a dict")
    if load is not None:
        model = load(ckpt)
    else:
        if "config" not in ckpt or "state_dict" not in ckpt:
            raise ValueError(f"{path} must be a dict with keys config and state_dict")
        model = build(ckpt["config"])
        model.load_state_dict(ckpt["state_dict"])
    if isinstance(model, torch.nn.Module):
        model = model.float().eval()
    info = _json_safe(ckpt)
    info["params"] = sum(p.numel() for p in model.parameters()) if isinstance(model, torch.nn.Module) else 0
    return model, info


def _resolve(spec: str):
    """"module:function" imported from the current directory (the workspace)."""
    import importlib

    mod_name, _, fn_name = spec.partition(":")
    if not mod_name or not fn_name:
        raise ValueError(f"{spec!r}: write module:function, e.g. train:build_model")
    sys.path.insert(0, os.getcwd())
    fn = getattr(importlib.import_module(mod_name), fn_name, None)
    if not callable(fn):
        raise ValueError(f"{mod_name}.py defines no function {fn_name}")
    return fn


def serve_main(argv: list[str]) -> int:
    """`python -m ideaforge.envs.protocol serve --checkpoint PATH (--build M:F | --load M:F)`."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ideaforge.envs.protocol serve")
    ap.add_argument("--checkpoint", required=True, help="checkpoint path (environment variables expanded)")
    how = ap.add_mutually_exclusive_group(required=True)
    how.add_argument("--build", help="module:function called with the checkpoint's config")
    how.add_argument("--load", help="module:function called with the whole checkpoint dict")
    args = ap.parse_args(argv)
    # The pipes are fds 0 and 1; the model code gets neither: its prints go to stderr.
    rfd, wfd = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.dont_write_bytecode = True
    try:
        import torch

        torch.set_num_threads(int(os.environ.get("IDEAFORGE_THREADS", "1")))
        fn = _resolve(args.build or args.load)
        model, info = load_checkpoint_model(os.path.expandvars(args.checkpoint),
                                            build=fn if args.build else None, load=fn if args.load else None)
    except Exception as e:
        import traceback

        traceback.print_exc()
        _write_all(wfd, encode_frame({"op": "error", "message": f"cannot load the model: {type(e).__name__}: {e}"[:2000]}))
        return 1
    return serve(model, info, rfd, wfd)


# -- the harness side: start both halves -------------------------------------------------------
def start_split(serve_argv: list[str], scorer_argv: list[str], *, serve_kw: dict, scorer_kw: dict):
    """Start the model server (stdin/stdout = pipes) and the scorer (the other ends inherited,
    named in IDEAFORGE_MODEL_FDS). Returns (server, scorer) Popen objects; the caller waits
    and kills. Neither process holds the other's ends, so either one's exit is EOF to the other."""
    req_r, req_w = os.pipe()  # scorer -> server
    resp_r, resp_w = os.pipe()  # server -> scorer
    try:
        server = subprocess.Popen(serve_argv, stdin=req_r, stdout=resp_w, **serve_kw)
        try:
            env = dict(scorer_kw.pop("env", None) or os.environ, **{FDS_VAR: f"{resp_r},{req_w}"})
            scorer = subprocess.Popen(scorer_argv, pass_fds=(resp_r, req_w), env=env, **scorer_kw)
        except BaseException:
            server.kill()
            server.wait()
            raise
    finally:
        for fd in (req_r, req_w, resp_r, resp_w):
            os.close(fd)
    return server, scorer


def run_split(serve_cmd: str, scorer_cmd: str, *, serve_cwd, scorer_cwd, env: dict, timeout_s: float = 300,
              serve_err=None) -> int:
    """Run one split evaluation locally (tests, trying an evaluator by hand): the scorer's exit
    code. No jail here: the harness's worker adds it."""
    server, scorer = start_split(["/bin/sh", "-c", serve_cmd], ["/bin/sh", "-c", scorer_cmd],
                                 serve_kw=dict(cwd=serve_cwd, env=env, stderr=serve_err, start_new_session=True),
                                 scorer_kw=dict(cwd=scorer_cwd, env=env, start_new_session=True))
    try:
        rc = scorer.wait(timeout=timeout_s)
        try:
            server.wait(timeout=10)  # it exits on "bye" or EOF
        except subprocess.TimeoutExpired:
            pass
        return rc
    finally:
        for p in (scorer, server):
            try:
                os.killpg(p.pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
            p.wait()


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"]:
        sys.exit("usage: python -m ideaforge.envs.protocol serve --checkpoint PATH (--build M:F | --load M:F)")
    sys.exit(serve_main(sys.argv[2:]))
