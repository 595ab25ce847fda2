"""SWITCHING: stop → point ``current`` at the new release → start; the only downtime.

The service is stopped only now, after the release is staged, and the link
moves with one atomic rename (:meth:`~javia_agent.releases.Releases.point_current`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from javia_agent.failure_details import FailureEvidence
from javia_agent.flow import Event
from javia_agent.steps.common import Run, reason_of
from javia_core.errors import JaviaError
from javia_core.failures import FailureClass

if TYPE_CHECKING:
    from javia_agent.installer import Installer

__all__ = ["run"]

logger = logging.getLogger(__name__)


def run(installer: Installer, run: Run) -> Event:
    """Switch to the new release; ``FAILURE`` (roll back) if any part fails."""
    version = run.record.version
    try:
        _switch(installer, version)
    except (JaviaError, OSError) as error:
        run.reason = f"switching to {version} failed: {reason_of(error)}"
        run.evidence = FailureEvidence(FailureClass.START, with_application_output=True)
        return Event.FAILURE
    return Event.SUCCESS


def _switch(installer: Installer, version: str) -> None:
    clock = installer.clock
    logger.info("switching to %s: stopping the application", version)
    began = clock.monotonic()
    with installer.keepalive_during():
        installer.service.stop()
    stopped = clock.monotonic()
    installer.checkpoint("switching.stopped")
    installer.releases.point_current(version)
    installer.checkpoint("switching.linked")
    linked = clock.monotonic()
    logger.info("current -> releases/%s; starting the application", version)
    with installer.keepalive_during():
        installer.service.start()
    started = clock.monotonic()
    logger.info(
        "application down for %.3f s (stop %.3f s, switch %.3f s, start %.3f s)",
        started - began,
        stopped - began,
        linked - stopped,
        started - linked,
    )
