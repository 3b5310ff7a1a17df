"""The resumable downloader against a real HTTP server on 127.0.0.1 (nothing reaches the internet):
range resumption after a dropped connection, a server that ignores Range, size and sha256 checks,
the SHA256SUMS record, and the nanogpt-speedrun prepare step fetching its shards from the fake."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from ideaforge.envs import load_env
from ideaforge.envs.download import SUMS, Remote, fetch, fetch_all, read_sums, verify_all
from ideaforge.errors import EnvError


class FakeSource:
    """Files served over HTTP with Range support; `drop_once` names files whose first response
    announces the whole body, sends `drop_at` bytes of it and closes the connection."""

    def __init__(self, files: dict[str, bytes], drop_once=(), drop_at: int = 0, honour_range: bool = True):
        self.files, self.drop_once, self.drop_at, self.honour_range = files, set(drop_once), drop_at, honour_range
        self.requests: list[tuple[str, str | None]] = []
        source = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                source.requests.append((name, self.headers.get("Range")))
                body = source.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and source.honour_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if name in source.drop_once:
                    source.drop_once.discard(name)
                    self.wfile.write(body[start : start + source.drop_at])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def blob(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_interrupted_download_resumes_with_a_range_request(tmp_path):
    data = blob(3_000_000)
    logs: list[str] = []
    with FakeSource({"a.bin": data}, drop_once={"a.bin"}, drop_at=1_234_567) as src:
        path = fetch(f"{src.url}/a.bin", tmp_path / "a.bin", sha256=hashlib.sha256(data).hexdigest(), log=logs.append)
    assert path.read_bytes() == data
    assert src.requests == [("a.bin", None), ("a.bin", "bytes=1234567-")]
    assert any("connection lost" in m and "1234567" in m for m in logs)
    assert not (tmp_path / "a.bin.part").exists()


def test_a_part_left_by_an_earlier_run_is_resumed(tmp_path):
    data = blob(500_000, 1)
    (tmp_path / "b.bin.part").write_bytes(data[:200_000])
    with FakeSource({"b.bin": data}) as src:
        fetch(f"{src.url}/b.bin", tmp_path / "b.bin", size=len(data), log=lambda m: None)
    assert (tmp_path / "b.bin").read_bytes() == data
    assert src.requests == [("b.bin", "bytes=200000-")]


def test_a_server_that_ignores_range_restarts_from_zero(tmp_path):
    data = blob(300_000, 2)
    (tmp_path / "c.bin.part").write_bytes(b"x" * 1000)  # garbage that must not be kept
    with FakeSource({"c.bin": data}, honour_range=False) as src:
        fetch(f"{src.url}/c.bin", tmp_path / "c.bin", log=lambda m: None)
    assert (tmp_path / "c.bin").read_bytes() == data


def test_wrong_checksum_or_size_removes_the_file_and_explains(tmp_path):
    data = blob(10_000, 3)
    with FakeSource({"d.bin": data}) as src:
        with pytest.raises(EnvError, match="does not match the expected"):
            fetch(f"{src.url}/d.bin", tmp_path / "d.bin", sha256="0" * 64, log=lambda m: None)
        assert not (tmp_path / "d.bin").exists() and not (tmp_path / "d.bin.part").exists()
        with pytest.raises(EnvError, match="expected 9999"):
            fetch(f"{src.url}/d.bin", tmp_path / "d.bin", size=9999, log=lambda m: None)
        with pytest.raises(EnvError, match="HTTP 404"):
            fetch(f"{src.url}/missing.bin", tmp_path / "m.bin", log=lambda m: None)


def test_fetch_all_records_checksums_and_skips_what_is_there(tmp_path):
    files = {"x.bin": blob(100_000, 4), "y.bin": blob(50_000, 5)}
    with FakeSource(files) as src:
        remotes = [Remote(f"{src.url}/{n}", n) for n in files]
        fetch_all(remotes, tmp_path, log=lambda m: None)
        assert read_sums(tmp_path) == {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}
        n_requests = len(src.requests)
        fetch_all(remotes, tmp_path, log=lambda m: None)
        assert len(src.requests) == n_requests  # nothing fetched twice
        (tmp_path / "y.bin").write_bytes(b"corrupted")
        assert verify_all(tmp_path, list(files)) == ["y.bin"]
        fetch_all([Remote(r.url, r.name, sha256=read_sums(tmp_path)[r.name]) for r in remotes], tmp_path, log=lambda m: None)
    assert (tmp_path / "y.bin").read_bytes() == files["y.bin"]
    assert verify_all(tmp_path, list(files)) == []
    assert (tmp_path / SUMS).is_file()


def _shard(tokens: np.ndarray) -> bytes:
    header = np.zeros(256, dtype=np.int32)
    header[:3] = (20240520, 1, len(tokens))
    return header.tobytes() + tokens.astype(np.uint16).tobytes()


def test_speedrun_prepare_fetches_shards_from_the_fake_source_and_resumes(tmp_path):
    """The real prepare.py in fineweb mode, pointed at the local server by SPEEDRUN_DATA_URL."""
    rng = np.random.default_rng(0)
    files = {"fineweb_val_000000.bin": _shard(rng.integers(0, 50257, 5000))}
    for k in (1, 2):
        files[f"fineweb_train_{k:06d}.bin"] = _shard(rng.integers(0, 50257, 20000))
    spec = load_env("nanogpt-speedrun")
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    env = dict(os.environ, IDEAFORGE_PREPARED=str(prepared), IDEAFORGE_CACHE=str(tmp_path / "cache"),
               SPEEDRUN_DATA="fineweb", SPEEDRUN_TRAIN_SHARDS="2")
    with FakeSource(files, drop_once={"fineweb_train_000002.bin"}, drop_at=7000) as src:
        env["SPEEDRUN_DATA_URL"] = src.url
        r = subprocess.run([sys.executable, str(spec.root / "prepare.py")], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("fineweb_train_000002.bin", "bytes=7000-") in src.requests
    cache = tmp_path / "cache" / "data" / "fineweb10B"
    for name, body in files.items():
        assert (cache / name).read_bytes() == body
        if "_val_" in name:  # held out: only named in meta.json, never inside what trials see
            assert not (prepared / "val" / name).exists()
        else:  # hard links into the prepared directory (the jail binds it alone)
            assert (prepared / "train" / name).stat().st_ino == (cache / name).stat().st_ino
    meta = json.loads((prepared / "meta.json").read_text())
    assert meta == {"vocab_size": 50257, "data": "fineweb", "source": src.url, "train_tokens": 40000, "val_tokens": 5000,
                    "heldout": [str((cache / "fineweb_val_000000.bin").resolve())]}
    assert set(read_sums(cache)) == set(files)
