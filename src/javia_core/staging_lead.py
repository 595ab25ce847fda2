"""When a device prepares an update ahead of its install time (DESIGN.md section 4). Pure.

A scheduled or urgent update waits for its maintenance window or an idle
moment. Downloading, verifying and staging it (the release unpacked, its
Python environment built, its apt packages downloaded) touches nothing that
runs, so the agent does it up to a **staging lead** before ``install_at``;
only stop → switch → start → health (and apt's own install, the setup
command) is left for the window. An instant update installs at once and is
never staged ahead.

The rule (:func:`decide_staging`): with a lead above 0, a scheduled update is
staged from ``install_at - lead`` on; an urgent one at once, since its idle
moment may come at any time before its deadline. The lead is
real elapsed seconds on the server's clock (aware UTC instants), so a DST
change between staging and the window never shortens or stretches it;
``install_at`` is already the window's start as the device plans it (the
server's window, or the device's own pinned one,
:func:`javia_core.scheduling.plan_in_own_window`). A lead of 0 stages at
install time, as before staging ahead existed.

Every function takes ``now`` and does no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from javia_core.errors import ScheduleError
from javia_core.maintenance_windows import check_aware
from javia_core.models import UpdateType
from javia_core.scheduling import describe_duration

__all__ = [
    "DEFAULT_STAGING_LEAD_SECONDS",
    "MAX_STAGING_LEAD_SECONDS",
    "STAGED_AHEAD_TYPES",
    "StagingDecision",
    "check_staging_lead",
    "decide_staging",
]

#: Default lead: stage 6 h before ``install_at`` (agent setting ``staging_lead_seconds``).
DEFAULT_STAGING_LEAD_SECONDS = 6 * 3600
#: The largest lead accepted: 7 days (an urgent update's idle wait is shorter than that).
MAX_STAGING_LEAD_SECONDS = 7 * 86400
#: The update types prepared ahead of their install time.
STAGED_AHEAD_TYPES = frozenset({UpdateType.SCHEDULED, UpdateType.URGENT})


@dataclass(frozen=True)
class StagingDecision:
    """Whether to stage an update now, ahead of its install time.

    Attributes:
        stage_now: download, verify and stage it now (without installing).
        starts_at: the instant (aware UTC) from which it is staged ahead
            (``install_at - lead`` for a scheduled update, ``now`` for an
            urgent one); ``None`` when it never is (instant update, lead 0).
        reason: one line for the log.
    """

    stage_now: bool
    starts_at: datetime | None
    reason: str


def check_staging_lead(seconds: float) -> float:
    """Return ``seconds`` if it is a staging lead: finite, 0 to :data:`MAX_STAGING_LEAD_SECONDS`.

    Raises:
        ScheduleError: (a ``ValueError``) anything else; the message names the range.
    """
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or not 0 <= seconds <= MAX_STAGING_LEAD_SECONDS
    ):
        raise ScheduleError(
            f"staging lead must be 0 to {MAX_STAGING_LEAD_SECONDS} seconds "
            f"(0: stage at install time), got {seconds!r}"
        )
    return float(seconds)


def decide_staging(
    update_type: UpdateType, *, now: datetime, install_at: datetime, lead_seconds: float
) -> StagingDecision:
    """Whether the agent stages an update at ``now`` that may not install yet.

    Called only when :func:`javia_core.scheduling.decide_install` said "not
    now" (an update that installs now is staged on the way, as always).

    Args:
        update_type: the offer's type as the device follows it (bounded by
            its signed type, :mod:`javia_agent.offers`).
        now: the server's clock as the agent knows it (aware).
        install_at: the offer's install time (aware): the device's slot in
            the window (an urgent update's deadline, which does not matter).
        lead_seconds: the agent's ``staging_lead_seconds`` (0 to 7 days).

    Returns:
        The decision; ``starts_at`` is the agent's wake-up when it is later.

    Raises:
        ScheduleError: a naive datetime or a lead out of range.
    """
    now = check_aware("now", now).astimezone(UTC)
    install_at = check_aware("install_at", install_at).astimezone(UTC)
    lead = check_staging_lead(lead_seconds)
    kind = UpdateType(update_type)
    if kind not in STAGED_AHEAD_TYPES:
        return StagingDecision(False, None, f"{kind} updates are never staged ahead")
    if lead == 0:
        return StagingDecision(False, None, "staging lead is 0: staged at install time")
    if kind is UpdateType.URGENT:
        # Its idle moment may come at any time before the deadline: staged at once.
        return StagingDecision(True, now, "staging ahead of the idle moment")
    starts = install_at - timedelta(seconds=lead)
    if now >= starts:
        return StagingDecision(
            True, starts, f"staging ahead (lead {describe_duration(lead_seconds)})"
        )
    wait = (starts - now).total_seconds()
    return StagingDecision(False, starts, f"staged ahead in {describe_duration(wait)}")
