"""Coding agents as implementers: Claude Code, Codex, Aider, or any headless agent command.

    --implementer agent:claude-code[:MODEL] | agent:codex[:MODEL] | agent:aider[:MODEL] | agent:CMD

An agent works in a throwaway copy of the workspace (editable and visible files; hidden
files and data absent), run by a `Sandbox` the layer above provides (search/assemble.py
wraps execute/jail.py: only the copy and the agent's own HOME writable, the network on so
it can reach its provider, an allow-listed environment plus the one key it needs). Its
caps: a wall-clock timeout for every agent (the whole process tree is killed), and where
the agent has flags for them, turns and dollars (Claude Code: --max-turns, --max-budget-usd).

The agent's word is never taken for what it changed: the harness walks the copy and
compares it with the pristine files, then validates the difference with the same rules
as any model edit (`edit.apply.apply_edits`: only `editable` paths; a visible file
changed or deleted, a new file outside editable, or a hidden path touched is refused with
the rule), refuses symlinks and special files, and runs the usual syntax and smoke
checks. A refused or failing round is followed by a repair round (a fresh copy, the error
in the prompt) while time, dollars and `repairs` last. Each round is stored like a model
call (purpose "implement:agent", model = the agent spec) with its transcript and cost.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol

from ideaforge.edit.apply import apply_edits
from ideaforge.edit.parse import FileEdit
from ideaforge.envs.spec import EnvSpec
from ideaforge.errors import ConfigError, EditRefused, MissingKey
from ideaforge.implement.implementer import Attempt, Implementation, Implementer, SmokeCheck, _template
from ideaforge.llm import CallRecord

PREFIX = "agent:"
NAMED = ("claude-code", "codex", "aider")
PURPOSE = "implement:agent"
KEYS_VAR = "IDEAFORGE_AGENT_KEYS"  # extra variables (comma-separated names) an agent:CMD may receive
BIND_VAR = "IDEAFORGE_AGENT_BIND"  # extra host directories (os.pathsep-separated) bound read-only for the agent
# Files an agent or the tools it runs leave behind that are never part of an edit (and never reach a trial).
_SCRATCH = {"__pycache__", ".git", ".claude", ".codex", ".pytest_cache", ".ipynb_checkpoints", ".mypy_cache"}
_SCRATCH_PREFIXES = (".aider",)
_SYSTEM = ("/usr/", "/bin/", "/sbin/", "/lib", "/opt/", "/etc/")  # already visible in every jail
MAX_FILE_BYTES = 2 * 1024 * 1024   # a larger file written by the agent is refused, not read
TRANSCRIPT_HEAD = 8 * 1024         # bytes of each stream kept from the start ...
TRANSCRIPT_TAIL = 24 * 1024        # ... and from the end, in the stored transcript


# -- what the agent is and how it runs -------------------------------------------------
@dataclass(frozen=True)
class AgentSpec:
    text: str                  # as given, "agent:..." (stored as the call's model)
    name: str                  # claude-code | codex | aider | cmd
    model: str | None = None   # a named agent's model, passed with its --model flag
    argv: tuple[str, ...] = () # agent:CMD's words; the prompt is appended as the last one


@dataclass(frozen=True)
class AgentLimits:
    timeout_s: float = 900.0   # wall seconds for the whole idea, all rounds together
    max_turns: int = 30        # per round, where the agent has a flag for it
    max_usd: float = 2.0       # dollars for the whole idea; a flag where the agent has one, else checked between rounds

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "AgentLimits":
        """Defaults, overridden by IDEAFORGE_AGENT_TIMEOUT_S, IDEAFORGE_AGENT_MAX_USD, IDEAFORGE_AGENT_MAX_TURNS."""
        environ = os.environ if environ is None else environ
        d = cls()
        try:
            return cls(float(environ.get("IDEAFORGE_AGENT_TIMEOUT_S", d.timeout_s)),
                       int(environ.get("IDEAFORGE_AGENT_MAX_TURNS", d.max_turns)),
                       float(environ.get("IDEAFORGE_AGENT_MAX_USD", d.max_usd)))
        except ValueError as e:
            raise ConfigError(f"an IDEAFORGE_AGENT_* cap is not a number: {e}") from None


@dataclass(frozen=True)
class AgentCall:
    """One agent run for a Sandbox: argv run in `workdir` (the only writable path besides its HOME)."""
    argv: list[str]
    workdir: Path
    env: dict[str, str]                 # the agent's own variables (its key, caps); the sandbox adds the allow-list
    timeout_s: float                    # wall seconds; the whole tree is killed after
    readonly: dict[str, Path] = field(default_factory=dict)  # inside path -> host path: the agent's program


@dataclass(frozen=True)
class AgentRun:
    rc: int | None        # None when killed at the timeout
    timed_out: bool
    seconds: float        # wall
    stdout: str
    stderr: str
    isolation: str        # "bubblewrap" or "none"


class Sandbox(Protocol):
    """Runs an agent jailed; implemented above this layer (search/assemble.py), on execute/jail.py."""
    isolation: str

    def run(self, call: AgentCall) -> AgentRun: ...


@dataclass
class Usage:
    cost_usd: float | None = None  # None: the agent reported none
    turns: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    is_error: bool = False
    final: str = ""                # the agent's last message, when it says which


def is_agent(spec: str | None) -> bool:
    return bool(spec) and spec.startswith(PREFIX)


def parse_agent(text: str) -> AgentSpec:
    """`agent:claude-code[:MODEL]`, `agent:codex[:MODEL]`, `agent:aider[:MODEL]`, or `agent:CMD`."""
    if not is_agent(text):
        raise ConfigError(f"not an agent implementer: {text!r} (expected agent:claude-code, agent:codex, "
                          "agent:aider or agent:COMMAND)")
    body = text[len(PREFIX):].strip()
    name, _, model = body.partition(":")
    if name in NAMED and " " not in body:
        return AgentSpec(text, name, model or None)
    try:
        argv = tuple(shlex.split(body))
    except ValueError as e:
        raise ConfigError(f"cannot split the agent command {body!r}: {e}") from None
    if not argv:
        raise ConfigError("agent: needs an agent name (claude-code, codex, aider) or a command line")
    return AgentSpec(text, "cmd", None, argv)


def agent_keys(agent: AgentSpec, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables that carry the agent's key, and nothing else of the caller's secrets."""
    if agent.name == "claude-code":
        need = {"ANTHROPIC_API_KEY": "ANTHROPIC_API_KEY"}
    elif agent.name == "codex":  # `codex exec` reads CODEX_API_KEY
        need = {"CODEX_API_KEY": "CODEX_API_KEY" if environ.get("CODEX_API_KEY") else "OPENAI_API_KEY"}
    elif agent.name == "aider":
        anthropic = (agent.model or "").startswith(("claude", "anthropic", "sonnet", "opus", "haiku"))
        names = ["ANTHROPIC_API_KEY"] if anthropic else ["OPENAI_API_KEY"] if agent.model else \
            [k for k in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY") if environ.get(k)] or ["ANTHROPIC_API_KEY"]
        need = {k: k for k in names}
    else:
        need = {}
    out = {}
    for dest, src in need.items():
        if not environ.get(src):
            raise MissingKey(f"{agent.text} needs {src} set (it is passed to the agent alone)")
        out[dest] = environ[src]
    for base in ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL"):  # not secrets: where a proxy or a fake server is
        if base in environ and (agent.name != "cmd" or base in _extra_names(environ)):
            out[base] = environ[base]
    for name in _extra_names(environ):
        if name in environ:
            out[name] = environ[name]
    return out


def _extra_names(environ: Mapping[str, str]) -> list[str]:
    return [n.strip() for n in environ.get(KEYS_VAR, "").split(",") if n.strip()]


def check_agent(text: str, environ: Mapping[str, str] | None = None) -> AgentSpec:
    """Before any work starts: the spec parses, the program is installed, the key is set."""
    environ = os.environ if environ is None else environ
    agent = parse_agent(text)
    program = _program(agent)[0]
    if not shutil.which(program, path=environ.get("PATH")):
        raise ConfigError(f"{agent.text}: {program!r} is not installed or not on PATH")
    agent_keys(agent, environ)
    return agent


def _program(agent: AgentSpec) -> list[str]:
    return list(agent.argv) if agent.name == "cmd" else [{"claude-code": "claude"}.get(agent.name, agent.name)]


def agent_argv(agent: AgentSpec, prompt: str, limits: AgentLimits, usd_left: float, workdir: Path,
               editable: list[str], jailed: bool) -> list[str]:
    """The agent's headless command line (flags from each agent's documentation; see docs/agents.md)."""
    m = agent.model
    if agent.name == "claude-code":
        # bypassPermissions only inside our jail (the jail is the sandbox); unjailed, edits only.
        return ["claude", "-p", "--output-format", "json", "--max-turns", str(limits.max_turns),
                "--max-budget-usd", f"{usd_left:.4f}", "--no-session-persistence",
                "--disallowedTools", "WebFetch,WebSearch",
                "--permission-mode", "bypassPermissions" if jailed else "acceptEdits",
                *(["--model", m] if m else []), prompt]
    if agent.name == "codex":  # inside our jail codex's own sandbox would nest namespaces; ours holds it
        return ["codex", "exec", "--json", "--skip-git-repo-check", "--ephemeral",
                "--sandbox", "danger-full-access" if jailed else "workspace-write", "-C", str(workdir),
                *(["-m", m] if m else []), prompt]
    if agent.name == "aider":
        return ["aider", "--message", prompt, "--yes-always", "--no-auto-commits", "--no-git", "--no-stream",
                "--no-pretty", "--no-check-update", "--no-show-release-notes", "--analytics-disable",
                *(["--model", m] if m else []), *editable]
    # A relative file argument names a file here, not in the agent's copy (its working directory).
    return [str(Path(w).absolute()) if i and not w.startswith("-") and Path(w).is_file() else w
            for i, w in enumerate(agent.argv)] + [prompt]


def agent_env(agent: AgentSpec, environ: Mapping[str, str], limits: AgentLimits, usd_left: float,
              seconds_left: float, jailed: bool) -> dict[str, str]:
    env = agent_keys(agent, environ)
    if agent.name == "claude-code" and jailed:
        env["IS_SANDBOX"] = "1"  # as root, Claude Code allows bypassPermissions only when told it is sandboxed
    # Every agent learns its caps; an agent:CMD may honour them (the timeout is enforced regardless).
    env.update(IDEAFORGE_AGENT_MAX_TURNS=str(limits.max_turns), IDEAFORGE_AGENT_MAX_USD=f"{usd_left:.4f}",
               IDEAFORGE_AGENT_TIMEOUT_S=f"{seconds_left:.0f}")
    return env


def program_binds(argv: list[str], environ: Mapping[str, str]) -> dict[str, Path]:
    """Host files the agent's command names that a jail would not show: its program (when installed
    outside the system directories), absolute file arguments, and IDEAFORGE_AGENT_BIND directories."""
    out: dict[str, Path] = {}
    found = shutil.which(argv[0], path=environ.get("PATH")) if argv else None
    words = ([found] if found else []) + [w for w in argv[1:] if w.startswith("/")]
    # The jail already shows the system and this Python installation (a bind inside them would fail).
    shown = _SYSTEM + tuple(str(Path(p).resolve()) + "/" for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
    for w in words:
        p = Path(w)
        if p.is_file() and not str(p.resolve()).startswith(shown) and not str(p.absolute()).startswith(shown):
            out[str(p.absolute())] = p.resolve()
    for d in filter(None, environ.get(BIND_VAR, "").split(os.pathsep)):
        if Path(d).is_dir():
            out[str(Path(d))] = Path(d).resolve()
    return out


# -- what the agent reported -------------------------------------------------------------
_AIDER_COST = re.compile(r"Cost:.*?\$([0-9]+(?:\.[0-9]+)?) session")


def parse_usage(stdout: str) -> Usage:
    """Cost, turns and tokens from what the agent printed: Claude Code's JSON result (total_cost_usd,
    num_turns, usage, is_error, result), Codex's JSONL events (turn.completed usage; it reports no
    dollars), Aider's "Cost: ... $X session" lines, or any JSON line with total_cost_usd/cost_usd."""
    u = Usage()
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                _read_event(obj, u)
        elif m := _AIDER_COST.search(line):
            u.cost_usd = float(m.group(1))
    return u


def _read_event(obj: dict, u: Usage) -> None:
    cost = obj.get("total_cost_usd", obj.get("cost_usd"))
    if isinstance(cost, (int, float)):
        u.cost_usd = float(cost)
    if isinstance(obj.get("num_turns"), int):
        u.turns = obj["num_turns"]
    if obj.get("is_error") is True:
        u.is_error = True
    if isinstance(obj.get("result"), str):
        u.final = obj["result"]
    usage = obj.get("usage")
    if isinstance(usage, dict):
        tokens_in = sum(int(usage.get(k) or 0) for k in ("input_tokens", "cache_creation_input_tokens",
                                                         "cache_read_input_tokens"))
        if obj.get("type") == "turn.completed":  # codex: one event per turn, summed
            u.turns = (u.turns or 0) + 1
            u.input_tokens += tokens_in
            u.output_tokens += int(usage.get("output_tokens") or 0)
        else:
            u.input_tokens, u.output_tokens = tokens_in, int(usage.get("output_tokens") or 0)
    item = obj.get("item")
    if obj.get("type") == "item.completed" and isinstance(item, dict) and item.get("type") == "agent_message":
        u.final = str(item.get("text", ""))


def _capped(text: str) -> str:
    if len(text) <= TRANSCRIPT_HEAD + TRANSCRIPT_TAIL:
        return text
    cut = len(text) - TRANSCRIPT_HEAD - TRANSCRIPT_TAIL
    return f"{text[:TRANSCRIPT_HEAD]}\n[ideaforge: {cut} characters dropped here]\n{text[-TRANSCRIPT_TAIL:]}"


def transcript(run: AgentRun) -> str:
    return f"{_capped(run.stdout)}\n--- stderr ---\n{_capped(run.stderr)}"


# -- the copy and its difference ----------------------------------------------------------
def lay_out_copy(spec: EnvSpec, source: Path, dest: Path, changes: Mapping[str, str | None]) -> dict[str, bytes]:
    """Editable + visible files of `source` in `dest` (hidden files and data absent), then `changes`.
    Returns the pristine bytes, path -> content: what the agent's result is compared with."""
    pristine: dict[str, bytes] = {}
    for rel in spec.editable_files + spec.visible_files:
        pristine[rel] = (source / rel).read_bytes()
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(pristine[rel])
    for rel, text in changes.items():
        if text is None:
            (dest / rel).unlink(missing_ok=True)
        else:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_text(text)
    for rel in spec.visible_files:  # a hint the agent's tools see at once; the diff check is what enforces it
        (dest / rel).chmod(0o444)
    return pristine


def _scratch(rel: str) -> bool:
    return any(part in _SCRATCH or part.startswith(_SCRATCH_PREFIXES) for part in rel.split("/"))


def collect_changes(spec: EnvSpec, pristine: dict[str, bytes], baseline: dict[str, str],
                    root: Path) -> dict[str, str | None]:
    """The copy's difference from `pristine`, validated as any edit is; EditRefused with the rule."""
    found: dict[str, bytes] = {}
    problems: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):  # never follows symlinks
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if spec.classify(rel) != "hidden" and _scratch(rel):
                continue
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                problems.append(f"{rel} is a symbolic link: an edit may only write regular files; "
                                "links could point a trial at files outside its workspace")
            elif stat.S_ISDIR(st.st_mode):
                continue
            elif not stat.S_ISREG(st.st_mode):
                problems.append(f"{rel} is not a regular file (a fifo, socket or device)")
            elif st.st_size > MAX_FILE_BYTES:
                problems.append(f"{rel} is {st.st_size} bytes; a file an edit writes may hold at most {MAX_FILE_BYTES}")
            else:
                found[rel] = path.read_bytes()
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()
                       and not (_scratch(d) and spec.classify((Path(dirpath) / d).relative_to(root).as_posix()) != "hidden")]
    edits = [FileEdit(rel, "delete") for rel in pristine if rel not in found]
    for rel, data in sorted(found.items()):
        if pristine.get(rel) == data:
            continue
        try:
            edits.append(FileEdit(rel, "create", content=data.decode("utf-8")))
        except UnicodeDecodeError:
            problems.append(f"{rel} is not UTF-8 text; an edit may only write text files")
    if problems:
        raise EditRefused("the agent's changes were refused; nothing was applied.\n" + "\n".join(problems))
    if not edits:
        return {}
    try:
        result = apply_edits(baseline, edits, spec)  # the same policy (and placeholder) rules as any edit
    except EditRefused as e:
        raise EditRefused(f"the agent's changes were refused; nothing was applied.\n{e}") from None
    return {p: t for p, t in result.files.items() if baseline.get(p) != t}


# -- the implementer -----------------------------------------------------------------------
class AgentImplementer(Implementer):
    """`implement(idea_text)` by a coding agent; `apply_given` (offline ideas) as the model implementer."""

    def __init__(self, spec: EnvSpec, baseline: dict[str, str], source: Path, agent: str, sandbox: Sandbox, *,
                 repairs: int = 1, limits: AgentLimits = AgentLimits(), smoke: SmokeCheck | None = None,
                 recorder=None, environ: Mapping[str, str] | None = None):
        super().__init__(spec, baseline, None, samples=1, repairs=repairs, smoke=smoke, recorder=recorder)
        self.source = source
        self.agent = parse_agent(agent)
        self.sandbox = sandbox
        self.limits = limits
        self.environ = dict(os.environ if environ is None else environ)

    def implement(self, idea_text: str) -> Implementation:
        deadline = time.monotonic() + self.limits.timeout_s
        spent = 0.0
        attempts: list[Attempt] = []
        carried: dict[str, str | None] = {}  # changes that passed the policy, kept for the next round
        error: str | None = None
        for rnd in range(self.repairs + 1):
            left_s, left_usd = deadline - time.monotonic(), self.limits.max_usd - spent
            if left_s < 1 or left_usd <= 0:
                why = f"the agent's budget is spent: ${spent:.4f} of ${self.limits.max_usd:g}, " \
                      f"{self.limits.timeout_s - max(left_s, 0):.0f} of {self.limits.timeout_s:g} s"
                attempts.append(Attempt(0, rnd, "budget", why))
                break
            attempt, cost, changed, stop = self._round(idea_text, rnd, carried, error, left_s, left_usd)
            attempts.append(attempt)
            spent += cost
            if attempt.stage == "ok":
                return self._result(changed, attempts)
            error = attempt.error
            if attempt.stage in ("syntax", "smoke"):
                carried = changed  # admitted paths: the agent repairs its own work
            if stop:
                break
        last = attempts[-1]
        return Implementation(False, attempts=attempts,
                              error=f"the agent found no passing edit in {len(attempts)} round(s); "
                                    f"last: {last.stage}: {last.error}")

    def _round(self, idea: str, rnd: int, carried: dict[str, str | None], error: str | None, left_s: float,
               left_usd: float) -> tuple[Attempt, float, dict[str, str | None], bool]:
        """One agent run in a fresh copy -> (attempt, dollars, changed files, stop after this round)."""
        jailed = self.sandbox.isolation == "bubblewrap"
        with tempfile.TemporaryDirectory(prefix="ideaforge-agent-work-") as tmp:
            work = Path(tmp) / "work"
            pristine = lay_out_copy(self.spec, self.source, work, carried)
            prompt = self._prompt(idea, error if rnd else None)
            argv = agent_argv(self.agent, prompt, self.limits, left_usd, work, list(self.spec.editable_files), jailed)
            call = AgentCall(argv, work, agent_env(self.agent, self.environ, self.limits, left_usd, left_s, jailed),
                             left_s, program_binds(argv, self.environ))
            t0 = time.time()
            run = self.sandbox.run(call)
            usage = parse_usage(run.stdout)
            stage, err, changed, stop = self._judge(run, usage, work, pristine)
        self._record(prompt, run, usage, t0, err if stage != "ok" else None)
        cost = usage.cost_usd or 0.0
        note = f"isolation {run.isolation}, {run.seconds:.1f} s, " + \
               (f"${cost:.4f}" if usage.cost_usd is not None else "cost not reported") + \
               (f", {usage.turns} turn(s)" if usage.turns is not None else "")
        reply = f"[{note}]\n{usage.final or _capped(run.stdout)[-2000:]}"
        return Attempt(0, rnd, stage, err, reply, round(run.seconds, 3)), cost, changed, stop

    def _judge(self, run: AgentRun, usage: Usage, work: Path,
               pristine: dict[str, bytes]) -> tuple[str, str | None, dict[str, str | None], bool]:
        if run.timed_out:
            return "agent", (f"the agent ran past its time cap ({self.limits.timeout_s:g} s for this idea) and was "
                             "killed with its process tree; its partial changes were discarded"), {}, True
        try:
            changed = collect_changes(self.spec, pristine, self.baseline, work)
        except EditRefused as e:
            return "apply", str(e), {}, False
        if not changed:
            tail = (run.stderr.strip() or run.stdout.strip())[-1500:]
            why = f"exited with code {run.rc}" if run.rc else "reported an error" if usage.is_error else "exited"
            return "agent", f"the agent {why} and changed nothing.\n{tail}".rstrip(), {}, bool(run.rc)
        stage, err, changed = self.check_changed(changed)
        return stage, err, changed, False

    def _prompt(self, idea: str, error: str | None) -> str:
        hidden = ", ".join(self.spec.hidden_files) or "none"
        retry = "" if error is None else _template("agent_repair.txt").substitute(error=error.strip())
        return _template("agent.txt").substitute(
            description=self.spec.description, metric=self.spec.metric,
            direction="lower" if self.spec.goal == "min" else "higher", budget_s=f"{self.spec.budget_s:g}",
            editable=", ".join(self.spec.editable_files), visible=", ".join(self.spec.visible_files) or "none",
            hidden=hidden, run_command=self.spec.run_command, idea=idea.strip(),
            rules="".join(f"- {r}\n" for r in self.spec.rules), retry=retry).strip() + "\n"

    def _record(self, prompt: str, run: AgentRun, usage: Usage, started_at: float, error: str | None) -> None:
        if self.recorder is None:
            return
        self.recorder(CallRecord(
            model=self.agent.text, purpose=PURPOSE, system=None, messages=[{"role": "user", "content": prompt}],
            reply=transcript(run), input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cost_usd=usage.cost_usd or 0.0, latency_s=round(run.seconds, 3), attempts=1,
            error=error[:2000] if error else None, started_at=started_at))

