"""The jail (execute/jail.py), the harness-owned budget clock and the built-in manifest, with real processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fakes.toyenv import make_toy_env
from ideaforge.envs import load_env
from ideaforge.envs import manifest
from ideaforge.errors import EnvError
from ideaforge.execute import jail, worker
from ideaforge.execute.local import LocalExecutor
from ideaforge.search.campaign import Campaign, TrialRunner

needs_jail = pytest.mark.skipif(jail.isolation() != "bubblewrap", reason="no bubblewrap jail on this machine")


def jailed_python(tmp_path: Path, code: str, *, readonly=None, network=False, env=None) -> subprocess.CompletedProcess:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    argv = jail.jail_argv([sys.executable, "-c", textwrap.dedent(code)], cwd=work, writable=[work],
                          readonly=readonly or {}, env=env or {"PATH": os.environ["PATH"]}, network=network,
                          isolate=True)
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_environment_is_an_allow_list():
    base = {"PATH": "/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "TZ": "UTC", "OMP_NUM_THREADS": "2",
            "IDEAFORGE_SEED": "3", "DATABASE_URL": "postgres://u:p@h/db", "KAGGLE_KEY": "k", "MYSQL_PWD": "p",
            "SENTRY_DSN": "https://x@y/1", "IDEAFORGE_MODEL": "claude", "IDEAFORGE_JAIL": "none", "HOME": "/root",
            "PYTHONPATH": "/somewhere", "LD_PRELOAD": "/evil.so"}
    assert jail.allowed_environ(base) == {"PATH": "/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "TZ": "UTC",
                                          "OMP_NUM_THREADS": "2", "IDEAFORGE_SEED": "3"}


def test_unjailed_argv_still_replaces_the_environment():
    argv = jail.jail_argv(["python", "x.py"], cwd=Path("/tmp"), writable=[], readonly={}, env={"A": "1"},
                          isolate=False)
    assert argv[1:] == ["-i", "A=1", "python", "x.py"]


def test_gpu_passthrough_names_only_leased_devices():
    argv = jail.jail_argv(["true"], cwd=Path("/tmp"), writable=[], readonly={}, env={}, gpu_ids=["1"], isolate=True)
    text = " ".join(argv)
    assert "/dev/nvidia1 /dev/nvidia1" in text and "/dev/nvidiactl" in text
    assert "/dev/nvidia0" not in text
    assert "--unshare-net" in argv
    assert "--unshare-net" not in jail.jail_argv(["true"], cwd=Path("/tmp"), writable=[], readonly={}, env={},
                                                 network=True, isolate=True)


def test_jail_var_forces_no_isolation_and_says_why():
    code = "from ideaforge.execute import jail; print(jail.isolation(), '|', jail.why_unisolated())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, IDEAFORGE_JAIL="none")).stdout
    assert out.startswith("none | IDEAFORGE_JAIL=none")


def test_unisolated_warning_is_said_once(monkeypatch):
    monkeypatch.setenv("IDEAFORGE_JAIL", "none")
    jail._reset_for_tests()
    said = []
    try:
        assert jail.warn_unisolated(said.append) == "none"
        jail.warn_unisolated(said.append)
    finally:
        monkeypatch.delenv("IDEAFORGE_JAIL")
        jail._reset_for_tests()
    assert len(said) == 1 and "UNISOLATED" in said[0]


@needs_jail
def test_jail_sees_only_what_it_is_given(tmp_path):
    data = tmp_path / "env" / "data"
    data.mkdir(parents=True)
    (data / "train.txt").write_text("train")
    (tmp_path / "env" / "eval").mkdir()
    (tmp_path / "env" / "eval" / "val.txt").write_text("held-out")
    (tmp_path / "camp").mkdir()
    (tmp_path / "camp" / "campaign.db").write_text("prompts")
    r = jailed_python(tmp_path, f"""
        import os, json
        seen = {{
            "data": sorted(os.listdir("/data")),
            "data_parent": sorted(os.listdir("/data/..")),
            "held_out": os.path.exists({str(tmp_path / 'env' / 'eval' / 'val.txt')!r}),
            "campaign": os.path.exists({str(tmp_path / 'camp' / 'campaign.db')!r}),
            "home": sorted(os.listdir({str(Path.home())!r})) if os.path.isdir({str(Path.home())!r}) else [],
            "builtin": os.listdir({str(Path(jail.__file__).parents[1] / 'envs' / 'builtin')!r}),
            "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
            "environ_1": open("/proc/1/environ", "rb").read().decode(errors="replace"),
        }}
        for target in ("/data/new", "/usr/x", "/x", {str(Path(jail.__file__))!r}):
            try:
                open(target, "a").write("x")
                seen[target] = "written"
            except OSError as e:
                seen[target] = type(e).__name__
        open("ok.txt", "w").write("workspace is writable")
        print(json.dumps(seen))
        """, readonly={"/data": data}, env={"PATH": os.environ["PATH"], "IDEAFORGE_SEED": "1"})
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["data"] == ["train.txt"]
    assert "eval" not in seen["data_parent"] and "env" not in seen["data_parent"]
    assert not seen["held_out"] and not seen["campaign"]
    # Of HOME only the directories leading to a bound Python installation exist (e.g. ~/.pyenv), nothing else.
    home = Path.home()
    python_dirs = {Path(p).resolve().relative_to(home).parts[0] for p in (sys.prefix, sys.base_prefix)
                   if home in Path(p).resolve().parents}
    assert set(seen["home"]) <= python_dirs, seen["home"]
    assert seen["builtin"] == []
    assert max(seen["procs"]) < 10  # its own PID namespace: none of the host's processes
    assert "IDEAFORGE_SEED=1" in seen["environ_1"] and "PATH" in seen["environ_1"]
    assert all(v != "written" for k, v in seen.items() if k.startswith("/")), seen
    assert (tmp_path / "work" / "ok.txt").read_text() == "workspace is writable"
    assert not (data / "new").exists()


@needs_jail
def test_jail_has_no_network_unless_declared(tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    code = f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=5); print("connected")
        except OSError as e:
            print("refused", type(e).__name__)
        """
    try:
        assert jailed_python(tmp_path, code).stdout.startswith("refused")
        assert jailed_python(tmp_path, code, network=True).stdout.startswith("connected")
    finally:
        srv.close()


# -- the harness owns the clock -------------------------------------------------------------
def _one_trial(tmp_path, train, clock: str = "wall", **kw) -> dict:
    env = make_toy_env(tmp_path / "env", train, **kw)
    toml = env / "ideaforge.toml"
    toml.write_text(toml.read_text().replace("[run]\n", f'[run]\nbudget_clock = "{clock}"\n'))
    camp = Campaign.create(tmp_path / "camp", load_env(env))
    tid = camp.store.add_trial("candidate", seed=1, budget_s=camp.spec.budget_s)
    with LocalExecutor() as ex:
        TrialRunner(camp, ex).drain()
    t = camp.store.trial(tid)
    t["record"] = json.loads((camp.store.trial_dir(tid) / "record.json").read_text())
    return t


def test_honest_trial_records_isolation_and_both_clocks(tmp_path):
    t = _one_trial(tmp_path, None)
    assert t["outcome"] == "evaluated", t["reason"]
    assert t["isolation"] == jail.isolation() and t["record"]["isolation"] == t["isolation"]
    assert t["record"]["budget_clock"] == "wall"
    assert t["train_cpu_s"] is not None and t["train_cpu_s"] > 0  # python start-up at least
    assert t["record"]["train_wall_s"] > 0


def test_training_killed_by_sigkill_is_oom_through_the_jail(tmp_path):
    """The jail (and a shell) report a child's death by signal N as exit 128+N; the outcome is the same."""
    t = _one_trial(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    assert t["outcome"] == "oom", t["reason"]
    t = _one_trial(tmp_path / "b", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    assert t["outcome"] == "failed" and "SIGSEGV" in t["reason"]


@pytest.mark.slow
def test_cpu_budget_is_measured_by_the_harness_and_enforced_by_a_kill(tmp_path):
    """Training that burns CPU past budget + grace, whatever its own clock says, is killed and invalid."""
    train = """
    import time
    time.process_time = lambda: 0.0          # lie about its own CPU clock
    time.time = lambda: 0.0
    while True:
        pass
    """
    t = _one_trial(tmp_path, train, "cpu", budget_s=1, timeout_s=120)
    assert t["outcome"] == "invalid", t["reason"]
    assert "budget" in t["reason"] and "killed" in t["reason"]
    assert t["train_cpu_s"] >= 1 + worker.budget_grace_s(1)


@pytest.mark.slow
def test_wall_budget_overrun_is_invalid(tmp_path):
    train = """
    import time
    time.time = lambda: 0.0                  # its own clock says no time passed
    time.sleep(7.5)
    """
    t = _one_trial(tmp_path, train, budget_s=1, timeout_s=60)
    assert t["outcome"] == "invalid", t["reason"]
    assert t["reason"].startswith("trained ") and "on a 1 s budget" in t["reason"]


def test_budget_clock_is_validated(tmp_path):
    env = make_toy_env(tmp_path / "env")
    toml = env / "ideaforge.toml"
    toml.write_text(toml.read_text().replace('[run]\n', '[run]\nbudget_clock = "cpu"\n'))
    assert load_env(env).budget_clock == "cpu"
    toml.write_text(toml.read_text().replace('budget_clock = "cpu"', 'budget_clock = "gpu"'))
    with pytest.raises(EnvError, match="budget_clock"):
        load_env(env)
    toml.write_text(toml.read_text().replace('budget_clock = "gpu"\n', '') + "network = true\n")
    assert load_env(env).network is True


def test_builtin_envs_count_cpu_time():
    for name in ("nanogpt-cpu", "grpo-cpu"):
        spec = load_env(name)
        assert spec.budget_clock == "cpu"
        assert "IDEAFORGE_BUDGET_CLOCK" in (spec.root / "train.py").read_text()


# -- integrity of the built-in environments ---------------------------------------------------
def test_shipped_manifest_matches_the_tree():
    shipped = json.loads(manifest.MANIFEST.read_text())
    assert shipped == manifest.build_manifest(), \
        "the built-in environments changed: run `python -m ideaforge.envs.manifest --write` and commit"


def test_tampered_builtin_is_refused_naming_the_file(tmp_path):
    copy = tmp_path / "nanogpt-cpu"
    shutil.copytree(manifest.BUILTIN_DIR / "nanogpt-cpu", copy, ignore=shutil.ignore_patterns("__pycache__"))
    manifest.verify_builtin(copy)  # intact
    with open(copy / "data" / "train.txt", "a") as f:
        f.write("the held-out plays, appended\n")
    (copy / "evaluate.py").write_text("print('always 0.0001')\n")
    (copy / "data" / "extra.txt").write_text("more")
    with pytest.raises(EnvError) as e:
        manifest.verify_builtin(copy)
    msg = str(e.value)
    assert "data/train.txt: changed" in msg and "evaluate.py: changed" in msg and "data/extra.txt: added" in msg
    assert "pip install --force-reinstall ideaforge" in msg


def test_load_env_checks_builtins(tmp_path, monkeypatch):
    bad = json.loads(manifest.MANIFEST.read_text())
    bad["grpo-cpu"]["train.py"] = "0" * 64
    fake = tmp_path / "manifest.json"
    fake.write_text(json.dumps(bad))
    monkeypatch.setattr(manifest, "MANIFEST", fake)
    with pytest.raises(EnvError, match="train.py: changed"):
        load_env("grpo-cpu")
    load_env("nanogpt-cpu")


# -- every view says how trials were isolated -------------------------------------------------
@pytest.mark.parametrize("forced", [False, True], ids=["detected", "forced-none"])
def test_env_check_and_status_show_isolation(tmp_path, forced):
    env = make_toy_env(tmp_path / "env")
    run_env = dict(os.environ, **({"IDEAFORGE_JAIL": "none"} if forced else {}))
    out = subprocess.run([sys.executable, "-m", "ideaforge.cli", "env", "check", str(env), "--dir", str(tmp_path / "c")],
                         capture_output=True, text=True, timeout=120, env=run_env)
    assert out.returncode == 0, out.stdout + out.stderr
    expected = "none" if forced else jail.isolation()
    if expected == "none":
        assert "isolation: NONE" in out.stdout and "UNISOLATED" in out.stdout
    else:
        assert "isolation: bubblewrap" in out.stdout and "UNISOLATED" not in out.stdout
    from ideaforge.report.text import isolation_lines
    from ideaforge.store import Store

    lines = isolation_lines(Store.open_readonly(tmp_path / "c"))
    assert lines[0] == f"isolation: 1 trial(s) {expected}"
    assert any("UNISOLATED" in line for line in lines) == (expected == "none")
    from ideaforge.report import write_report

    html = write_report(tmp_path / "c").read_text()
    assert f"1 {expected}" in html  # the summary's isolation card
    assert ("ran UNISOLATED" in html) == (expected == "none")


@needs_jail
def test_a_python_installed_under_tmp_can_be_jailed(tmp_path):
    """A CI clone or a venv under /tmp: the jail's fresh /tmp must not hide the interpreter (it did:
    every trial then ran unjailed, `isolation: none`)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    code = "from ideaforge.execute import jail; print(jail.isolation(), jail.why_unisolated())"
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(Path(jail.__file__).resolve().parents[2])))
    assert out.stdout.startswith("bubblewrap"), out.stdout + out.stderr
