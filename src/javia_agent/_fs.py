"""Crash-safe file helpers: write to a temp file, fsync, rename, fsync the directory.

After :func:`atomic_write` returns, a power loss leaves either the old or the
new content at ``path``, never a mix or an empty file (the POSIX ``rename``
guarantee, made durable by the two fsyncs).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import IO

__all__ = ["InstanceLockedError", "atomic_write", "fsync_directory", "hold_instance_lock"]


def fsync_directory(directory: Path) -> None:
    """Flush ``directory``'s entries (renames, new and removed names) to disk."""
    descriptor = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically.

    Args:
        path: the file to write; its directory is created if missing.
        data: the complete new content.
        mode: permission bits of the new file, set before any byte is written.
        durable: fsync the file and its directory (False for informative files
            written often, to spare the SD card).

    Raises:
        OSError: the file cannot be written; the old content is left in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    if durable:
        fsync_directory(path.parent)


class InstanceLockedError(OSError):
    """Another process holds the instance lock; ``holder`` is its pid as it wrote it (or "")."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is locked by process {holder or 'unknown'}")
        self.path = path
        self.holder = holder


def hold_instance_lock(path: Path) -> IO[str]:
    """Take an exclusive ``flock`` on ``path`` for as long as the returned file stays open.

    Writes this process's pid into it. The kernel drops the lock when the
    process ends, however it ends (``kill -9`` and power cuts included), so a
    stale lock file never blocks a restart. The descriptor is not inherited
    by child processes (the application).

    Raises:
        InstanceLockedError: another process holds it.
        OSError: the file cannot be created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - the caller keeps it open
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read(32).strip()
        handle.close()
        raise InstanceLockedError(path, holder) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
