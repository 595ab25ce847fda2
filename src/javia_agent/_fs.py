"""Crash-safe file helpers: atomic writes, their leftovers, and removal of deep trees.

After :func:`atomic_write` returns, a power loss leaves either the old or the
new content at ``path``, never a mix or an empty file (the POSIX ``rename``
guarantee, made durable by the two fsyncs). A write interrupted by a crash
leaves its temporary file (``.<name>.<8 random characters>.tmp``) behind;
:func:`remove_interrupted_writes` removes those at start-up.

:func:`remove_tree` removes a directory tree of any depth without recursion
and without following a symbolic link: every agent-owned tree (releases,
staging directories, downloads, Python environments) is removed through it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

__all__ = [
    "InstanceLockedError",
    "atomic_write",
    "fsync_directory",
    "hold_instance_lock",
    "remove_interrupted_writes",
    "remove_tree",
    "restrict_umask",
]

logger = logging.getLogger(__name__)

_DIRECTORY_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_DIRECTORY", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
# tempfile.mkstemp's names: prefix, 8 characters of tempfile's alphabet, suffix.
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


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


def remove_interrupted_writes(directory: Path, names: Iterable[str] | None = None) -> list[Path]:
    """Delete the temporary files that interrupted :func:`atomic_write` calls left in ``directory``.

    Only regular files named as :func:`atomic_write` names its temporary
    files (``.<name>.<8 characters of [a-z0-9_]>.tmp``) are removed, and
    only for a target ``<name>`` in ``names`` when given; nothing else in
    the directory is touched, nor any subdirectory. Call it only while no
    process can be writing there (the agent at start-up, holding its locks).

    Args:
        directory: one of the agent's own directories (e.g. ``state_dir``).
        names: target file names whose leftovers to remove (``"state.json"``,
            ``"app.pid"``); ``None``: any target name.

    Returns:
        The removed paths. Files that cannot be removed are logged, not raised.
    """
    wanted = None if names is None else set(names)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or (wanted is not None and match.group("name") not in wanted):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        except OSError as error:
            logger.warning("cannot remove %s: %s", entry.path, error.strerror or error)
            continue
        logger.info("removed %s, left by an interrupted write", entry.path)
        removed.append(Path(entry.path))
    return removed


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything below it, however deep; no-op if it does not exist.

    Iterative and bottom-up, so a tree thousands of directories deep cannot
    exhaust the interpreter's recursion limit (``shutil.rmtree`` recurses
    once per level), and it works through directory file descriptors
    (``openat``/``unlinkat``), so neither ``PATH_MAX`` nor a symbolic link
    planted in the tree matters: links are removed, never followed. At most
    three descriptors are open at a time: going back up uses ``..``, checked
    against the device and inode recorded on the way down, so a directory
    moved away meanwhile stops the removal instead of redirecting it.

    Removal goes on past an entry that cannot be removed; the first such
    error is raised at the end.

    Args:
        path: a file, a link or a directory tree.

    Raises:
        OSError: something could not be removed (permissions, an immutable
            file, a directory moved during the removal).
    """
    path = Path(path)
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(top.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    parent = os.open(path.parent, _DIRECTORY_FLAGS & ~getattr(os, "O_NOFOLLOW", 0))
    try:
        _remove_directory(parent, path.name, _identity(top), str(path))
    finally:
        os.close(parent)


def _remove_directory(top_parent: int, name: str, identity: tuple[int, int], shown: str) -> None:
    """Remove the directory ``name`` in ``top_parent`` (see :func:`remove_tree`)."""
    errors: list[OSError] = []
    try:
        current = os.open(name, _DIRECTORY_FLAGS, dir_fd=top_parent)
    except FileNotFoundError:
        return
    if _identity(os.fstat(current)) != identity:
        os.close(current)
        raise OSError(f"{shown} was replaced while being removed")
    # One level per directory being emptied, top first: its identity, its
    # name in its parent and the subdirectories still to visit.
    levels: list[tuple[tuple[int, int], str, list[str]]] = [
        (identity, name, _empty_files(current, shown, errors))
    ]
    try:
        while levels:
            pending = levels[-1][2]
            if pending:
                child_name = pending.pop()
                try:
                    child = os.open(child_name, _DIRECTORY_FLAGS, dir_fd=current)
                except FileNotFoundError:
                    continue
                except OSError as error:
                    # Replaced by a file or a link since it was listed: remove the name.
                    try:
                        os.unlink(child_name, dir_fd=current)
                    except OSError:
                        errors.append(error)
                    continue
                os.close(current)
                current = child
                levels.append(
                    (_identity(os.fstat(current)), child_name, _empty_files(current, shown, errors))
                )
                continue
            # Empty (or as empty as it gets): go up and remove it.
            _, done_name, _ = levels.pop()
            if levels:
                up = os.open("..", _DIRECTORY_FLAGS, dir_fd=current)
                if _identity(os.fstat(up)) != levels[-1][0]:
                    os.close(up)
                    raise OSError(f"a directory under {shown} was moved while being removed")
                os.close(current)
                current = up
                target = current
            else:
                os.close(current)
                current = -1
                target = top_parent
            try:
                os.rmdir(done_name, dir_fd=target)
            except FileNotFoundError:
                pass
            except OSError as error:
                errors.append(error)
    finally:
        if current >= 0:
            os.close(current)
    if errors:
        first = errors[0]
        raise OSError(first.errno, f"cannot remove all of {shown}: {first.strerror or first}")


def _empty_files(directory: int, shown: str, errors: list[OSError]) -> list[str]:
    """Unlink every non-directory entry of ``directory``; return its subdirectories' names."""
    subdirectories: list[str] = []
    try:
        with os.scandir(directory) as entries:
            listed = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    except OSError as error:
        errors.append(error)
        return subdirectories
    for name, is_directory in listed:
        if is_directory:
            subdirectories.append(name)
            continue
        try:
            os.unlink(name, dir_fd=directory)
        except FileNotFoundError:
            continue
        except IsADirectoryError:
            subdirectories.append(name)
        except OSError as error:
            errors.append(error)
    return subdirectories


def restrict_umask() -> None:
    """Add group and other write (0o022) to the process's umask; keep anything stricter.

    Files and directories the agent creates without an explicit mode are then
    at most 0644/0755, even when it was started from a shell with umask 0000.
    """
    current = os.umask(0o022)
    os.umask(current | 0o022)
