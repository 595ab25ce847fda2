"""A transient fault before the switch: report ``retrying`` and back off, or give up at the deadline.

Called by :func:`javia_agent.steps.common.pre_switch` for an error
:func:`javia_agent.retry_policy.transient_reason` calls transient. The update
stays in its state (the running release untouched); the record keeps the
tries, the first failure, the deadline and when the next try is due, so an
agent restart neither forgets the deadline nor retries early. At the deadline
the update ends ``failed`` with the last reason, not marked failed (the
``give_up`` row of the flow table).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from javia_agent.flow import Event
from javia_agent.steps.common import Run, clip
from javia_core.models import UpdateStatus

if TYPE_CHECKING:
    from javia_agent.installer import Installer

__all__ = ["retry_or_give_up"]

logger = logging.getLogger(__name__)


def retry_or_give_up(installer: Installer, run: Run, reason: str) -> Event:
    """``RETRY_LATER`` after saving the next try and reporting ``retrying``; ``GIVE_UP`` past the deadline."""
    record = run.record
    now = installer.clock.wall()
    schedule = installer.retry_schedule
    since = record.retrying_since or now
    deadline = record.retry_deadline
    if deadline is None:
        directive = run.directive
        deadline = schedule.deadline(
            since,
            update_type=None if directive is None else directive.update_type,
            window_end=None if directive is None else directive.window_end,
        )
    tries = record.transient_failures + 1
    if now >= deadline:
        run.reason = (
            f"gave up retrying at the deadline {deadline:%Y-%m-%d %H:%M:%S} UTC after "
            f"{tries} tries: {reason}"
        )
        logger.error("update %s: %s", record.version, run.reason)
        return Event.GIVE_UP
    delay = schedule.delay_seconds(tries)
    retry_at = min(now + timedelta(seconds=delay), deadline)
    message = (
        f"{reason} (try {tries}; next try in {(retry_at - now).total_seconds():.0f} s; "
        f"gives up at {deadline:%Y-%m-%d %H:%M:%S} UTC)"
    )
    logger.warning("update %s: retrying: %s", record.version, message)
    installer.save(
        run,
        record.state,
        transient_failures=tries,
        retrying_since=since,
        retry_deadline=deadline,
        retry_at=retry_at,
        error=clip(reason),
    )
    installer.report(record.update_id, UpdateStatus.RETRYING, message)
    run.reason = reason
    run.wait_seconds = (retry_at - now).total_seconds()
    return Event.RETRY_LATER
