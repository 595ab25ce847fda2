"""Stage a scheduled or urgent update ahead of its install time (docs/agent.md, "Staged ahead").

The agent's loop asks :func:`prepare_if_due` about an offer that may not
install yet. The rule is :func:`javia_core.staging_lead.decide_staging`
(pure): from ``install_at - staging_lead_seconds`` on, the update is
downloaded, verified and staged (:meth:`Installer.prepare`) so that only
stop → switch → start → health is left for the window or the idle moment.

While the update's rollout is paused the server sends no directive but names
the update ``held`` (:class:`~javia_core.models.HeldUpdate`): the agent keeps
the staged release (or the download it retries) and installs nothing of it
(:func:`held_by_pause`); a resume offers it again and it goes on from there.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from javia_agent.state import PRE_SWITCH_STATES, UpdateRecord, UpdateSource
from javia_core.models import HeldUpdate, InstallDirective
from javia_core.staging_lead import decide_staging

if TYPE_CHECKING:
    from javia_agent.installer import Installer, InstallOutcome

__all__ = ["held_by_pause", "prepare_if_due"]

logger = logging.getLogger(__name__)


def prepare_if_due(
    installer: Installer, directive: InstallDirective, *, now: datetime, lead_seconds: float
) -> tuple[InstallOutcome | None, datetime | None]:
    """Stage ``directive``'s update now if its lead has begun.

    Args:
        installer: stages it (:meth:`Installer.prepare`; an update staged
            already is left as it is).
        directive: the offer as the device follows it (bounded by its signed
            type), which :func:`javia_core.scheduling.decide_install` said
            may not install now.
        now: the server's clock as the agent knows it (aware UTC).
        lead_seconds: the agent's ``staging_lead_seconds``.

    Returns:
        (the outcome of staging, or ``None`` when not due or staged already; the instant staging
        is due when it is later than ``now``, else ``None``: the agent's wake-up).

    Raises:
        StateError: as :meth:`Installer.install`.
    """
    staging = decide_staging(
        directive.update_type, now=now, install_at=directive.install_at, lead_seconds=lead_seconds
    )
    if not staging.stage_now:
        later = (
            staging.starts_at if staging.starts_at is not None and staging.starts_at > now else None
        )
        return None, later
    if installer.is_staged(directive):
        return None, None
    logger.info("update %s (%s): %s", directive.version, directive.update_id, staging.reason)
    return installer.prepare(directive), None


def held_by_pause(update: UpdateRecord | None, held: HeldUpdate | None) -> bool:
    """Whether the heartbeat's ``held`` names the update the device holds before its switch.

    Then its rollout is paused (docs/rollouts.md, "Device statuses"): the
    staged release or the download stays, nothing is installed. Any other
    answer without a directive (no ``held``, or ``held`` naming another
    update or version) withdraws the update and the agent deletes its work.

    Args:
        update: the saved update, if any.
        held: the heartbeat answer's ``held`` (validated by the client).
    """
    return (
        update is not None
        and held is not None
        and update.source == UpdateSource.SERVER
        and update.state in PRE_SWITCH_STATES
        and update.update_id == held.update_id
        and update.version == str(held.version)
    )
