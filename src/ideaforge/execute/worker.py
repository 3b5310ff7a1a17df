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
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from ideaforge.execute.job import Job, atomic_write_json

# Environment variables never passed to a trial: credentials by name pattern.
_SECRET = re.compile(r"(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|ACCESS_?KEY|AUTH)", re.I)
_SECRET_PREFIXES = ("AWS_", "ANTHROPIC_", "OPENAI_", "AZURE_", "GOOGLE_", "GCP_", "HF_", "HUGGING", "WANDB_", "SSH_")
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "IDEAFORGE_THREADS")
_OOM_LINE = re.compile(r"^([\w.]+\.)?(MemoryError|OutOfMemoryError)\b", re.M)
_METRIC_LINE = re.compile(r"^METRIC\s+(.*)$")
TAIL_LINES = 40
GRACE_S = 2.0  # SIGTERM -> SIGKILL grace when a timeout hits, seconds

_current: subprocess.Popen | None = None


def clean_environ(base: dict[str, str]) -> dict[str, str]:
    """The controller's environment without credentials or the controller's own IDEAFORGE_ settings."""
    out = {}
    for k, v in base.items():
        if _SECRET.search(k) or k.upper().startswith(_SECRET_PREFIXES):
            continue
        if k.startswith("IDEAFORGE_") and k != "IDEAFORGE_CACHE":
            continue
        out[k] = v
    return out


def trial_environ(job: Job, trial_dir: Path, gpu_ids: list[str]) -> dict[str, str]:
    env = clean_environ(dict(os.environ))
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    for var in _THREAD_VARS:
        env[var] = str(job.cpus)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    env["IDEAFORGE_GPUS"] = str(len(gpu_ids))
    env["IDEAFORGE_OUT"] = str(trial_dir / "out")
    env["IDEAFORGE_BUDGET_S"] = repr(float(job.budget_s))
    env["IDEAFORGE_SEED"] = str(job.seed)
    if job.data:
        env["IDEAFORGE_DATA"] = next(iter(job.data.values()))
    if job.prepared:
        env["IDEAFORGE_PREPARED"] = job.prepared
    env.update(job.env)  # the profile's variables; spec.py refuses IDEAFORGE_* and the ones set above
    return env


# -- process-tree control ---------------------------------------------------------------
def _become_subreaper() -> None:
    """Orphaned descendants (even ones that setsid away) get re-parented to us, so we can kill them."""
    import ctypes  # here, not at the top: every worker start pays for top-level imports

    try:
        PR_SET_CHILD_SUBREAPER = 36
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: process-group kill still applies


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [root]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def _kill_tree(proc: subprocess.Popen | None, sig: int) -> None:
    if proc is not None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in _descendants(os.getpid()):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _limits(memory_gb: float | None):
    def apply() -> None:
        if memory_gb:
            cap = int(memory_gb * (1 << 30))
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return apply


def _wait(proc: subprocess.Popen, timeout_s: float) -> int | None:
    """Exit code, or None at the timeout. A pidfd wakes us at exit (Popen.wait polls in sleeps)."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
    try:
        ready, _, _ = select.select([fd], [], [], timeout_s)
    finally:
        os.close(fd)
    return proc.wait() if ready else None


def run_group(cmd: str, cwd: Path, env: dict[str, str], timeout_s: float, log_prefix: Path,
              memory_gb: float | None = None) -> tuple[int | None, bool, float]:
    """Run `cmd` in its own session; kill the whole tree at the timeout and afterwards.

    Returns (exit code or None when killed by us, timed_out, seconds).
    """
    global _current
    t0 = time.monotonic()
    with open(f"{log_prefix}.out", "wb") as out, open(f"{log_prefix}.err", "wb") as err:
        proc = subprocess.Popen(["/bin/sh", "-c", cmd], cwd=cwd, env=env, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_limits(memory_gb))
        _current = proc
        timed_out = False
        rc = _wait(proc, timeout_s)
        if rc is None:
            timed_out = True
            _kill_tree(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                pass
            rc = None
        # Whatever it left behind (background children, grandchildren that ignore SIGTERM) dies too.
        _kill_tree(proc, signal.SIGKILL)
        proc.wait()
        _reap()
        _current = None
    return rc, timed_out, time.monotonic() - t0


# -- reading what a run left ------------------------------------------------------------
def tail(path: Path, n: int = TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
    except OSError:
        return ""


def parse_curve(path: Path, limit: int = 2000) -> list[dict[str, float]]:
    """`METRIC key=value ...` lines -> learning curve points (numbers only)."""
    points: list[dict[str, float]] = []
    try:
        with open(path, "r", errors="replace") as f:
            for line in f:
                m = _METRIC_LINE.match(line.strip())
                if not m:
                    continue
                point = {}
                for item in m.group(1).split():
                    k, _, v = item.partition("=")
                    try:
                        point[k] = float(v)
                    except ValueError:
                        continue
                if point:
                    points.append(point)
    except OSError:
        return []
    if len(points) > limit:  # keep the shape of long curves, and the last point
        step = len(points) / limit
        points = [points[int(i * step)] for i in range(limit - 1)] + [points[-1]]
    return points


def _classify_train(rc: int | None, timed_out: bool, err_tail: str, timeout_s: float) -> tuple[str, str] | None:
    if timed_out:
        return "timeout", f"training outlived the hard timeout of {timeout_s:.0f} s and was killed with its process tree"
    if rc == 0:
        return None
    if _OOM_LINE.search(err_tail) or rc == -signal.SIGKILL:
        why = "killed with SIGKILL, most likely by the kernel's out-of-memory killer" if rc == -signal.SIGKILL else "ran out of memory"
        return "oom", f"training {why} (exit {rc})\n{err_tail}"
    if rc is not None and rc < 0:
        return "failed", f"training was killed by signal {signal.Signals(-rc).name}\n{err_tail}"
    return "failed", f"training exited with code {rc}\n{err_tail}"


def _evaluate(job: Job, trial_dir: Path, env: dict[str, str]) -> dict:
    eval_dir = trial_dir / "eval"
    if eval_dir.exists():
        shutil.rmtree(eval_dir)
    eval_dir.mkdir()
    copy_hidden_from_snapshot(job, eval_dir)
    result_path = eval_dir / f"result-{os.urandom(8).hex()}.json"  # unguessable, created only now
    scorer_env = dict(env, IDEAFORGE_WORKSPACE=str(trial_dir / "work"), IDEAFORGE_RESULT=str(result_path))
    if job.evaluate_serve:  # split evaluator: the edited code runs only in the (jailed) model server
        rc, timed_out, secs = _run_split(job, trial_dir, eval_dir, env, scorer_env)
    else:
        rc, timed_out, secs = run_group(job.evaluate_command, eval_dir, scorer_env, job.evaluate_timeout_s,
                                        trial_dir / "eval", job.memory_gb)
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


def _untrusted_argv(argv: list[str], *, cwd: Path, readonly: dict[str, str], env: dict[str, str],
                    gpu_ids: tuple[str, ...] = ()) -> list[str]:
    """The argv that runs an untrusted command (the model server of a split evaluator).

    TODO(lead, at merge): return jail_argv(argv, cwd=cwd, writable=(), readonly=readonly, env=env,
    network=False, gpu_ids=gpu_ids) from execute/jail.py. Until then it runs unjailed, like training.
    """
    return argv


def _run_split(job: Job, trial_dir: Path, eval_dir: Path, env: dict[str, str],
               scorer_env: dict[str, str]) -> tuple[int | None, bool, float]:
    """Start the model server (untrusted: the training workspace, IDEAFORGE_OUT readable,
    stdin/stdout the pipes) and the trusted scorer (the eval dir with the hidden files,
    the other pipe ends in IDEAFORGE_MODEL_FDS). Both die at the evaluator timeout, and the
    server dies with the scorer in any case. Returns the scorer's (exit code, timed_out, seconds)."""
    from ideaforge.envs.protocol import start_split

    global _current
    work = trial_dir / "work"
    argv = _untrusted_argv(["/bin/sh", "-c", job.evaluate_serve], cwd=work, env=env,
                           readonly={str(trial_dir / "out"): str(trial_dir / "out")},
                           gpu_ids=tuple(env.get("CUDA_VISIBLE_DEVICES", "").split(",")) if job.gpus else ())
    t0 = time.monotonic()
    with open(trial_dir / "serve.err", "wb") as serr, open(trial_dir / "eval.out", "wb") as out, \
            open(trial_dir / "eval.err", "wb") as err:
        server, scorer = start_split(
            argv, ["/bin/sh", "-c", job.evaluate_command],
            serve_kw=dict(cwd=work, env=env, stderr=serr, start_new_session=True, preexec_fn=_limits(job.memory_gb)),
            scorer_kw=dict(cwd=eval_dir, env=scorer_env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                           start_new_session=True, preexec_fn=_limits(job.memory_gb)))
        _current = scorer
        rc = _wait(scorer, job.evaluate_timeout_s)
        timed_out = rc is None
        if timed_out:
            _kill_tree(scorer, signal.SIGTERM)
            try:
                scorer.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        for proc in (server, scorer):  # the server never outlives the evaluation
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _kill_tree(scorer, signal.SIGKILL)
        server.wait()
        scorer.wait()
        _reap()
        _current = None
    return rc, timed_out, time.monotonic() - t0


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
    _become_subreaper()
    started = time.time()
    out_dir = trial_dir / "out"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir()
    env = trial_environ(job, trial_dir, gpu_ids)
    rc, timed_out, train_s = run_group(job.run_command, trial_dir / "work", env, job.timeout_s,
                                       trial_dir / "train", job.memory_gb)
    record: dict = {"trial_id": job.trial_id, "exit_code": rc, "train_s": round(train_s, 3),
                    "curve": parse_curve(trial_dir / "train.out"), "started_at": started}
    bad = _classify_train(rc, timed_out, tail(trial_dir / "train.err"), job.timeout_s)
    if bad:
        record |= {"outcome": bad[0], "reason": bad[1]}
    else:
        try:
            record |= _evaluate(job, trial_dir, env)
        except RuntimeError as e:
            record |= {"outcome": "no_result", "reason": str(e)}
    record["ended_at"] = time.time()
    atomic_write_json(trial_dir / "record.json", record)
    return record


def kill_current_trial() -> None:
    """Kill the running trial's whole process tree (training or evaluator), if any."""
    _kill_tree(_current, signal.SIGKILL)
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
