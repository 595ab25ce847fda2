"""The application's last-activity record, and idle time measured by the agent.

Urgent updates install once the application has been idle for an hour
(DESIGN.md section 4). The application says "I was just used" by calling
:func:`record_activity` (or running ``javia agent activity``), which replaces a
small JSON file atomically: ``{"counter": n, "wall_time": "...", "pid": p}``.

The agent does not trust the wall time in that file: a Pi has no real-time
clock, and an NTP step could make the device look idle for years or not at
all. :class:`IdleTracker` instead polls the file and, whenever its content
changes, notes the time on a clock that never jumps (``CLOCK_BOOTTIME``).
Idle time is "that clock now minus that clock at the last observed change".

The file lives in a directory of its own that the application can write
(``/var/lib/javia/activity/``: root, the application's group, mode 2770, made
by ``javia agent register --app-group`` and the agent's systemd unit). Whoever
can write there can plant a symbolic link, a FIFO or a device node in place of
the file, so both sides read it with :func:`read_activity_file`: never through
a link, never blocking, only a regular file with one link, at most
:data:`MAX_ACTIVITY_BYTES`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from javia_agent._fs import atomic_write
from javia_agent.clock import boottime

__all__ = [
    "ACTIVITY_DIR_MODE",
    "ACTIVITY_FILE_ENV",
    "DEFAULT_ACTIVITY_FILE",
    "DEFAULT_APP_GROUP",
    "MAX_ACTIVITY_BYTES",
    "IdleTracker",
    "UnsafeActivityFileError",
    "app_group_id",
    "prepare_activity_dir",
    "read_activity_file",
    "record_activity",
]

logger = logging.getLogger(__name__)

#: Set by the agent in the application's environment.
ACTIVITY_FILE_ENV = "JAVIA_ACTIVITY_FILE"
#: ``<state_dir>/activity/activity.json`` with the default state directory.
DEFAULT_ACTIVITY_FILE = Path("/var/lib/javia/activity/activity.json")
#: Bytes read from the activity file at most (a record is about 80).
MAX_ACTIVITY_BYTES = 4096
#: The group whose members may record activity (``javia agent register --app-group``).
DEFAULT_APP_GROUP = "javia-app"
#: rwx for root and the application's group, nothing for others; setgid, so
#: the files the application creates there belong to the group as well.
ACTIVITY_DIR_MODE = 0o2770

_OPEN_FLAGS = (
    os.O_RDONLY
    | os.O_NOFOLLOW  # a planted symlink fails with ELOOP instead of being followed
    | os.O_NONBLOCK  # a planted FIFO opens at once instead of waiting for a writer
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


class UnsafeActivityFileError(OSError):
    """The activity path holds something other than a plain file (a link, FIFO, device...)."""


def read_activity_file(path: Path | str) -> bytes | None:
    """The first :data:`MAX_ACTIVITY_BYTES` bytes of the activity file, read safely.

    Opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked with ``fstat`` on the
    open descriptor (no race between check and read): a symbolic link, FIFO,
    socket, device node, directory, or a regular file with more than one hard
    link is refused, so a writer of the activity directory can neither make
    the reader block nor make it read another file.

    Returns:
        The bytes, or ``None`` if the file does not exist.

    Raises:
        UnsafeActivityFileError: the path is not a regular file with one link;
            the message says what it is.
        OSError: the file exists but cannot be read (permissions, I/O).
    """
    try:
        descriptor = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise UnsafeActivityFileError(
                f"activity file {path} is a symbolic link: refused (expected a regular file)"
            ) from None
        raise
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeActivityFileError(
                f"activity file {path} is {_kind(info.st_mode)}: refused (expected a regular file)"
            )
        if info.st_nlink != 1:
            raise UnsafeActivityFileError(
                f"activity file {path} has {info.st_nlink} hard links: refused (expected one)"
            )
        chunks: list[bytes] = []
        remaining = MAX_ACTIVITY_BYTES
        while remaining > 0:
            chunk = os.read(descriptor, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def app_group_id(name: str) -> int | None:
    """The id of group ``name``, or ``None`` if no such group exists."""
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def prepare_activity_dir(directory: Path, gid: int | None) -> None:
    """Make ``directory`` the application's place to record activity.

    Creates it (and missing parents, 0755) and sets mode
    :data:`ACTIVITY_DIR_MODE` (2770) and, with ``gid``, group ``gid`` (the
    owner stays who runs this: root on a device). Changes are made on the
    opened directory (``O_NOFOLLOW``), never through a link planted in its
    place. Run by ``javia agent register``; the agent's systemd unit does the
    same at every start (``install -d -m 2770 -g javia-app``).

    Raises:
        OSError: the directory cannot be created, is a link, or its group or
            mode cannot be set (e.g. not root and not a member of the group).
    """
    directory = Path(directory)
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if gid is not None:
            os.fchown(descriptor, -1, gid)
        os.fchmod(descriptor, ACTIVITY_DIR_MODE)
    finally:
        os.close(descriptor)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _read_counter(path: Path) -> int:
    try:
        value = json.loads(read_activity_file(path) or b"")
        return int(value["counter"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def record_activity(path: Path | str | None = None, *, now: datetime | None = None) -> Path:
    """Record that the application was just used.

    Cheap enough to call on every interaction: one small file replaced
    atomically (no fsync — losing the last activity in a power cut only makes
    the device look idle earlier by the time since the previous record).
    The previous record is read with :func:`read_activity_file` (a link or
    FIFO planted in its place counts as no record) and replaced by a rename,
    which replaces a planted link itself, never its target.

    Args:
        path: the activity file; default ``$JAVIA_ACTIVITY_FILE`` (set by the
            agent for the application), else
            ``/var/lib/javia/activity/activity.json``.
        now: wall time to write (informative only); default the system clock.

    Returns:
        The path written.

    Raises:
        OSError: the file cannot be written (e.g. the directory is not writable).
    """
    if path is None:
        path = os.environ.get(ACTIVITY_FILE_ENV) or DEFAULT_ACTIVITY_FILE
    path = Path(path)
    stamp = (now or datetime.now(UTC)).astimezone(UTC)
    body = {
        "counter": _read_counter(path) + 1,
        "wall_time": stamp.isoformat(),
        "pid": os.getpid(),
    }
    atomic_write(path, json.dumps(body, sort_keys=True).encode("utf-8"), mode=0o644, durable=False)
    return path


class IdleTracker:
    """Measures how long the application has been idle, immune to wall-clock jumps.

    The first observation of the file counts as activity: after the agent
    starts, the device is idle for at most the time since start (the agent
    cannot know what happened before it ran). Until the file has been seen at
    all, idle time is unknown (``None``): an application that never records
    activity is never taken for idle (see ``scheduling.decide_install``).

    Args:
        path: the activity file to watch.
        monotonic: seconds on a clock that never jumps (default
            ``CLOCK_BOOTTIME``).
        reader: returns the file's content, or ``None`` if it does not exist,
            raising ``OSError`` if it cannot be read (default
            :func:`read_activity_file`; injectable for tests).

    A file the reader refuses (a link, a FIFO...) or cannot read counts as
    absent, with one warning in the log per distinct reason.
    """

    def __init__(
        self,
        path: Path,
        *,
        monotonic: Callable[[], float] = boottime,
        reader: Callable[[Path], bytes | None] = read_activity_file,
    ) -> None:
        self.path = Path(path)
        self._monotonic = monotonic
        self._reader = reader
        self._content: bytes | None = None
        self._changed_at: float | None = None
        self._last_problem: str | None = None

    def poll(self) -> bool:
        """Read the file once; note the monotonic time if its content changed.

        Returns:
            Whether activity was observed: the content differs from the last
            poll (including the file's first appearance or its removal).
        """
        content = self._read()
        now = self._monotonic()
        if self._changed_at is None:
            if content is None:
                return False
        elif content == self._content:
            return False
        self._content = content
        self._changed_at = now
        return True

    def _read(self) -> bytes | None:
        try:
            content = self._reader(self.path)
        except OSError as error:
            problem = (
                str(error)
                if isinstance(error, UnsafeActivityFileError)
                else (f"cannot read activity file {self.path}: {error.strerror or error}")
            )
            if problem != self._last_problem:
                logger.warning("%s; counted as no activity record", problem)
                self._last_problem = problem
            return None
        self._last_problem = None
        return content

    def idle_seconds(self) -> float | None:
        """Seconds since the last observed activity (polls the file first).

        Returns:
            The idle time in seconds on the monotonic clock, or ``None`` while
            the activity file has never been seen.
        """
        self.poll()
        if self._changed_at is None:
            return None
        return max(0.0, self._monotonic() - self._changed_at)
