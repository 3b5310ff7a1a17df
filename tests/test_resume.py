"""Kill the controller with SIGKILL at several points, resume, and check nothing is lost or run twice.

Kill points are conditions (the campaign exists, n trials have started), never fixed
sleeps, so the test means the same thing on an idle and on a loaded machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fakes.toyenv import make_toy_env
from ideaforge.store import Store


def _controller(args: list[str], mark: str) -> subprocess.Popen:
    # The mark travels in the environment to every worker this controller starts, so the
    # test can find its own workers among other processes on the machine.
    return subprocess.Popen([sys.executable, "-m", "ideaforge.cli", *args], env=dict(os.environ, TEST_MARK=mark),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(cond, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _leftovers(camp: Path, mark: str) -> list[str]:
    """Processes still working in the campaign (by cwd) or workers our controllers started (by mark)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            with open(f"/proc/{pid}/environ", "rb") as f:
                marked = f"TEST_MARK={mark}".encode() in f.read().split(b"\0")
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if not zombie and (marked or cwd == str(camp) or cwd.startswith(f"{camp}/")):
            found.append(f"{pid} cwd={cwd}")
    return found


def _lines(path: Path) -> int:
    try:
        return len(path.read_text().split())
    except OSError:
        return 0


def test_sigkill_of_controller_loses_nothing_and_runs_nothing_twice(tmp_path, monkeypatch):
    # The trials count their runs in a file outside the trial, which a jail forbids; this test is
    # about the controller, so its trials run unjailed.
    monkeypatch.setenv("IDEAFORGE_JAIL", "none")
    runs_log = tmp_path / "runs.log"
    train = f"""
    import json, os, time
    seed = int(os.environ["IDEAFORGE_SEED"])
    with open({str(runs_log)!r}, "a") as f:
        f.write(f"{{seed}}\\n")
    time.sleep(0.6)
    json.dump({{"score": 1.0 + seed}}, open(os.path.join(os.environ["IDEAFORGE_OUT"], "ckpt.json"), "w"))
    """
    env = make_toy_env(tmp_path / "env", train)
    camp = tmp_path / "camp"
    mark = str(tmp_path)
    seeds = 8
    proc = _controller(["baseline", str(env), "--seeds", str(seeds), "--slots", "2", "--dir", str(camp)], mark)
    # Kill points: right after the database exists (mid-launch), then as trials have started.
    points = [lambda: (camp / "campaign.db").exists()] + [lambda n=n: _lines(runs_log) >= n for n in (1, 3, 4, 6)]
    kills = 0
    for point in points:
        _wait_for(lambda: point() or proc.poll() is not None, what="the next kill point")
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        proc = _controller(["baseline", "--resume", str(camp)], mark)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert kills >= 3, out

    store = Store.open_readonly(camp)
    trials = store.trials()
    assert len(trials) == seeds
    assert all(t["status"] == "done" and t["outcome"] == "evaluated" for t in trials), trials
    assert sorted(t["metric"] for t in trials) == [1.0 + s for s in range(seeds)]
    ran = sorted(int(x) for x in runs_log.read_text().split())
    assert ran == list(range(seeds)), f"some trial ran twice or never: {ran}"
    # No worker is left running (an idle worker exits on EOF once its controller is gone).
    _wait_for(lambda: not _leftovers(camp, mark), timeout=30, what=f"leftover processes: {_leftovers(camp, mark)}")


def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path):
    train = """
    import json, os, time
    open(os.path.join(os.environ["IDEAFORGE_OUT"], "started"), "w").close()
    time.sleep(30)
    json.dump({"score": 1.0}, open(os.path.join(os.environ["IDEAFORGE_OUT"], "ckpt.json"), "w"))
    """
    env = make_toy_env(tmp_path / "env", train, timeout_s=60)
    camp = tmp_path / "camp"
    mark = str(tmp_path)
    proc = _controller(["baseline", str(env), "--seeds", "2", "--slots", "2", "--dir", str(camp)], mark)
    started = [camp / "trials" / f"{i:05d}" / "out" / "started" for i in (1, 2)]
    _wait_for(lambda: all(p.exists() for p in started) or proc.poll() is not None, what="both trials to train")
    assert proc.poll() is None, proc.communicate()[0]
    assert _leftovers(camp, mark), "the leftover check sees nothing even while trials run"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    assert "Resume with" in out
    store = Store.open_readonly(camp)
    assert all(t["status"] == "queued" for t in store.trials())
    _wait_for(lambda: not _leftovers(camp, mark), timeout=10, what=f"a trial outlived Ctrl-C: {_leftovers(camp, mark)}")
