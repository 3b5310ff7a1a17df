"""Bounded logs and curves: a capped head+tail sink and a streaming curve thinner, fed from real pipes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from ideaforge.execute.logs import HEAD_BYTES, TAIL_BYTES, CappedLog, CurveThinner, LogPump, parse_curve, tail

SRC = Path(__file__).resolve().parents[1] / "src"
MARKER_MAX = 200  # bytes of the dropped-here line


def test_capped_log_keeps_head_and_tail_and_stays_bounded_while_written(tmp_path):
    rng = random.Random(0)
    data = b"".join(b"line %08d %s\n" % (i, b"x" * rng.randrange(80)) for i in range(600_000))  # ~29 MB
    path = tmp_path / "train.out"
    log = CappedLog(path)
    pos = 0
    while pos < len(data):
        n = rng.randrange(1, 200_000)
        log.write(data[pos:pos + n])
        pos += n
        assert path.stat().st_size <= HEAD_BYTES + 2 * TAIL_BYTES + MARKER_MAX  # bounded at every moment
    log.close()
    kept = path.read_bytes()
    assert len(kept) <= HEAD_BYTES + TAIL_BYTES + MARKER_MAX
    assert kept.startswith(data[:HEAD_BYTES])
    head, marker, rest = kept[:HEAD_BYTES], *kept[HEAD_BYTES:].split(b"]\n", 1)
    assert data.endswith(rest) and len(rest) > TAIL_BYTES - 4096 and rest.startswith(b"line ")
    dropped = len(data) - len(head) - len(rest)
    dropped_lines = data[HEAD_BYTES:len(data) - len(rest)].count(b"\n")
    assert f"{dropped} bytes ({dropped_lines} lines) dropped".encode() in marker
    assert tail(path, 2).splitlines()[-1] == data.rstrip(b"\n").rsplit(b"\n", 1)[-1].decode()


def test_small_logs_are_kept_whole(tmp_path):
    with CappedLog(tmp_path / "a.out") as log:
        log.write(b"hello\n")
        log.write(b"METRIC step=1 loss=2\n")
    assert (tmp_path / "a.out").read_bytes() == b"hello\nMETRIC step=1 loss=2\n"


def test_curve_is_whole_when_short_and_strided_with_its_last_point_when_long(tmp_path):
    short = CurveThinner(limit=100)
    short.feed(b"noise\nMETRIC step=0 loss=1.5 tag=x\n  METRIC step=1 loss=1.2\nMETRICS=3\nMETRIC st")
    short.feed(b"ep=2 loss=1.0")  # a line split across reads, and no newline at the end
    assert short.points() == [{"step": 0, "loss": 1.5}, {"step": 1, "loss": 1.2}, {"step": 2, "loss": 1.0}]

    thin = CurveThinner(limit=100)
    n = 123_457
    block = b"".join(b"METRIC step=%d loss=%d\n" % (i, n - i) for i in range(n))
    for i in range(0, len(block), 4096):
        thin.feed(block[i:i + 4096])
    pts = thin.points()
    assert 50 <= len(pts) <= 101
    steps = [p["step"] for p in pts]
    assert steps[0] == 0 and steps[-1] == n - 1
    gaps = {b - a for a, b in zip(steps[:-2], steps[1:-1])}
    assert len(gaps) == 1  # evenly strided
    (tmp_path / "c.out").write_bytes(block)
    assert parse_curve(tmp_path / "c.out", limit=100) == pts


# A worker-like process: a child floods its stdout (METRIC lines) and stderr; the parent drains both
# pipes through LogPumps and reports its own peak RSS.
FLOOD = r"""
import json, os, subprocess, sys
from ideaforge.execute.logs import CurveThinner, LogPump
lines, out = int(sys.argv[1]), sys.argv[2]
child = ("import sys\n"
         "w = sys.stdout.buffer.write\n"
         f"for s in range(0, {lines}, 10000):\n"
         "    w(b''.join(b'METRIC step=%d loss=%.6f\\n' % (i, 1 / (i + 1)) for i in range(s, min(s + 10000, "
         f"{lines}))))\n"
         "    sys.stderr.write('warning: still going\\n' * 50)\n")
proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
curve = CurveThinner()
pumps = [LogPump(proc.stdout, out + ".out", curve), LogPump(proc.stderr, out + ".err")]
rc = proc.wait()
for p in pumps:
    p.finish()
pts = curve.points()
# Peak RSS of this process image: VmHWM resets at exec, while getrusage's ru_maxrss keeps the peak of
# the process that forked us (pytest, holding test data), which would hide what the pumps cost.
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"rc": rc, "rss_kb": hwm, "points": len(pts),
                  "last": pts[-1] if pts else None, "seen": curve.seen,
                  "size": os.path.getsize(out + ".out"), "err_size": os.path.getsize(out + ".err")}))
"""


def _flood(tmp_path: Path, lines: int) -> dict:
    script = tmp_path / "flood.py"
    script.write_text(FLOOD)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, str(script), str(lines), str(tmp_path / f"train{lines}")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.slow  # ~3 CPU s: 2 M lines through a real pipe
def test_two_million_metric_lines_keep_the_worker_and_the_file_small(tmp_path):
    small = _flood(tmp_path, 1_000)
    big = _flood(tmp_path, 2_000_000)  # ~55 MB on stdout, ~10 MB on stderr
    assert big["rc"] == 0 and big["seen"] == 2_000_000
    assert big["size"] <= HEAD_BYTES + TAIL_BYTES + MARKER_MAX and big["err_size"] <= HEAD_BYTES + TAIL_BYTES + MARKER_MAX
    assert 1000 <= big["points"] <= 2001 and big["last"]["step"] == 1_999_999
    grew_mb = (big["rss_kb"] - small["rss_kb"]) / 1024
    assert grew_mb < 30, f"peak RSS grew {grew_mb:.0f} MB from 1k to 2M METRIC lines"
    print(f"peak RSS: {small['rss_kb'] / 1024:.0f} MB at 1k lines, {big['rss_kb'] / 1024:.0f} MB at 2M lines")


def test_a_grandchild_holding_the_pipe_does_not_hang_the_pump(tmp_path):
    # The shell exits at once; its background child keeps stdout open for 60 s.
    proc = subprocess.Popen(["/bin/sh", "-c", "echo started; sleep 60 & echo bye"], stdout=subprocess.PIPE,
                            start_new_session=True)
    pump = LogPump(proc.stdout, tmp_path / "x.out")
    proc.wait()
    try:
        pump.finish(timeout=0.5)
        assert not pump.thread.is_alive()
        assert (tmp_path / "x.out").read_bytes() == b"started\nbye\n"
    finally:
        os.killpg(proc.pid, 9)


def test_a_trial_that_floods_its_output_keeps_capped_logs_and_a_thinned_curve(tmp_path):
    """Through the real worker: 3 MB of stdout and 200,000 METRIC lines leave train.out head+tail
    capped and a curve of at most CURVE_POINTS+1 points ending at the last step."""
    from fakes.toyenv import DEFAULT_TRAIN, make_toy_env
    from ideaforge.envs import load_env
    from ideaforge.execute.local import LocalExecutor
    from ideaforge.execute.logs import CURVE_POINTS, HEAD_BYTES, TAIL_BYTES
    from ideaforge.search.campaign import Campaign, TrialRunner

    flood = ("import sys\nw = sys.stdout.write\nfor i in range(200_000):\n"
             "    w(f'METRIC step={i} loss={1.0 / (i + 1):.6f}\\n')\n"
             "w('x' * 3_000_000 + '\\n')\n")
    env = make_toy_env(tmp_path / "env", flood + DEFAULT_TRAIN.replace('"x": X', '"x": 0.0'), budget_s=60,
                       timeout_s=300)
    camp = Campaign.create(tmp_path / "camp", load_env(env))
    tid = camp.store.add_trial("candidate", seed=0, budget_s=60)
    with LocalExecutor(slots=1) as ex:
        TrialRunner(camp, ex).drain()
    t = camp.store.trial(tid)
    assert t["outcome"] == "evaluated", t["reason"]
    size = (camp.store.trial_dir(tid) / "train.out").stat().st_size
    assert size <= HEAD_BYTES + TAIL_BYTES + 1024, size
    assert 100 < len(t["curve"]) <= CURVE_POINTS + 1 and t["curve"][-1]["step"] == 2  # DEFAULT_TRAIN's last step
