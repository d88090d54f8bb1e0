"""Output paths checked before any work, and write failures described in words.

A command that computes for an hour and then cannot write its result has wasted the hour: every command
creates its output folder (or the folder of its output file) first and writes and removes a probe file
there, so a read-only folder, a missing permission, a path under a file or a read-only file system is
refused before any work. Later write failures (a disk that fills up) are turned into one sentence by
:func:`describe_os_error`.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["OutputPathError", "check_output_file", "describe_os_error", "prepare_outdir"]


class OutputPathError(OSError):
    """An output folder or file cannot be written; the message names the path and the reason."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno = code


def describe_os_error(e: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """One sentence for a failed write: the path (``path``, else the error's file name), the reason, and for a
    full disk the free space left there. Callers that know the output folder pass ``e.filename or folder``:
    a failed ``write()`` carries no file name."""
    name = path if path is not None else e.filename
    where = str(name) if name is not None else "the output"
    code = e.errno
    if code == errno.ENOSPC or code == errno.EDQUOT:
        free = _free_space(Path(name)) if name is not None else None
        left = f" ({free / 2**20:.1f} MiB free)" if free is not None else ""
        return f"cannot write {where}: the disk is full{left}; free some space or write elsewhere"
    if code in (errno.EACCES, errno.EPERM):
        return f"cannot write {where}: permission denied"
    if code == errno.EROFS:
        return f"cannot write {where}: the file system is read-only"
    if code == errno.ENOTDIR:
        return f"cannot write {where}: a part of the path is a file, not a folder"
    if code == errno.EISDIR:
        return f"cannot write {where}: it is a folder, not a file"
    return f"cannot write {where}: {e.strerror or e}"


def _free_space(path: Path) -> int | None:
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


def _blocking_file(path: Path) -> Path | None:
    """The first existing non-folder among ``path`` and its parents (what makes mkdir fail)."""
    for p in reversed((path, *path.parents)):
        if p.exists() and not p.is_dir():
            return p
    return None


def prepare_outdir(path: str | os.PathLike[str]) -> Path:
    """Create the output folder ``path`` (with parents) and prove it writable with a probe file.

    Raises:
        OutputPathError: ``path`` or one of its parents is a file, or the folder cannot be created or written.
    """
    out = Path(path)
    blocking = _blocking_file(out)
    if blocking is not None:
        what = "is a file" if blocking == out else f"lies under {blocking}, which is a file"
        raise OutputPathError(errno.ENOTDIR, f"cannot write to {out}: it {what}, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".opstylegan-probe-", dir=out)
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise OutputPathError(e.errno or errno.EIO, describe_os_error(e, out)) from None
    return out


def check_output_file(path: str | os.PathLike[str]) -> Path:
    """Check that the file ``path`` can be written atomically (a temporary file beside it, renamed onto it):
    it is not a folder, and its folder can be created and written. An existing file is left untouched.

    Raises:
        OutputPathError: As :func:`prepare_outdir`, or ``path`` is a folder.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputPathError(errno.EISDIR, f"cannot write {p}: it is a folder; give a file name")
    blocking = _blocking_file(p.parent)
    if blocking is not None:
        raise OutputPathError(errno.ENOTDIR, f"cannot write {p}: it lies under {blocking}, which is a file, not a "
                                             "folder")
    prepare_outdir(p.parent)
    return p
