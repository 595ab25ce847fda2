"""HEALTH_CHECK: the new release must stay active and pass the optional health command.

A release is "good" only after this (RAUC's good/bad slots, STYLE.md): the
service must stay active for ``health_seconds``, then the health command, if
configured, must exit 0 with the service still active.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from javia_agent.errors import InstallError
from javia_agent.flow import Event
from javia_agent.steps.common import Run, reason_of, run_in_release
from javia_core.errors import JaviaError

if TYPE_CHECKING:
    from javia_agent.installer import Installer

__all__ = ["run"]

logger = logging.getLogger(__name__)


def run(installer: Installer, run: Run) -> Event:
    """``SUCCESS`` if the new release is healthy, else ``FAILURE`` with the reason."""
    try:
        problem = _problem(installer, run.record.version)
    except (JaviaError, OSError) as error:
        problem = reason_of(error)
    if problem is not None:
        run.reason = problem
        return Event.FAILURE
    return Event.SUCCESS


def _problem(installer: Installer, version: str) -> str | None:
    """None if the running new release is healthy, else the reason it is not."""
    clock, service = installer.clock, installer.service
    seconds = installer.health_seconds
    started = clock.monotonic()
    deadline = started + seconds
    while True:
        installer.keepalive()
        if not service.is_active():
            elapsed = clock.monotonic() - started
            return f"{version} stopped running {elapsed:.1f} s into its {seconds:g} s health check"
        remaining = deadline - clock.monotonic()
        if remaining <= 0:
            break
        clock.sleep(min(installer.health_poll_seconds, remaining))
    if installer.health_command:
        release = installer.releases.directory(version)
        try:
            run_in_release(
                installer,
                installer.health_command,
                what="the health command",
                release=release,
                timeout=installer.health_command_timeout_seconds,
            )
        except InstallError as error:
            return f"{version} is unhealthy: {error}"
        if not service.is_active():
            return f"{version} stopped running during its health command"
    logger.info("%s passed its health check (%g s)", version, seconds)
    return None
