"""The wake-up channel's answer and its pure rules (DESIGN.md section 10; docs/agent.md).

Beside the heartbeat, the agent holds one long-lived request,
``GET /api/v1/devices/{uuid}/wakeup?wait=N``; the server answers it the
moment something concerns the device, or after ``N`` seconds at the latest.
The answer only says *heartbeat now* (and why): the heartbeat stays the source
of truth, so nothing in it is trusted beyond these bounded fields.

Pure: no I/O, randomness injected.
"""

from __future__ import annotations

import random
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MAX_RECONNECT_SECONDS",
    "MAX_SPREAD_SECONDS",
    "MAX_WAIT_SECONDS",
    "MIN_WAIT_SECONDS",
    "WakeupAnswer",
    "WakeupReason",
    "reconnect_delay",
]

#: Shortest and longest hold a device may ask for, in seconds.
MIN_WAIT_SECONDS = 5
MAX_WAIT_SECONDS = 600
#: Longest reconnect delay a server may suggest, in seconds (a longer one is refused).
MAX_RECONNECT_SECONDS = 3600.0
#: Longest spread of a wake-up's heartbeat a server may ask for, in seconds.
MAX_SPREAD_SECONDS = 3600.0


class WakeupReason(StrEnum):
    """Why a held wake-up request ended."""

    #: A new directive may wait: an update was published that may concern the device.
    UPDATE = "update"
    #: A rollout concerning the device changed: paused, resumed, cancelled, halted, approved, a phase opened.
    ROLLOUT = "rollout"
    #: The device's token was revoked or rotated: its next heartbeat finds out.
    TOKEN = "token"
    #: Nothing happened within the hold: reconnect, no heartbeat needed.
    IDLE = "idle"
    #: The server process is shutting down: reconnect later (to another replica).
    SHUTDOWN = "shutdown"


class WakeupAnswer(BaseModel):
    """``GET /api/v1/devices/{uuid}/wakeup``: 200 answer.

    Attributes:
        reason: why the request ended (:class:`WakeupReason`).
        heartbeat: whether the device should heartbeat (not for ``idle`` and ``shutdown``).
        spread_seconds: the device heartbeats after a random delay in
            ``[0, spread_seconds]`` (0 for instant updates and rollout stops;
            more when the whole fleet is woken for a scheduled update).
        reconnect_after_seconds: the server's suggested delay before the next
            held request, in seconds (the agent adds jitter, and a floor).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    reason: WakeupReason
    heartbeat: bool
    spread_seconds: float = Field(default=0.0, ge=0, le=MAX_SPREAD_SECONDS, allow_inf_nan=False)
    reconnect_after_seconds: float = Field(ge=0, le=MAX_RECONNECT_SECONDS, allow_inf_nan=False)


def reconnect_delay(
    suggested: float | None,
    failures: int,
    rng: random.Random,
    *,
    floor_seconds: float = 1.0,
    base_seconds: float = 2.0,
    cap_seconds: float = 300.0,
) -> float:
    """Seconds to wait before the next held request: jittered, never zero.

    After a clean answer (``failures`` 0) the server's ``suggested`` delay
    (at least ``floor_seconds``) with +0-50 % jitter, so agents woken together
    do not reconnect together. After ``failures`` failures in a row (no
    answer, a refused answer, an error status, a hold that ended early)
    "full jitter" exponential backoff: a uniform draw in
    ``[ceiling / 2, ceiling]``, ``ceiling = min(cap, base * 2 ** (failures - 1))``,
    and never less than ``suggested`` (a 503's ``Retry-After``).

    Args:
        suggested: the server's delay in seconds (answer or ``Retry-After``), or None.
        failures: failures in a row (0 after a clean answer).
        rng: randomness for the jitter.
        floor_seconds: the least delay, so a hostile server cannot make the agent busy-loop.
        base_seconds: the first backoff ceiling.
        cap_seconds: the largest backoff ceiling (a server's ``suggested`` may exceed it,
            up to :data:`MAX_RECONNECT_SECONDS`).

    Returns:
        The delay in seconds, at least ``floor_seconds``.
    """
    asked = min(MAX_RECONNECT_SECONDS, max(0.0, suggested or 0.0))
    if failures <= 0:
        delay = max(floor_seconds, asked)
        return delay * (1.0 + rng.uniform(0.0, 0.5))
    ceiling = min(cap_seconds, base_seconds * 2 ** min(failures - 1, 30))
    return max(floor_seconds, asked, rng.uniform(ceiling / 2, ceiling))
