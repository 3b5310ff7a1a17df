"""Kill the controller with SIGKILL at several points, resume, and check nothing is lost or run twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from fakes.toyenv import make_toy_env
from ideaforge.store import Store


def _controller(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ideaforge.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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
    seeds = 8
    proc = _controller(["baseline", str(env), "--seeds", str(seeds), "--slots", "2", "--dir", str(camp)])
    kills = 0
    for delay in (0.9, 0.4, 1.3, 0.2, 0.7):  # different points: mid-launch, mid-trial, mid-ingest
        time.sleep(delay)
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        proc = _controller(["baseline", "--resume", str(camp)])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert kills >= 2

    store = Store.open_readonly(camp)
    trials = store.trials()
    assert len(trials) == seeds
    assert all(t["status"] == "done" and t["outcome"] == "evaluated" for t in trials), trials
    assert sorted(t["metric"] for t in trials) == [1.0 + s for s in range(seeds)]
    ran = sorted(int(x) for x in runs_log.read_text().split())
    assert ran == list(range(seeds)), f"some trial ran twice or never: {ran}"
    # No worker is left running.
    leftovers = subprocess.run(["pgrep", "-f", f"ideaforge.execute.worker {camp}"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""


def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path):
    train = """
    import json, os, time
    time.sleep(30)
    json.dump({"score": 1.0}, open(os.path.join(os.environ["IDEAFORGE_OUT"], "ckpt.json"), "w"))
    """
    env = make_toy_env(tmp_path / "env", train, timeout_s=60)
    camp = tmp_path / "camp"
    proc = _controller(["baseline", str(env), "--seeds", "2", "--slots", "2", "--dir", str(camp)])
    time.sleep(2.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    assert "Resume with" in out
    store = Store.open_readonly(camp)
    assert all(t["status"] == "queued" for t in store.trials())
    leftovers = subprocess.run(["pgrep", "-f", f"{camp}"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "a trial outlived Ctrl-C"
