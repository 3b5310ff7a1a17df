"""The smoke check: a few training steps of an edited workspace, before a trial is spent.

It runs the environment's `[smoke]` command (or its run command) on a tiny budget,
in the same jail as a trial (execute/jail.py: allow-listed environment, threads
pinned, no network, only its workspace writable, process tree killed at the timeout), and reports the log tail on failure,
written for the model that has to fix it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ideaforge.envs.spec import EnvSpec
from ideaforge.envs.workspace import build_workspace
from ideaforge.execute.job import Job
from ideaforge.execute.worker import budget_grace_s, run_group, tail, trial_environ, trial_jail


@dataclass(frozen=True)
class SmokeResult:
    ok: bool
    seconds: float
    message: str  # empty when ok; otherwise what went wrong, with the log tail


def run_smoke(spec: EnvSpec, source: Path, changes: dict[str, str | None], prepared: Path | None = None) -> SmokeResult:
    """Train the edited code for `spec.smoke_budget_s` seconds; ok when it exits 0 and leaves output."""
    command = spec.smoke_command or spec.run_command
    with tempfile.TemporaryDirectory(prefix="ideaforge-smoke-") as tmp:
        tdir = Path(tmp)
        build_workspace(spec, source, tdir / "work", changes)
        (tdir / "out").mkdir()
        job = Job(trial_id=0, run_command=command, evaluate_command="", budget_s=spec.smoke_budget_s,
                  timeout_s=spec.smoke_timeout_s, evaluate_timeout_s=0, seed=0, cpus=spec.cpus, gpus=0,
                  metric=spec.metric, hidden_src="", prepared=str(prepared) if prepared else None,
                  data={rel: str((spec.root / rel).resolve()) for rel in spec.data_paths}, role="smoke",
                  env=dict(spec.env), budget_clock=spec.budget_clock, network=spec.network)
        box = trial_jail(job, tdir, [], [tdir / "work", tdir / "out"])  # the same jail as a trial's training
        env = trial_environ(job, tdir, [], jailed=box.isolation == "bubblewrap")
        cpu_limit = spec.smoke_budget_s + budget_grace_s(spec.smoke_budget_s) if spec.budget_clock == "cpu" else None
        run = run_group(command, tdir / "work", env, spec.smoke_timeout_s, tdir / "smoke", spec.memory_gb,
                        jail_=box, cpu_limit_s=cpu_limit)
        rc, timed_out, secs = run.rc, run.timed_out, run.seconds
        log = tail(tdir / "smoke.err", 30) or tail(tdir / "smoke.out", 30)
        if run.over_cpu:
            return SmokeResult(False, secs, f"the smoke run (`{command}` with a {spec.smoke_budget_s:g} s CPU budget) "
                                            f"used {run.cpu_s:.1f} CPU s and was stopped: training must stop by itself "
                                            f"when it has used IDEAFORGE_BUDGET_S seconds of CPU time "
                                            f"(IDEAFORGE_BUDGET_CLOCK=cpu; time.process_time()).\n{log}")
        if timed_out:
            return SmokeResult(False, secs, f"the smoke run (`{command}` with a {spec.smoke_budget_s:.0f} s budget) "
                                            f"did not finish within {spec.smoke_timeout_s:.0f} s: training must stop by "
                                            f"itself when IDEAFORGE_BUDGET_S seconds have passed.\n{log}")
        if rc != 0:
            return SmokeResult(False, secs, f"the smoke run (`{command}` with a {spec.smoke_budget_s:.0f} s budget) "
                                            f"exited with code {rc}. Its output ends with:\n{log}")
        if not any((tdir / "out").iterdir()):
            return SmokeResult(False, secs, "the smoke run exited 0 but wrote nothing to IDEAFORGE_OUT; the evaluator "
                                            "needs the checkpoint there.")
        return SmokeResult(True, secs, "")
