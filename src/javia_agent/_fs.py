"""Crash-safe file helpers: write to a temp file, fsync, rename, fsync the directory.

After :func:`atomic_write` returns, a power loss leaves either the old or the
new content at ``path``, never a mix or an empty file (the POSIX ``rename``
guarantee, made durable by the two fsyncs).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "fsync_directory"]


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
