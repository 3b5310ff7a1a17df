"""One controller per campaign directory."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from ideaforge.errors import StoreError

LOCK_NAME = "controller.lock"


class ControllerLock:
    """One controller per campaign directory: an exclusive flock on DIR/controller.lock.

    Held for the controller's life (the kernel drops it when the process dies, even by
    SIGKILL, so a stale lock never blocks a resume). The holder's pid is written in the
    file so a refused second controller can name it.
    """

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd: int | None = fd

    @classmethod
    def acquire(cls, root: Path) -> "ControllerLock":
        path = Path(root) / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # The holder writes its pid just after locking: wait (briefly) for it to appear.
            deadline = time.monotonic() + 2.0
            while not (holder := os.pread(fd, 64, 0).decode(errors="replace").strip()) and time.monotonic() < deadline:
                time.sleep(0.01)
            os.close(fd)
            holder = holder or "?"
            raise StoreError(f"{root} is being run by another controller (pid {holder}); "
                             f"stop it first, or watch it with `ideaforge status {root}`") from None
        pid = f"{os.getpid()}\n".encode()
        os.pwrite(fd, pid, 0)  # over an earlier holder's pid, then cut: never an empty file
        os.ftruncate(fd, len(pid))
        return cls(path, fd)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    __del__ = release
