"""One trial, start to finish: train, evaluate, write `record.json`.

Run as `python -m ideaforge.execute.worker` with the trial handed over on stdin (see
`main`), detached in its own session, so that it outlives a controller killed with SIGKILL and finishes its
trial; the controller re-attaches or collects the record later. The Ray backend calls
`run_trial` directly.

Trial directory layout:
    job.json      what to run (written by the controller)
    work/         the workspace: cwd of training
    out/          IDEAFORGE_OUT
    train.out/err training's stdout and stderr
    eval/         created after training: pristine hidden files, cwd of the evaluator
    eval.out/err  the evaluator's stdout and stderr
    worker.json   pid of this worker, written first
    record.json   the outcome, written last and atomically (the trusted record)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import resource
import select
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import NamedTuple

from ideaforge.execute import jail
from ideaforge.execute.job import Job, atomic_write_json
from ideaforge.execute.logs import CurveThinner, LogPump, tail
from ideaforge.execute.proctree import (RUN_TOKEN, become_subreaper, carrying, descendants, die_with_parent,
                                        tree_cpu_s)

_OOM_LINE = re.compile(r"^([\w.]+\.)?(MemoryError|OutOfMemoryError)\b", re.M)
_PLAIN = re.compile(r"[\w./=:@%+,-]+( +[\w./=:@%+,-]+)*")  # no quoting, globs, redirects or operators
GRACE_S = 2.0  # SIGTERM -> SIGKILL grace when a timeout hits, seconds
CPU_POLL_S = 0.5  # how often the training tree's CPU time is read under a CPU budget, seconds

_running: dict[subprocess.Popen, str | None] = {}  # runs in progress -> run token (Ray runs several in threads)
_running_lock = threading.Lock()
# Only a dedicated worker process (one run at a time, a child subreaper) may sweep up every
# descendant of itself; anywhere else (the controller's smoke checks) a run kills its own tree.
_dedicated = False


def budget_grace_s(budget_s: float) -> float:
    """Seconds a run may go past its budget before it is invalid: interpreter start, imports, saving."""
    return max(5.0, 0.2 * budget_s)


def trial_environ(job: Job, trial_dir: Path, gpu_ids: list[str], jailed: bool | None = None) -> dict[str, str]:
    """A trial's whole environment, from an allow-list (locale, PATH, threads, IDEAFORGE_*), never by stripping."""
    if jailed is None:
        jailed = jail.isolation() == "bubblewrap"
    env = jail.allowed_environ(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    env["PYTHONUNBUFFERED"] = "1"
    for var in jail.THREAD_VARS:
        env[var] = str(job.cpus)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    env["IDEAFORGE_GPUS"] = str(len(gpu_ids))
    env["IDEAFORGE_OUT"] = str(trial_dir / "out")
    env["IDEAFORGE_BUDGET_S"] = repr(float(job.budget_s))
    env["IDEAFORGE_BUDGET_CLOCK"] = job.budget_clock
    env["IDEAFORGE_SEED"] = str(job.seed)
    if jailed:
        env["HOME"] = jail.JAIL_HOME
    else:  # a writable HOME of its own, never the user's
        (trial_dir / "home").mkdir(exist_ok=True)
        env["HOME"] = str(trial_dir / "home")
    if job.data:
        env["IDEAFORGE_DATA"] = _data_mounts(job)[0][0] if jailed else next(iter(job.data.values()))
    if job.prepared:
        env["IDEAFORGE_PREPARED"] = job.prepared
    env.update(job.env)  # the profile's variables; spec.py refuses IDEAFORGE_* and the ones set above
    return env


def _data_mounts(job: Job) -> list[tuple[str, str]]:
    """(path inside the jail, host path) of each data path: one alone at /data, several at /data/<rel>."""
    if len(job.data) == 1:
        return [(jail.DATA_MOUNT, next(iter(job.data.values())))]
    return [(f"{jail.DATA_MOUNT}/{rel}", src) for rel, src in job.data.items()]


def trial_jail(job: Job, trial_dir: Path, gpu_ids: list[str], writable: list[Path],
               readonly: dict[str, Path] | None = None) -> jail.Jail:
    """The jail of one run of a trial: `writable` and the environment's data (read-only) and nothing else."""
    ro: dict[str, Path] = {}
    for dest, src in _data_mounts(job):
        ro[dest] = Path(src)
        ro[str(Path(src).resolve())] = Path(src)  # where the workspace's data link points
    if job.prepared:
        ro[job.prepared] = Path(job.prepared)
    ro.update(readonly or {})
    hide = [trial_dir.parent] + ([Path(job.hidden_src).parent] if job.hidden_src else [])
    return jail.Jail(writable=tuple(writable), readonly=ro, network=job.network, gpu_ids=tuple(gpu_ids),
                     hide=tuple(hide))


# -- process-tree control (the /proc reading is in proctree.py) -----------------------------
def _kill_tree(proc: subprocess.Popen | None, sig: int, token: str | None = None) -> None:
    """Signal `proc`'s own process group and tree (and, unjailed, whatever carries its run token);
    in a dedicated worker, every descendant too."""
    pids = set(descendants(os.getpid())) if _dedicated else set()
    if token:
        pids |= carrying(token) - {os.getpid()}
    if proc is not None:
        pids |= set(descendants(proc.pid))
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _reap() -> None:
    """Collect re-parented orphans; only in a dedicated worker (elsewhere it would steal others' children)."""
    while _dedicated:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _child_setup(memory_gb: float | None):
    def apply() -> None:
        die_with_parent()
        if memory_gb:
            cap = int(memory_gb * (1 << 30))
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return apply


def _command(cmd: str) -> list[str]:
    """A plain `prog arg ...` runs without a shell in between, so the training process itself
    carries the die-with-parent signal (unjailed, that is all that ties it to the worker)."""
    if _PLAIN.fullmatch(cmd.strip()):
        return shlex.split(cmd)
    return ["/bin/sh", "-c", cmd]


class Run(NamedTuple):
    rc: int | None      # exit code; None when killed by us
    timed_out: bool     # killed at the wall-clock timeout
    seconds: float      # wall seconds
    cpu_s: float        # user+system CPU seconds of the whole tree, measured here
    over_cpu: bool      # killed for passing cpu_limit_s


def _wait(proc: subprocess.Popen, timeout_s: float, cpu_limit_s: float | None) -> tuple[str, float]:
    """("exited" | "timeout" | "cpu", CPU seconds seen while polling). A pidfd wakes us at exit."""
    deadline = time.monotonic() + timeout_s
    cpu = 0.0
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        fd = None
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout", cpu
            step = min(left, CPU_POLL_S) if cpu_limit_s is not None else left
            if fd is not None:
                if select.select([fd], [], [], step)[0]:
                    return "exited", cpu
            else:
                try:
                    proc.wait(timeout=step)
                    return "exited", cpu
                except subprocess.TimeoutExpired:
                    pass
            if cpu_limit_s is not None:
                cpu = max(cpu, tree_cpu_s(proc.pid))
                if cpu > cpu_limit_s:
                    return "cpu", cpu
    finally:
        if fd is not None:
            os.close(fd)


def _collect(proc: subprocess.Popen) -> tuple[int, float]:
    """Reap our child with wait4: its exit code and the CPU seconds of everything it reaped."""
    try:
        _, status, ru = os.wait4(proc.pid, 0)
    except ChildProcessError:  # already reaped
        return proc.wait(), 0.0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, ru.ru_utime + ru.ru_stime


def run_group(cmd: str, cwd: Path, env: dict[str, str], timeout_s: float, log_prefix: Path,
              memory_gb: float | None = None, *, jail_: jail.Jail | None = None,
              cpu_limit_s: float | None = None, curve: CurveThinner | None = None) -> Run:
    """Run `cmd` jailed (see execute/jail.py) in its own session; kill its own tree at the timeout
    (wall seconds), when its CPU seconds pass `cpu_limit_s`, and whatever it leaves behind.

    Only this run's processes are ever signalled (its process group, its tree, its jail),
    so concurrent runs in one process and the caller's other children are safe.
    """
    jail_ = jail_ or jail.Jail(writable=(Path(cwd),))
    token = None
    if jail_.isolation != "bubblewrap":  # a jail's PID namespace takes everything down; unjailed, mark the run
        token = os.urandom(8).hex()
        env = dict(env, **{RUN_TOKEN: token})
    argv = jail_.argv(_command(cmd), cwd=Path(cwd), env=env)
    t0 = time.monotonic()
    # Output goes through pipes into head+tail capped logs (a flood cannot fill the disk), and
    # METRIC lines are thinned as they stream (a flood cannot fill the worker's memory).
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_child_setup(memory_gb))
    pumps = [LogPump(proc.stdout, f"{log_prefix}.out", curve), LogPump(proc.stderr, f"{log_prefix}.err")]
    try:
        with _running_lock:
            _running[proc] = token
        how, cpu_seen = _wait(proc, timeout_s, cpu_limit_s)
        if how != "exited":
            _kill_tree(proc, signal.SIGTERM, token)
            _wait(proc, GRACE_S, None)  # without reaping: the tree's rusage is read below
        # Whatever it left behind (background children, grandchildren that ignore SIGTERM) dies too.
        _kill_tree(proc, signal.SIGKILL, token)
        rc, cpu_reaped = _collect(proc) if proc.returncode is None else (proc.returncode, 0.0)
        _reap()
        with _running_lock:
            _running.pop(proc, None)
    finally:
        for pump in pumps:
            pump.finish()
    return Run(None if how != "exited" else rc, how == "timeout", time.monotonic() - t0,
               max(cpu_seen, cpu_reaped), how == "cpu")


# -- reading what a run left ------------------------------------------------------------
def _classify_train(run: Run, err_tail: str, job: Job) -> tuple[str, str] | None:
    if run.timed_out:
        return "timeout", f"training outlived the hard timeout of {job.timeout_s:.0f} s and was killed with its process tree"
    used = run.cpu_s if job.budget_clock == "cpu" else run.seconds
    grace = budget_grace_s(job.budget_s)
    if run.over_cpu or used > job.budget_s + grace:
        unit = "CPU s" if job.budget_clock == "cpu" else "s"
        return "invalid", (f"trained {used:.1f} {unit} on a {job.budget_s:g} {unit} budget (the harness's "
                           f"{job.budget_clock} clock; {grace:g} s grace)" + (", killed" if run.over_cpu else ""))
    rc = run.rc
    if rc is not None and 128 < rc < 128 + signal.NSIG:  # a jail or shell reports a child's signal N as 128+N
        rc = -(rc - 128)
    if rc == 0:
        return None
    if _OOM_LINE.search(err_tail) or rc == -signal.SIGKILL:
        why = "killed with SIGKILL, most likely by the kernel's out-of-memory killer" if rc == -signal.SIGKILL else "ran out of memory"
        return "oom", f"training {why} (exit {rc})\n{err_tail}"
    if rc is not None and rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = str(-rc)
        return "failed", f"training was killed by signal {name}\n{err_tail}"
    return "failed", f"training exited with code {rc}\n{err_tail}"


def evaluate_trial(job: Job, trial_dir: Path, env: dict[str, str], gpu_ids: list[str]) -> dict:
    """Run the trusted evaluator on what training left in `trial_dir` (work/, out/), as a trial does
    and as the smoke check does (execute/smoke.py); the record's outcome, reason, metrics and eval_s."""
    eval_dir = trial_dir / "eval"
    if eval_dir.exists():
        shutil.rmtree(eval_dir)
    eval_dir.mkdir()
    copy_hidden_from_snapshot(job, eval_dir)
    result_path = eval_dir / f"result-{os.urandom(8).hex()}.json"  # unguessable, created only now
    scorer_env = dict(env, IDEAFORGE_WORKSPACE=str(trial_dir / "work"), IDEAFORGE_RESULT=str(result_path))
    if job.evaluate_serve:  # split evaluator: the edited code runs only in the jailed model server
        # The scorer is trusted and runs unjailed, so it gets the host's paths (IDEAFORGE_DATA...).
        host_env = dict(trial_environ(job, trial_dir, gpu_ids, jailed=False),
                        IDEAFORGE_WORKSPACE=str(trial_dir / "work"), IDEAFORGE_RESULT=str(result_path))
        rc, timed_out, secs = _run_split(job, trial_dir, eval_dir, env, host_env, gpu_ids)
    elif not job.evaluate_jailed:
        # The environment declares an evaluator that runs no workspace code (it loads weights into a
        # fixed architecture), so it is trusted like a split scorer: unjailed, with host paths, and
        # it may read held-out data kept outside everything a trial can see.
        host_env = dict(trial_environ(job, trial_dir, gpu_ids, jailed=False),
                        IDEAFORGE_WORKSPACE=str(trial_dir / "work"), IDEAFORGE_RESULT=str(result_path))
        run = run_group(job.evaluate_command, eval_dir, host_env, job.evaluate_timeout_s, trial_dir / "eval",
                        job.memory_gb, jail_=jail.Jail(writable=(eval_dir,), isolate=False))
        rc, timed_out, secs = run.rc, run.timed_out, run.seconds
    else:
        # An evaluator that imports the edited model code itself is jailed too: it may write only
        # its own directory, and reads the workspace and the checkpoint.
        scorer_env["PYTHONPATH"] = str(jail.package_parent())
        box = trial_jail(job, trial_dir, gpu_ids, [eval_dir], {str(trial_dir / "work"): trial_dir / "work",
                                                               str(trial_dir / "out"): trial_dir / "out"})
        run = run_group(job.evaluate_command, eval_dir, scorer_env, job.evaluate_timeout_s, trial_dir / "eval",
                        job.memory_gb, jail_=box)
        rc, timed_out, secs = run.rc, run.timed_out, run.seconds
    rec: dict = {"eval_s": round(secs, 3)}
    log = tail(trial_dir / "eval.err", 20)
    if job.evaluate_serve:
        log += "\n-- model server (serve.err) --\n" + tail(trial_dir / "serve.err", 20)
    if timed_out:
        return rec | {"outcome": "no_result", "reason": f"the evaluator exceeded its {job.evaluate_timeout_s:.0f} s timeout"}
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError) as e:
        return rec | {"outcome": "no_result", "reason": f"the evaluator exited {rc} without a readable result ({e.__class__.__name__})\n{log}"}
    return rec | _interpret(result, job.metric)


def _run_split(job: Job, trial_dir: Path, eval_dir: Path, env: dict[str, str], scorer_env: dict[str, str],
               gpu_ids: list[str]) -> tuple[int | None, bool, float]:
    """Start the model server (untrusted, jailed: the training workspace and IDEAFORGE_OUT read-only,
    stdin/stdout the pipes) and the trusted scorer (unjailed: it never imports edited code; the eval
    dir with the hidden files, the other pipe ends in IDEAFORGE_MODEL_FDS). Both die at the
    evaluator timeout, and the server dies with the scorer in any case. Returns the scorer's
    (exit code, timed_out, seconds)."""
    from ideaforge.envs.protocol import start_split

    work, out_dir = trial_dir / "work", trial_dir / "out"
    box = trial_jail(job, trial_dir, gpu_ids, [], {str(work): work, str(out_dir): out_dir})
    serve_env = dict(env, PYTHONPATH=str(jail.package_parent()))  # the server is ideaforge.envs.protocol
    token = None
    if box.isolation != "bubblewrap":  # unjailed, the run token finds what the server leaves behind
        token = os.urandom(8).hex()
        serve_env[RUN_TOKEN] = token
    argv = box.argv(_command(job.evaluate_serve), cwd=work, env=serve_env)
    t0 = time.monotonic()
    with open(trial_dir / "serve.err", "wb") as serr, open(trial_dir / "eval.out", "wb") as out, \
            open(trial_dir / "eval.err", "wb") as err:
        server, scorer = start_split(
            argv, ["/bin/sh", "-c", job.evaluate_command],
            serve_kw=dict(cwd=work, env=serve_env, stderr=serr, start_new_session=True,
                          preexec_fn=_child_setup(job.memory_gb)),
            scorer_kw=dict(cwd=eval_dir, env=scorer_env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                           start_new_session=True, preexec_fn=_child_setup(job.memory_gb)))
        with _running_lock:
            _running[server] = token
            _running[scorer] = None
        how, _ = _wait(scorer, job.evaluate_timeout_s, None)
        if how != "exited":
            _kill_tree(scorer, signal.SIGTERM)
            _wait(scorer, GRACE_S, None)
        for proc, tok in ((server, token), (scorer, None)):  # the server never outlives the evaluation
            _kill_tree(proc, signal.SIGKILL, tok)
        server.wait()
        rc = scorer.wait()
        _reap()
        with _running_lock:
            _running.pop(server, None)
            _running.pop(scorer, None)
    return (rc if how == "exited" else None), how != "exited", time.monotonic() - t0


def copy_hidden_from_snapshot(job: Job, dest: Path) -> None:
    src = Path(job.hidden_src)
    for rel, digest in job.hidden.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dest / rel)
        if hashlib.sha256((dest / rel).read_bytes()).hexdigest() != digest:
            raise RuntimeError(f"hidden file {rel} does not match the campaign snapshot; refusing to evaluate")


def _interpret(result: dict, metric: str) -> dict:
    status = result.get("status") if isinstance(result, dict) else None
    reason = str(result.get("reason", "")) if isinstance(result, dict) else ""
    if status == "invalid":
        return {"outcome": "invalid", "reason": reason or "the evaluator marked this trial invalid"}
    if status == "no_result":
        return {"outcome": "no_result", "reason": reason or "the evaluator found nothing to score"}
    if status != "ok":
        return {"outcome": "no_result", "reason": f"the evaluator wrote an unknown status {status!r}"}
    metrics = result.get("metrics")
    if not isinstance(metrics, dict) or metric not in metrics:
        return {"outcome": "no_result", "reason": f"the evaluator's result has no metric {metric!r}"}
    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    value = clean.get(metric)
    if value is None:
        return {"outcome": "no_result", "reason": f"metric {metric!r} is not a number"}
    if not math.isfinite(value):
        return {"outcome": "diverged", "reason": f"{metric} = {value}", "metrics": {}}
    return {"outcome": "evaluated", "metric": value, "metrics": clean}


def run_trial(trial_dir: Path, gpu_ids: list[str] | None = None) -> dict:
    """Train and evaluate one prepared trial directory; write and return its record."""
    trial_dir = Path(trial_dir).resolve()
    job = Job.load(trial_dir)
    gpu_ids = gpu_ids or []
    atomic_write_json(trial_dir / "worker.json", {"pid": os.getpid(), "started_at": time.time(), "gpus": gpu_ids},
                      durable=False)
    become_subreaper()
    started = time.time()
    out_dir = trial_dir / "out"
    if out_dir.exists():  # a retry starts from a fresh out/
        shutil.rmtree(out_dir)
    out_dir.mkdir()
    box = trial_jail(job, trial_dir, gpu_ids, [trial_dir / "work", out_dir])
    env = trial_environ(job, trial_dir, gpu_ids, jailed=box.isolation == "bubblewrap")
    cpu_limit = job.budget_s + budget_grace_s(job.budget_s) if job.budget_clock == "cpu" else None
    curve = CurveThinner()
    run = run_group(job.run_command, trial_dir / "work", env, job.timeout_s, trial_dir / "train", job.memory_gb,
                    jail_=box, cpu_limit_s=cpu_limit, curve=curve)
    record: dict = {"trial_id": job.trial_id, "exit_code": run.rc, "train_s": round(run.seconds, 3),
                    "train_wall_s": round(run.seconds, 3), "train_cpu_s": round(run.cpu_s, 3),
                    "budget_clock": job.budget_clock, "isolation": box.isolation,
                    "curve": curve.points(), "started_at": started}
    bad = _classify_train(run, tail(trial_dir / "train.err"), job)
    if bad:
        record |= {"outcome": bad[0], "reason": bad[1]}
    else:
        try:
            record |= evaluate_trial(job, trial_dir, env, gpu_ids)
        except RuntimeError as e:
            record |= {"outcome": "no_result", "reason": str(e)}
    record["ended_at"] = time.time()
    atomic_write_json(trial_dir / "record.json", record)
    return record


def kill_current_trial() -> None:
    """Kill the process trees (jails) of every run this process has in progress: training or evaluator.

    No lock: this runs from a signal handler that may interrupt a holder of `_running_lock`.
    """
    for proc, token in list(_running.items()):
        _kill_tree(proc, signal.SIGKILL, token)
    if _dedicated:
        _kill_tree(None, signal.SIGKILL)
    _reap()


def _on_term(signum, frame):  # the controller stops this trial: take its whole tree down, no record
    kill_current_trial()
    os._exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Serve trials handed over on stdin, one JSON line each: {"dir": ..., "gpus": [...]}.

    After each trial's record is written, the worker answers "done" on stdout and waits
    for the next. EOF (the controller is gone or let it go) ends it, but only between
    trials: a trial in progress is finished first, so a controller killed with SIGKILL
    loses nothing.
    """
    global _dedicated
    _dedicated = True  # this process runs one trial at a time: it may sweep up all its descendants
    become_subreaper()
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the controller, which decides
    for line in sys.stdin:
        if not line.strip():
            continue
        order = json.loads(line)
        trial_dir = Path(order["dir"])
        os.chdir(trial_dir)  # the controller finds this worker again by its cwd
        try:
            run_trial(trial_dir, [str(g) for g in order.get("gpus", [])])
        except Exception:  # the edge of a trial: a worker bug must not re-queue it forever
            atomic_write_json(trial_dir / "record.json", {
                "outcome": "failed", "reason": "ideaforge worker error:\n" + traceback.format_exc(limit=5),
                "ended_at": time.time()})
        os.chdir("/")
        try:
            print("done", flush=True)
        except BrokenPipeError:
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
