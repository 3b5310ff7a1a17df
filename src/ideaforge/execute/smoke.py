"""The smoke check: a few training steps of an edited workspace, then the evaluator's check, before a trial is spent.

It runs the environment's `[smoke]` command (or its run command) in the same jail as a trial
(execute/jail.py: allow-listed environment, threads pinned, no network, only its workspace
writable, process tree killed at the timeout). An environment that declares `[smoke] steps = N`
gets IDEAFORGE_SMOKE_STEPS=N: its training stops after N optimizer steps and saves its checkpoint
(the run's own budget and the smoke timeout are only backstops); one without it trains for
`[smoke] budget_s` seconds. With `[smoke] evaluate = true`, the trusted evaluator then runs on
what training left exactly as a trial runs it (worker.evaluate_trial: the split evaluator's
jailed model server included) with IDEAFORGE_EVAL_MODE=smoke, its fast mode, so an edit that
breaks the checkpoint interface fails here with the evaluator's own message. Failures are
reported with the log tail, written for the model that has to fix it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ideaforge.envs.spec import EnvSpec
from ideaforge.envs.workspace import build_workspace, sha256_file
from ideaforge.execute.job import Job
from ideaforge.execute.worker import (Run, budget_grace_s, evaluate_trial, run_group, tail, trial_environ,
                                      trial_jail)

EVAL_MODE = "smoke"  # IDEAFORGE_EVAL_MODE of the smoke check's evaluator run


@dataclass(frozen=True)
class SmokeResult:
    ok: bool
    seconds: float
    message: str  # empty when ok; otherwise what went wrong, with the log tail


def smoke_job(spec: EnvSpec, source: Path, prepared: Path | None) -> Job:
    """The smoke run as a trial's Job: the budget it trains on, the evaluator, the hidden files in `source`."""
    env = dict(spec.env)
    budget = spec.smoke_budget_s
    if spec.smoke_steps is not None:  # steps bound it; the run's own budget is only a backstop
        env["IDEAFORGE_SMOKE_STEPS"] = str(spec.smoke_steps)
        budget = spec.budget_s
    if spec.smoke_evaluate:
        env["IDEAFORGE_EVAL_MODE"] = EVAL_MODE
    hidden = {rel: sha256_file(source / rel) for rel in spec.files.get("hidden", ())} if spec.smoke_evaluate else {}
    return Job(trial_id=0, run_command=spec.smoke_command or spec.run_command, evaluate_command=spec.evaluate_command,
               budget_s=budget, timeout_s=spec.smoke_timeout_s, evaluate_timeout_s=spec.evaluate_timeout_s, seed=0,
               cpus=spec.cpus, gpus=0, metric=spec.metric, hidden_src=str(source) if hidden else "", hidden=hidden,
               prepared=str(prepared) if prepared else None, memory_gb=spec.memory_gb,
               data={rel: str((spec.root / rel).resolve()) for rel in spec.data_paths}, role="smoke",
               evaluate_serve=spec.evaluate_serve, evaluate_jailed=spec.evaluate_jailed, env=env, budget_clock=spec.budget_clock, network=spec.network)


def run_smoke(spec: EnvSpec, source: Path, changes: dict[str, str | None], prepared: Path | None = None) -> SmokeResult:
    """Train the edited code for `[smoke] steps` (or `budget_s` seconds), then, with `[smoke] evaluate`,
    run the evaluator's smoke mode on its checkpoint; ok when both pass. `source` holds the
    environment's files, hidden ones included (a campaign's snapshot or the environment itself)."""
    job = smoke_job(spec, source, prepared)
    with tempfile.TemporaryDirectory(prefix="ideaforge-smoke-") as tmp:
        tdir = Path(tmp)
        build_workspace(spec, source, tdir / "work", changes)
        (tdir / "out").mkdir()
        box = trial_jail(job, tdir, [], [tdir / "work", tdir / "out"])  # the same jail as a trial's training
        env = trial_environ(job, tdir, [], jailed=box.isolation == "bubblewrap")
        cpu_limit = job.budget_s + budget_grace_s(job.budget_s) if spec.budget_clock == "cpu" else None
        run = run_group(job.run_command, tdir / "work", env, job.timeout_s, tdir / "smoke", job.memory_gb,
                        jail_=box, cpu_limit_s=cpu_limit)
        problem = _training_problem(job, spec, run, tail(tdir / "smoke.err", 30) or tail(tdir / "smoke.out", 30))
        if problem is None and not any((tdir / "out").iterdir()):
            problem = "the smoke run exited 0 but wrote nothing to IDEAFORGE_OUT; the evaluator needs the checkpoint there."
        if problem is not None:
            return SmokeResult(False, run.seconds, problem)
        if not spec.smoke_evaluate:
            return SmokeResult(True, run.seconds, "")
        try:
            rec = evaluate_trial(job, tdir, env, [])
        except RuntimeError as e:  # a hidden file differs from its digest: not the edit's fault, but no check either
            return SmokeResult(False, run.seconds, f"the smoke check could not run the evaluator: {e}")
        secs = run.seconds + rec.get("eval_s", 0.0)
        if rec["outcome"] != "evaluated":
            return SmokeResult(False, secs, f"training ran, but the evaluator's check of what it left "
                                            f"(IDEAFORGE_EVAL_MODE={EVAL_MODE}) failed with outcome "
                                            f"{rec['outcome']}: {rec.get('reason', '')}")
        return SmokeResult(True, secs, "")


def _training_problem(job: Job, spec: EnvSpec, run: Run, log: str) -> str | None:
    """What went wrong with the smoke run's training, for the model; None when it exited 0."""
    what = (f"`{job.run_command}` with IDEAFORGE_SMOKE_STEPS={spec.smoke_steps}" if spec.smoke_steps is not None
            else f"`{job.run_command}` with a {job.budget_s:g} s budget")
    if run.over_cpu:
        return (f"the smoke run ({what}, IDEAFORGE_BUDGET_S={job.budget_s:g} CPU s) used {run.cpu_s:.1f} CPU s and "
                f"was stopped: training must stop by itself when it has used IDEAFORGE_BUDGET_S seconds of CPU time "
                f"(IDEAFORGE_BUDGET_CLOCK=cpu; time.process_time())"
                + (" or after IDEAFORGE_SMOKE_STEPS optimizer steps" if spec.smoke_steps is not None else "")
                + f".\n{log}")
    if run.timed_out:
        stop = ("after IDEAFORGE_SMOKE_STEPS optimizer steps" if spec.smoke_steps is not None
                else "when IDEAFORGE_BUDGET_S seconds have passed")
        return f"the smoke run ({what}) did not finish within {job.timeout_s:.0f} s: training must stop by itself {stop}.\n{log}"
    if run.rc != 0:
        return f"the smoke run ({what}) exited with code {run.rc}. Its output ends with:\n{log}"
    return None
