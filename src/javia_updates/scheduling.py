"""When a device may install an update (DESIGN.md section 4). Pure: no I/O.

CONTRACT STUB — the signatures below are fixed; the bodies are being written.
Every function takes ``now`` (an aware datetime) instead of reading a clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, time

from javia_updates.models import InstallDirective, UpdateType

DEFAULT_WINDOW_START = time(2, 0)
DEFAULT_WINDOW_SECONDS = 3 * 3600
DEFAULT_IDLE_SECONDS = 3600
ONLINE_WITHIN_SECONDS = 300


def next_window_start(after: datetime, timezone: str, at: time = DEFAULT_WINDOW_START) -> datetime:
    """Earliest maintenance-window start strictly later than ``after`` (aware UTC result).

    A 02:00 inside a spring-forward gap means the first instant after the gap; a
    02:00 that occurs twice means the first occurrence.
    """
    raise NotImplementedError


def window_offset_seconds(device_uuid: uuid.UUID | str, window_seconds: int = DEFAULT_WINDOW_SECONDS) -> int:
    """Stable per-device start offset inside a window, in whole seconds, in [0, window_seconds)."""
    raise NotImplementedError


def is_online(last_seen: datetime | None, now: datetime, within_seconds: int = ONLINE_WITHIN_SECONDS) -> bool:
    """Whether ``last_seen`` is within ``within_seconds`` of ``now`` (inclusive)."""
    raise NotImplementedError


def most_urgent(types: Iterable[UpdateType]) -> UpdateType:
    """instant > urgent > scheduled."""
    raise NotImplementedError


@dataclass(frozen=True, slots=True)
class InstallPlan:
    """When one device installs one update: UTC instants, seconds."""

    install_at: datetime
    window_end: datetime | None
    idle_seconds_required: int | None
    reason: str


def plan_install(
    update_type: UpdateType,
    *,
    now: datetime,
    timezone: str,
    device_uuid: uuid.UUID | str,
    window_start: time = DEFAULT_WINDOW_START,
    window_seconds: int = DEFAULT_WINDOW_SECONDS,
    idle_seconds: int = DEFAULT_IDLE_SECONDS,
) -> InstallPlan:
    """The plan for a device that gets (or re-checks) a row of ``update_type`` at ``now``."""
    raise NotImplementedError


@dataclass(frozen=True, slots=True)
class InstallDecision:
    """The agent's answer to "may I install now?"."""

    install_now: bool
    reason: str
    wake_at: datetime | None


def decide_install(directive: InstallDirective, *, now: datetime, idle_seconds: float | None) -> InstallDecision:
    """The one policy call of the agent: may the device install ``directive`` at ``now``?"""
    raise NotImplementedError
