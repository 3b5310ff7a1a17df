"""Bounded logs and learning curves, fed from a pipe while a trial runs.

A trial may print without limit: 50 MB of stdout kept whole is 50 MB per trial on disk,
and 50 MB of `METRIC` lines held as points before thinning took a worker to 875 MB.
Here both are bounded while the output streams, whatever its size:

- `CappedLog` keeps the first `HEAD_BYTES` and the last `TAIL_BYTES` of a stream in its
  file, with one marker line between them saying what was dropped. The file is valid
  at every moment (a worker killed mid-trial leaves at most head + marker + 2 x tail):
  the tail grows in place and is cut back to `TAIL_BYTES` each time it doubles.
- `CurveThinner` keeps at most `CURVE_POINTS` points of the `METRIC key=value ...`
  lines, evenly strided: it keeps every k-th point, and when full drops every other
  kept point and doubles k; the last point is always kept. Memory is O(CURVE_POINTS).
- `LogPump` is a reader thread that drains one pipe into a `CappedLog` (and optionally
  a `CurveThinner`).

`tail()` and `parse_curve()` read back a log file, as the worker's functions of the same
names do, with bounded memory.
"""

from __future__ import annotations

import os
import select
import threading
from pathlib import Path
from typing import IO

HEAD_BYTES = 256 * 1024      # kept from the start of a log: how the run began, its settings
TAIL_BYTES = 256 * 1024      # kept from the end: the error and the last progress lines
CURVE_POINTS = 2000          # most points of a learning curve kept (plus the last one)
MAX_LINE_BYTES = 64 * 1024   # a longer line is no METRIC line we parse (bounds the line buffer)
CHUNK_BYTES = 64 * 1024      # one read from the pipe
TAIL_LINES = 40
MARKER = b"\n[ideaforge: %d bytes (%d lines) dropped here; this log keeps its first %d and last %d bytes]\n"


class CappedLog:
    """A log file that keeps the head and the tail of what is written to it."""

    def __init__(self, path: str | Path, head_bytes: int = HEAD_BYTES, tail_bytes: int = TAIL_BYTES):
        self.path = Path(path)
        self.head_bytes, self.tail_bytes = head_bytes, tail_bytes
        self.f = open(self.path, "wb")
        self.head = 0            # bytes of the head written
        self.tail_start = 0      # file offset where the tail region begins (after the marker)
        self.tail_len = 0        # bytes in the tail region
        self.dropped = 0         # bytes dropped between head and tail
        self.dropped_lines = 0
        self.total = 0           # bytes written in all

    def write(self, data: bytes) -> None:
        self.total += len(data)
        if self.head < self.head_bytes:
            part = data[: self.head_bytes - self.head]
            self.f.write(part)
            self.head += len(part)
            data = data[len(part):]
            self.tail_start = self.head
        if not data:
            return
        self.f.write(data)
        self.tail_len += len(data)
        if self.tail_len >= 2 * self.tail_bytes:
            self._cut(self.tail_bytes)

    def _cut(self, keep: int) -> None:
        """Drop all but the last `keep` bytes of the tail region (cut at a line start when one is near)."""
        self.f.flush()
        with open(self.path, "rb") as r:
            r.seek(self.tail_start + self.tail_len - keep)
            kept = r.read(keep)
        nl = kept.find(b"\n", 0, 4096)
        if nl >= 0:
            kept = kept[nl + 1:]
        gone = self.tail_len - len(kept)
        with open(self.path, "rb") as r:  # count the lines of what goes (read in bounded chunks)
            r.seek(self.tail_start)
            left = gone
            while left > 0:
                block = r.read(min(left, 1 << 20))
                if not block:
                    break
                self.dropped_lines += block.count(b"\n")
                left -= len(block)
        self.dropped += gone
        self.f.seek(self.head)
        marker = MARKER % (self.dropped, self.dropped_lines, self.head_bytes, self.tail_bytes)
        self.f.write(marker)
        self.tail_start = self.head + len(marker)
        self.f.write(kept)
        self.f.truncate()
        self.tail_len = len(kept)

    def close(self) -> None:
        if self.f.closed:
            return
        if self.tail_len > self.tail_bytes:
            self._cut(self.tail_bytes)
        self.f.close()

    def __enter__(self) -> "CappedLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CurveThinner:
    """`METRIC key=value ...` lines -> at most `limit` evenly strided points, plus the last."""

    def __init__(self, limit: int = CURVE_POINTS):
        self.limit = max(2, limit)
        self.k = 1                                   # keep the METRIC lines whose index is a multiple of k
        self.seen = 0                                # METRIC lines seen
        self.kept: list[tuple[int, dict[str, float]]] = []  # (line index, point)
        self._last: tuple[int, bytes] | None = None  # the latest METRIC line, parsed only at the end
        self._partial = b""                          # an unfinished line carried to the next chunk

    def feed(self, data: bytes) -> None:
        """Feed raw output; lines may span calls."""
        if self._partial:
            data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE_BYTES:
            self._partial = b"#"  # the rest of a huge line: never a point
        for line in lines:
            if b"METRIC" in line:
                self._line(line.strip())

    def _line(self, body: bytes) -> None:
        if not body.startswith(b"METRIC") or body[6:7] not in (b" ", b"\t"):
            return
        i = self.seen
        self.seen += 1
        self._last = (i, body)
        if i % self.k:
            return  # not on the stride: never parsed
        point = _point(body)
        if point is None:
            return
        self.kept.append((i, point))
        if len(self.kept) > self.limit:
            self.k *= 2
            self.kept = [(j, p) for j, p in self.kept if j % self.k == 0]

    def points(self) -> list[dict[str, float]]:
        """The thinned curve; the last METRIC point ends it."""
        if self._partial:
            self.feed(b"\n")
        out = [p for _, p in self.kept]
        if self._last is not None and (not self.kept or self.kept[-1][0] != self._last[0]):
            last = _point(self._last[1])
            if last is not None:
                out.append(last)
        return out


def _point(body: bytes) -> dict[str, float] | None:
    """b'METRIC step=3 loss=0.5 note=x' -> {'step': 3.0, 'loss': 0.5} (numbers only); None if none."""
    point = {}
    for item in body[6:].decode("utf-8", "replace").split():
        k, _, v = item.partition("=")
        try:
            point[k] = float(v)
        except ValueError:
            continue
    return point or None


class LogPump:
    """A thread draining one pipe into a CappedLog (and a CurveThinner), so the child never blocks."""

    def __init__(self, pipe: IO[bytes] | int, path: str | Path, curve: CurveThinner | None = None,
                 head_bytes: int = HEAD_BYTES, tail_bytes: int = TAIL_BYTES):
        self.fd = pipe if isinstance(pipe, int) else pipe.fileno()
        self._pipe = pipe
        self.log = CappedLog(path, head_bytes, tail_bytes)
        self.curve = curve
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"logpump:{Path(path).name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([self.fd], [], [], 0.5)  # wakes to notice finish()
                if not ready:
                    continue
                data = os.read(self.fd, CHUNK_BYTES)
                if not data:
                    break
                self.log.write(data)
                if self.curve is not None:
                    self.curve.feed(data)
        finally:
            self.log.close()

    def finish(self, timeout: float = 5.0) -> None:
        """Wait for end of output; after `timeout` s (a grandchild holding the pipe) stop reading anyway."""
        self.thread.join(timeout)
        if self.thread.is_alive():
            self._stop.set()
            self.thread.join()
        if not isinstance(self._pipe, int):
            self._pipe.close()
        else:
            os.close(self._pipe)


# -- reading a log back ----------------------------------------------------------------------
def tail(path: str | Path, n: int = TAIL_LINES) -> str:
    """The last `n` lines of a log (reads at most its last 64 KB)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
    except OSError:
        return ""


def parse_curve(path: str | Path, limit: int = CURVE_POINTS) -> list[dict[str, float]]:
    """The thinned curve of a log file, read in chunks (bounded memory, whatever the file's size)."""
    thinner = CurveThinner(limit)
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                thinner.feed(block)
    except OSError:
        return []
    return thinner.points()
