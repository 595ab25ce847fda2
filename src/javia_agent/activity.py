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
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from javia_agent._fs import atomic_write
from javia_agent.clock import boottime

__all__ = ["ACTIVITY_FILE_ENV", "DEFAULT_ACTIVITY_FILE", "IdleTracker", "record_activity"]

#: Set by the agent in the application's environment.
ACTIVITY_FILE_ENV = "JAVIA_ACTIVITY_FILE"
DEFAULT_ACTIVITY_FILE = Path("/var/lib/javia/activity.json")
_MAX_ACTIVITY_BYTES = 4096


def _read_counter(path: Path) -> int:
    try:
        value = json.loads(path.read_bytes()[:_MAX_ACTIVITY_BYTES])
        return int(value["counter"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def record_activity(path: Path | str | None = None, *, now: datetime | None = None) -> Path:
    """Record that the application was just used.

    Cheap enough to call on every interaction: one small file replaced
    atomically (no fsync — losing the last activity in a power cut only makes
    the device look idle earlier by the time since the previous record).

    Args:
        path: the activity file; default ``$JAVIA_ACTIVITY_FILE`` (set by the
            agent for the application), else ``/var/lib/javia/activity.json``.
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


def _read_file(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(_MAX_ACTIVITY_BYTES)
    except OSError:
        return None


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
        reader: returns the file's content, or ``None`` if it does not exist
            (injectable for tests).
    """

    def __init__(
        self,
        path: Path,
        *,
        monotonic: Callable[[], float] = boottime,
        reader: Callable[[Path], bytes | None] = _read_file,
    ) -> None:
        self.path = Path(path)
        self._monotonic = monotonic
        self._reader = reader
        self._content: bytes | None = None
        self._changed_at: float | None = None

    def poll(self) -> bool:
        """Read the file once; note the monotonic time if its content changed.

        Returns:
            Whether activity was observed: the content differs from the last
            poll (including the file's first appearance or its removal).
        """
        content = self._reader(self.path)
        now = self._monotonic()
        if self._changed_at is None:
            if content is None:
                return False
        elif content == self._content:
            return False
        self._content = content
        self._changed_at = now
        return True

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
