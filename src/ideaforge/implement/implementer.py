"""From an idea to a checked edit: S samples in parallel, each repaired at most R times.

A sample is: ask the model -> parse the reply -> apply it to the baseline files (all or
nothing, refused outside `editable`) -> syntax-check every changed Python file -> run
the smoke check. The first sample that passes everything wins; the others stop at
their next step. Every attempt is kept, with the error text that was sent back.

Ideas that carry their own edit (the offline ideators' ideas) skip the model and go
straight to apply and checks.
"""

from __future__ import annotations

import difflib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from string import Template
from typing import Callable

from ideaforge.edit.apply import apply_edits
from ideaforge.edit.parse import parse_reply
from ideaforge.envs.spec import EnvSpec
from ideaforge.envs.workspace import render_codebase
from ideaforge.errors import EditRefused, LLMError
from ideaforge.llm import complete

PROMPTS = Path(__file__).parent / "prompts"
# A smoke check takes the changed files and returns None (ok) or an error message for the model.
SmokeCheck = Callable[[dict[str, str | None]], str | None]


@dataclass
class Attempt:
    sample: int
    round: int  # 0 = first try, 1..R = repairs
    stage: str  # where it ended: llm | parse | apply | syntax | smoke | ok | cancelled
    error: str | None = None
    reply: str | None = None
    seconds: float = 0.0


@dataclass
class Implementation:
    ok: bool
    files: dict[str, str | None] = field(default_factory=dict)  # changed files only; None = deleted
    diff: str = ""
    attempts: list[Attempt] = field(default_factory=list)
    error: str | None = None
    summary: str = ""

    def attempts_json(self) -> list[dict]:
        return [asdict(a) for a in self.attempts]


def _template(name: str) -> Template:
    return Template((PROMPTS / name).read_text())


def unified_diff(before: dict[str, str], after: dict[str, str | None]) -> str:
    out = []
    for path, new in sorted(after.items()):
        old = before.get(path)
        a = [] if old is None else old.splitlines(keepends=True)
        b = [] if new is None else new.splitlines(keepends=True)
        out += difflib.unified_diff(a, b, fromfile="/dev/null" if old is None else f"a/{path}",
                                    tofile="/dev/null" if new is None else f"b/{path}")
    return "".join(line if line.endswith("\n") else line + "\n" for line in out)


def syntax_errors(files: dict[str, str | None]) -> str | None:
    for path, text in files.items():
        if text is None or not path.endswith(".py"):
            continue
        try:
            compile(text, path, "exec")
        except SyntaxError as e:
            where = f"{path}, line {e.lineno}"
            line = (e.text or "").rstrip()
            return f"{where}: SyntaxError: {e.msg}\n    {line}" if line else f"{where}: SyntaxError: {e.msg}"
    return None


class Implementer:
    def __init__(self, spec: EnvSpec, baseline: dict[str, str], model: str | None = None, *, samples: int = 3,
                 repairs: int = 2, smoke: SmokeCheck | None = None, recorder=None, thinking_budget: int | None = None,
                 max_tokens: int = 16000):
        self.spec = spec
        self.baseline = baseline  # editable + visible files of the baseline, path -> text
        self.model = model
        self.samples = max(1, samples)
        self.repairs = max(0, repairs)
        self.smoke = smoke
        self.recorder = recorder
        self.thinking_budget = thinking_budget
        self.max_tokens = max_tokens

    # -- checks shared by both paths ---------------------------------------------------
    def check(self, reply: str) -> tuple[str, str | None, dict[str, str | None]]:
        """(stage reached, error for the model or None, changed files)."""
        try:
            edits = parse_reply(reply)
        except EditRefused as e:
            return "parse", str(e), {}
        try:
            result = apply_edits(self.baseline, edits, self.spec)
        except EditRefused as e:
            return "apply", str(e), {}
        changed = {p: t for p, t in result.files.items() if self.baseline.get(p) != t}
        if not changed:
            return "apply", "the edits change nothing: every file is the same as before", {}
        return self.check_changed(changed)

    def check_changed(self, changed: dict[str, str | None]) -> tuple[str, str | None, dict[str, str | None]]:
        """Syntax, then the smoke check, of files whose paths the policy already admitted."""
        err = syntax_errors(changed)
        if err:
            return "syntax", f"the edited code does not compile:\n{err}", changed
        if self.smoke is not None:
            err = self.smoke(changed)
            if err:
                return "smoke", err, changed
        return "ok", None, changed

    def _result(self, changed: dict[str, str | None], attempts: list[Attempt]) -> Implementation:
        diff = unified_diff(self.baseline, changed)
        n = len(attempts)
        return Implementation(True, changed, diff, attempts,
                              summary=f"{len(changed)} file(s) changed after {n} attempt{'s' * (n != 1)}")

    # -- offline ideas: the edit is given ----------------------------------------------------
    def apply_given(self, edit: str) -> Implementation:
        t0 = time.monotonic()
        stage, err, changed = self.check(edit)
        attempt = Attempt(0, 0, stage, err, None, round(time.monotonic() - t0, 3))
        if err:
            return Implementation(False, attempts=[attempt], error=f"{stage}: {err}")
        return self._result(changed, [attempt])

    # -- model path ---------------------------------------------------------------------------
    def implement(self, idea_text: str) -> Implementation:
        if self.model is None:
            raise LLMError("no model to implement with: pass --model, or use an idea that carries its own edit")
        first = _template("implement.txt").substitute(
            description=self.spec.description, metric=self.spec.metric,
            direction="lower" if self.spec.goal == "min" else "higher", budget_s=f"{self.spec.budget_s:g}",
            codebase=render_codebase(self.spec, self.baseline), editable=", ".join(self.spec.editable_files),
            rules="".join(f"- {r}\n" for r in self.spec.rules), idea=idea_text.strip())
        done = threading.Event()
        attempts: list[Attempt] = []
        lock = threading.Lock()
        winner: list[dict[str, str | None]] = []

        def sample(i: int) -> None:
            messages = [{"role": "user", "content": first}]
            for rnd in range(self.repairs + 1):
                if done.is_set():
                    return
                t0 = time.monotonic()
                try:
                    reply = complete(self.model, messages, system=_template("system.txt").template.strip(),
                                     max_tokens=self.max_tokens, thinking_budget=self.thinking_budget,
                                     recorder=self.recorder, purpose="implement" if rnd == 0 else "repair").text
                except LLMError as e:
                    with lock:
                        attempts.append(Attempt(i, rnd, "llm", str(e), None, round(time.monotonic() - t0, 3)))
                    return  # retries already happened inside complete()
                if done.is_set():
                    stage, err, changed = "cancelled", None, {}
                else:
                    stage, err, changed = self.check(reply)
                with lock:
                    attempts.append(Attempt(i, rnd, stage, err, reply, round(time.monotonic() - t0, 3)))
                    if stage == "ok" and not done.is_set():
                        winner.append(changed)
                        done.set()
                if err is None:
                    return
                messages += [{"role": "assistant", "content": reply},
                             {"role": "user", "content": _template("repair.txt").substitute(error=err)}]

        with ThreadPoolExecutor(self.samples) as pool:
            list(pool.map(sample, range(self.samples)))
        attempts.sort(key=lambda a: (a.sample, a.round))
        if winner:
            return self._result(winner[0], attempts)
        last = [a for a in attempts if a.error]
        why = f"{last[-1].stage}: {last[-1].error}" if last else "no attempt finished"
        return Implementation(False, attempts=attempts, error=f"no sample passed after {len(attempts)} attempts; last: {why}")
