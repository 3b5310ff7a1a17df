"""The jail every untrusted process runs in: training, smoke runs, the untrusted half of evaluation.

On Linux with bubblewrap (`bwrap`) a jailed process gets its own PID, IPC and network
namespaces (loopback only, unless the environment declares `[resources] network = true`),
dies with the process that started it (`--die-with-parent`), and sees a file system built
for it: the system (/usr, /etc without its secrets, the Python installation, the ideaforge
package with its built-in environments masked) read-only, a fresh /proc and /dev, a tmpfs
/tmp that is also HOME, and only the paths its caller names: the writable ones (workspace,
IDEAFORGE_OUT) and the read-only ones (data at /data, alone). The campaign directory, the
environment directory, the user's HOME, other trials and the controller's processes are
simply not there. Its environment is built from an allow-list, never stripped by pattern.

Where no jail can be made (no bwrap, no user namespaces, not Linux) or IDEAFORGE_JAIL=none
forces it, processes run unjailed with the same allow-listed environment; `isolation()`
says "none", every trial record says so, and `warn_unisolated` says so loudly once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

JAIL_VAR = "IDEAFORGE_JAIL"  # "none" forces the unjailed path (loud, recorded)
DATA_MOUNT = "/data"         # where the environment's data appears inside the jail, alone
JAIL_HOME = "/tmp"           # HOME inside: the jail's own tmpfs

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "IDEAFORGE_THREADS")
_ALLOWED = {"PATH", "LANG", "LANGUAGE", "TZ", "PYTHONUNBUFFERED", "PYTHONHASHSEED", "TERM",
            "CUDA_VISIBLE_DEVICES", *THREAD_VARS}
_ALLOWED_PREFIXES = ("LC_", "IDEAFORGE_")
# The controller's own settings are not the trial's business (IDEAFORGE_MODEL, IDEAFORGE_JAIL, ...).
_CONTROLLER_ONLY = {"IDEAFORGE_MODEL", JAIL_VAR, "IDEAFORGE_CACHE"}
# System files readable by uid 0 that no trial needs.
_ETC_SECRETS = ("shadow", "shadow-", "gshadow", "gshadow-", "ssh", "sudoers", "sudoers.d", "ssl/private")
_GPU_SHARED = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
_PACKAGE = Path(__file__).resolve().parents[1]  # .../ideaforge
_BUILTIN_ENVS = _PACKAGE / "envs" / "builtin"

_lock = threading.Lock()
_probed: tuple[str, str] | None = None  # (isolation, why not) once per process
_warned = False


def allowed_environ(base: Mapping[str, str]) -> dict[str, str]:
    """Only the allow-listed variables of `base`: locale, PATH, thread counts, IDEAFORGE_*, CUDA_VISIBLE_DEVICES."""
    return {k: v for k, v in base.items()
            if (k in _ALLOWED or k.startswith(_ALLOWED_PREFIXES)) and k not in _CONTROLLER_ONLY}


# -- detection -----------------------------------------------------------------------
def isolation() -> str:
    """"bubblewrap" when a trial jail actually starts here (probed once), else "none"."""
    return _probe()[0]


def why_unisolated() -> str:
    """Why `isolation()` is "none" (empty when it is not), for the user."""
    return _probe()[1]


def _probe() -> tuple[str, str]:
    global _probed
    with _lock:
        if _probed is None:
            _probed = _detect()
        return _probed


def _detect() -> tuple[str, str]:
    if os.environ.get(JAIL_VAR, "").lower() == "none":
        return "none", f"{JAIL_VAR}=none is set"
    if not sys.platform.startswith("linux"):
        return "none", f"jails need Linux namespaces; this is {sys.platform}"
    if not shutil.which("bwrap"):
        return "none", "bubblewrap (bwrap) is not installed; on Debian/Ubuntu: apt-get install bubblewrap"
    try:  # a real trial-shaped jail: namespaces, /proc, /dev, binds; not just `bwrap --version`
        argv = jail_argv([sys.executable, "-S", "-c", "pass"], cwd=Path("/"), writable=[], readonly={}, env={},
                         isolate=True)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "none", f"bubblewrap could not start a jail: {e}"
    if proc.returncode != 0:
        err = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return "none", f"bubblewrap could not start a jail ({err[0]}); user namespaces may be disabled"
    return "bubblewrap", ""


def warn_unisolated(log: Callable[[str], None]) -> str:
    """Say once per process, loudly, that trials are not jailed. Returns the isolation."""
    global _warned
    iso = isolation()
    if iso == "none" and not _warned:
        _warned = True
        log(f"WARNING: trials run UNISOLATED (isolation = none): {why_unisolated()}. Edited code can read "
            "this user's files and secrets, reach the network and tamper with environments; every trial "
            "is recorded as unisolated.")
    return iso


def isolation_line() -> str:
    """One line for `env check` and friends: how trials are isolated on this machine."""
    if isolation() == "bubblewrap":
        return ("isolation: bubblewrap (trials jailed: own PID/IPC/network namespaces, system read-only, "
                "only workspace and IDEAFORGE_OUT writable, data read-only at /data)")
    return f"isolation: NONE, trials run unjailed ({why_unisolated()})"


def _reset_for_tests() -> None:
    global _probed, _warned
    with _lock:
        _probed, _warned = None, False


# -- the command line ----------------------------------------------------------------
def jail_argv(argv: list[str], *, cwd: Path, writable: Iterable[Path], readonly: Mapping[str, Path],
              env: Mapping[str, str], network: bool = False, gpu_ids: Iterable[str] = (),
              hide: Iterable[Path] = (), isolate: bool | None = None) -> list[str]:
    """The command line that runs `argv` jailed (or, when `isolate` is False, unjailed).

    cwd       working directory inside (must be one of the bound paths)
    writable  host paths bound read-write at the same path
    readonly  destination inside -> host source, bound read-only
    env       the process's whole environment (filter it with `allowed_environ` first); it is
              set with `env -i`, so nothing of the caller's environment reaches the jail
    network   keep the host's network (else: a private loopback only)
    gpu_ids   leased GPU ids: /dev/nvidia<id> and the shared control devices pass through
    hide      host paths masked with an empty read-only tmpfs should a system bind expose them
    isolate   default: jail when `isolation()` is "bubblewrap"
    Run it with Popen(..., env=<anything>) and start_new_session=True; killing the returned
    process (bwrap) kills everything inside.
    """
    envpart = [shutil.which("env") or "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items())]
    if isolate is None:
        isolate = isolation() == "bubblewrap"
    if not isolate:
        return envpart + list(argv)
    args = ["bwrap", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session",
            # a name that resolves inside (to loopback): torchrun and other rendezvous look it up
            "--hostname", "localhost"]
    if not network:
        args.append("--unshare-net")
    # The fresh /proc, /dev and /tmp first: the binds below then land on top of them, so a Python
    # installation, campaign or workspace that lives under /tmp (a CI clone, pytest) stays visible.
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm", "--tmpfs", "/tmp"]
    roots = _system_binds(args)
    masks = [p for p in [_BUILTIN_ENVS, *map(Path, hide)] if _under(p, roots)]
    for p in masks:
        args += ["--tmpfs", str(p)]
    for dest, src in readonly.items():
        args += ["--ro-bind", str(src), str(dest)]
    for p in writable:
        args += ["--bind", str(p), str(p)]
    gpu_ids = [str(g) for g in gpu_ids]
    # Device nodes are named by minor number; an id that is not one (a UUID) cannot be mapped,
    # so then every GPU node passes and CUDA_VISIBLE_DEVICES alone selects.
    nodes = ([f"/dev/nvidia{g}" for g in gpu_ids] if all(g.isdigit() for g in gpu_ids)
             else sorted(str(p) for p in Path("/dev").glob("nvidia[0-9]*")))
    for node in nodes:
        args += ["--dev-bind-try", node, node]
    if gpu_ids:
        for name in _GPU_SHARED:
            args += ["--dev-bind-try", f"/dev/{name}", f"/dev/{name}"]
        args += ["--ro-bind-try", "/sys", "/sys"]  # CUDA reads topology from /sys
    for p in masks:
        args += ["--remount-ro", str(p)]
    args += ["--remount-ro", "/", "--chdir", str(cwd), "--"]
    return envpart + args + list(argv)


def _system_binds(args: list[str]) -> list[Path]:
    """Append read-only binds of the system and the Python installation; return the bound roots."""
    roots: list[Path] = []
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt"):
        p = Path(top)
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), top]
        elif p.is_dir():
            args += ["--ro-bind", top, top]
            roots.append(p)
    for name in _ETC_SECRETS:
        p = Path("/etc", name)
        if p.is_dir():
            args += ["--tmpfs", str(p)]
        elif p.exists():
            args += ["--ro-bind", "/dev/null", str(p)]
    extra = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(sys.exec_prefix).resolve(),
             Path(sys.executable).resolve().parent.parent, Path(os.path.abspath(sys.executable)).parent.parent,
             _PACKAGE.parent}  # the venv too: without site (python -S) sys.prefix is the base
    for p in sorted(extra):
        if p.is_dir() and not _under(p, roots):
            args += ["--ro-bind", str(p), str(p)]
            roots.append(p)
    return roots


def _under(p: Path, roots: Iterable[Path]) -> bool:
    p = Path(p).resolve()
    return any(p == r or r in p.parents for r in roots)


@dataclass(frozen=True)
class Jail:
    """What one untrusted run may see; `argv` wraps its command line (see `jail_argv`)."""

    writable: tuple[Path, ...] = ()
    readonly: Mapping[str, Path] = field(default_factory=dict)
    network: bool = False
    gpu_ids: tuple[str, ...] = ()
    hide: tuple[Path, ...] = ()
    isolate: bool | None = None  # None: jail when this machine can

    @property
    def isolation(self) -> str:
        if self.isolate is None:
            return isolation()
        return "bubblewrap" if self.isolate else "none"

    def argv(self, argv: list[str], *, cwd: Path, env: Mapping[str, str]) -> list[str]:
        return jail_argv(argv, cwd=cwd, writable=self.writable, readonly=self.readonly, env=env,
                         network=self.network, gpu_ids=self.gpu_ids, hide=self.hide,
                         isolate=self.isolation == "bubblewrap")


def package_parent() -> Path:
    """The directory holding the ideaforge package (bound read-only in every jail; PYTHONPATH)."""
    return _PACKAGE.parent
