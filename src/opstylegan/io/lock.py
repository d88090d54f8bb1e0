"""A run folder's lock: one writer at a time, and a second one fails at once naming the holder.

The lock is the file ``<folder>/.opstylegan.lock``, held with an exclusive ``flock`` for as long as the
writer runs. The operating system drops a ``flock`` when its process ends, however it ends (SIGKILL
included), so the lock of a dead process is free again at once and the next writer takes it over without
any guess about staleness. While held, the file records the holder (pid, host, command, start time) so the
refusal can say who holds it. On systems without ``fcntl`` the file is created exclusively instead, and a
lock left by a process that is no longer alive on this host is taken over.

A hidden name keeps the lock out of image listings (hidden files are ignored) and out of latent globs.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError"]

LOCK_NAME = ".opstylegan.lock"


class RunLockedError(RuntimeError):
    """The folder is locked by another live process; ``holder`` is its record (pid, host, command, started)."""

    def __init__(self, folder: Path, holder: dict[str, Any]) -> None:
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}: "
               f"{holder.get('command', '?')}") if holder else "a process that has not yet recorded itself"
        super().__init__(f"{folder} is being written by another run ({who}); wait for it to finish, or write "
                         "to another folder")
        self.folder = folder
        self.holder = holder


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except OSError:
        return False
    return True


class RunLock:
    """Exclusive lock on a run folder (created if missing); use as a context manager or acquire / release.

    Args:
        folder: The run folder.
        command: What the holder is doing, shown to a refused writer (default: this process's command line).

    Raises (on acquire):
        RunLockedError: Another live process holds the lock.
        OSError: The folder cannot be created or written.
    """

    def __init__(self, folder: str | os.PathLike[str], *, command: str | None = None) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command if command is not None else shlex.join(sys.argv)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def record(self) -> dict[str, Any]:
        """What this lock writes into the lock file."""
        return {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def acquire(self) -> RunLock:
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        self.folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            self._acquire_exclusive_create()
        else:
            self._acquire_flock()
        return self

    def _acquire_flock(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunLockedError(self.folder, _read_holder(self.path)) from None
            except BaseException:
                os.close(fd)
                raise
            # A releasing holder unlinks the file while still holding it: if the name now points to another
            # file (or none), the lock just taken is on a dead inode; start again.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        data = (json.dumps(self.record()) + "\n").encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    def _acquire_exclusive_create(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = _read_holder(self.path)
                same_host = holder.get("host") == socket.gethostname()
                pid = holder.get("pid")
                if same_host and isinstance(pid, int) and not _pid_alive(pid):
                    self.path.unlink(missing_ok=True)  # the holder died: take its lock over
                    continue
                raise RunLockedError(self.folder, holder) from None
            os.write(fd, (json.dumps(self.record()) + "\n").encode("utf-8"))
            self._fd = fd
            return
        raise RunLockedError(self.folder, _read_holder(self.path))

    def release(self) -> None:
        """Remove the lock file and drop the lock (no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if fcntl is None:  # an open file cannot be removed there
            os.close(fd)
            self.path.unlink(missing_ok=True)
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: see _acquire_flock
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
