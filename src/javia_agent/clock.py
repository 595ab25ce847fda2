"""Clocks the agent reads, behind one injectable object.

A Raspberry Pi has no real-time clock: its wall clock may jump by years when
NTP first syncs. Durations (idle time, health windows, time since the last
heartbeat) are therefore measured on a clock that never jumps:
``CLOCK_BOOTTIME`` where the kernel has it (keeps counting during suspend),
else ``time.monotonic``. The wall clock is used only for informative
timestamps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = ["Clock", "boottime"]


def boottime() -> float:
    """Seconds since boot, never jumping with the wall clock (``CLOCK_BOOTTIME``)."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return time.monotonic()


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Clock:
    """The agent's clocks.

    Attributes:
        monotonic: seconds on a clock that never jumps (default :func:`boottime`).
        sleep: blocks for the given seconds (tests pass a fake that advances
            their fake ``monotonic``).
        wall: the device's wall clock as an aware UTC datetime; informative
            only (report timestamps), never used for decisions.
    """

    monotonic: Callable[[], float] = field(default=boottime)
    sleep: Callable[[float], None] = field(default=time.sleep)
    wall: Callable[[], datetime] = field(default=_utc_now)
