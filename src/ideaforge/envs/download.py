"""Downloading an environment's data and weights once, into a directory all trials share.

`fetch` streams one URL to a file with progress, resumes an interrupted transfer with an
HTTP Range request (from what a previous attempt or an earlier run left in `<file>.part`),
and checks the size and, when known, the sha256 before the file takes its final name, so
a file under its final name is always complete. `fetch_all` does a list of files and
records each file's sha256 in a `SHA256SUMS` beside them on first download, so later
runs detect a corrupted or replaced file. Only the standard library: environments call
this from their prepare step, in a process of their own.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ideaforge.errors import EnvError

CHUNK = 1 << 20  # bytes read per call
SUMS = "SHA256SUMS"
Progress = Callable[[str], None]


def data_root() -> Path:
    """The shared data directory: $IDEAFORGE_CACHE/data, default ~/.cache/ideaforge/data."""
    return Path(os.environ.get("IDEAFORGE_CACHE", Path.home() / ".cache" / "ideaforge")).expanduser() / "data"


@dataclass(frozen=True)
class Remote:
    url: str
    name: str  # file name under the destination directory
    sha256: str | None = None  # expected digest, when the publisher gives one
    size: int | None = None  # expected bytes, when known


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _open(url: str, start: int, timeout: float, headers: dict[str, str]):
    req = urllib.request.Request(url, headers={"User-Agent": "ideaforge", **headers})
    if start:
        req.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(req, timeout=timeout)


def _total_from(resp, start: int) -> int | None:
    """Full size of the file from Content-Range (206) or Content-Length (200)."""
    cr = resp.headers.get("Content-Range")
    if cr and "/" in cr and not cr.endswith("/*"):
        return int(cr.rsplit("/", 1)[1])
    cl = resp.headers.get("Content-Length")
    return int(cl) + (start if resp.status == 206 else 0) if cl else None


def fetch(url: str, dest: Path, *, sha256: str | None = None, size: int | None = None, log: Progress = print,
          retries: int = 5, timeout: float = 60.0, headers: dict[str, str] | None = None) -> Path:
    """Download `url` to `dest` (resuming `dest.part`), verify it, and return `dest`.

    A connection that drops mid-file is resumed from the bytes already written, up to
    `retries` times in a row without progress. Raises EnvError with the URL and the fix.
    """
    dest = Path(dest)
    if dest.is_file() and (size is None or dest.stat().st_size == size) and (sha256 is None or sha256_of(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures, total, last_log = 0, size, 0.0
    while True:
        start = part.stat().st_size if part.exists() else 0
        if total is not None and start == total:
            break
        try:
            with _open(url, start, timeout, headers or {}) as resp:
                if start and resp.status != 206:  # the server ignored Range: start over
                    start = 0
                total = _total_from(resp, start) or total
                with open(part, "ab" if start else "wb") as f:
                    done = start
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        done += len(chunk)
                        failures = 0  # progress was made
                        if time.monotonic() - last_log > 2.0:
                            last_log = time.monotonic()
                            log(_progress_line(dest.name, done, total))
            if total is None or part.stat().st_size >= total:
                break
            raise http.client.IncompleteRead(b"", total - part.stat().st_size)  # the body ended early
        except urllib.error.HTTPError as e:
            if e.code == 416 and total is not None and start >= total:
                break  # everything was already there
            if e.code in (401, 403, 404, 410):
                raise EnvError(f"download of {url} failed: HTTP {e.code} {e.reason}; check the URL "
                               f"(or the variable that sets it) and that the file is public") from None
            failures += 1
            err = f"HTTP {e.code}"
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError) as e:
            failures += 1
            err = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        if failures > retries:
            raise EnvError(f"download of {url} failed {failures} times in a row ({err}); "
                           f"{part} keeps the {part.stat().st_size if part.exists() else 0} bytes so far; run prepare again to resume")
        log(f"{dest.name}: connection lost ({err}); resuming from byte {part.stat().st_size if part.exists() else 0}")
        time.sleep(min(30.0, 0.5 * 2 ** (failures - 1)))
    got = part.stat().st_size
    want = size if size is not None else total
    if want is not None and got != want:
        part.unlink()
        raise EnvError(f"download of {url}: got {got} bytes, expected {want}; the partial file was removed, run prepare again")
    if sha256 is not None and (digest := sha256_of(part)) != sha256:
        part.unlink()
        raise EnvError(f"download of {url}: sha256 {digest} does not match the expected {sha256}; "
                       f"the file was removed. If the source changed on purpose, update the expected checksum")
    os.replace(part, dest)
    log(_progress_line(dest.name, got, got))
    return dest


def _progress_line(name: str, done: int, total: int | None) -> str:
    if total:
        return f"{name}: {done / 1e6:,.1f} / {total / 1e6:,.1f} MB ({100 * done / total:.0f}%)"
    return f"{name}: {done / 1e6:,.1f} MB"


def read_sums(directory: Path) -> dict[str, str]:
    path = directory / SUMS
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if name:
            out[name] = digest
    return out


def fetch_all(files: list[Remote], directory: Path, log: Progress = print, **kw) -> list[Path]:
    """Fetch every file into `directory`, verifying each against its expected sha256 or, failing
    that, against the sha256 recorded there the first time it was downloaded."""
    directory.mkdir(parents=True, exist_ok=True)
    sums = read_sums(directory)
    paths = []
    for k, r in enumerate(files):
        dest = directory / r.name
        expected = r.sha256 or sums.get(r.name)
        if dest.is_file() and r.sha256 is None and r.name in sums and (r.size is None or dest.stat().st_size == r.size):
            paths.append(dest)  # verified when it was recorded; re-hashing gigabytes each run is waste (see verify_all)
            continue
        if dest.is_file() and expected and sha256_of(dest) != expected:
            log(f"{r.name}: checksum mismatch, downloading it again")
            dest.unlink()
        log(f"[{k + 1}/{len(files)}] {r.name}")
        fetch(r.url, dest, sha256=expected, size=r.size, log=log, **kw)
        if r.name not in sums:
            sums[r.name] = sha256_of(dest)
            _write_sums(directory, sums)
        paths.append(dest)
    return paths


def verify_all(directory: Path, names: list[str]) -> list[str]:
    """Names whose file is missing or whose sha256 differs from the recorded one (a full re-hash)."""
    sums = read_sums(directory)
    return [n for n in names if not (directory / n).is_file() or sums.get(n) != sha256_of(directory / n)]


def _write_sums(directory: Path, sums: dict[str, str]) -> None:
    tmp = directory / f".{SUMS}.{os.getpid()}.tmp"
    tmp.write_text("".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))
    os.replace(tmp, directory / SUMS)

