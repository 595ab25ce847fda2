"""HEALTH_CHECK: the new release must stay active and pass the optional health command.

A release is "good" only after this (RAUC's good/bad slots, STYLE.md): the
service must stay active for ``health_seconds``, then the health command, if
configured, must exit 0 with the service still active.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from javia_agent.errors import InstallError
from javia_agent.failure_details import FailureEvidence, evidence_of_error, split_exit_status
from javia_agent.flow import Event
from javia_agent.steps.common import Run, reason_of, run_in_release
from javia_core.errors import JaviaError
from javia_core.failures import FailureClass

if TYPE_CHECKING:
    from javia_agent.installer import Installer

__all__ = ["run"]

logger = logging.getLogger(__name__)


def run(installer: Installer, run: Run) -> Event:
    """``SUCCESS`` if the new release is healthy, else ``FAILURE`` with the reason."""
    try:
        problem = _problem(installer, run)
    except (JaviaError, OSError) as error:
        problem = reason_of(error)
        run.evidence = FailureEvidence(FailureClass.HEALTH_CHECK, with_application_output=True)
    if problem is not None:
        run.reason = problem
        return Event.FAILURE
    return Event.SUCCESS


def _problem(installer: Installer, run: Run) -> str | None:
    """None if the running new release is healthy, else the reason it is not (evidence on ``run``)."""
    version = run.record.version
    clock, service = installer.clock, installer.service
    seconds = installer.health_seconds
    started = clock.monotonic()
    deadline = started + seconds
    while True:
        installer.keepalive()
        if not service.is_active():
            elapsed = clock.monotonic() - started
            run.evidence = _crash_evidence(installer)
            code, signal = run.evidence.exit_code, run.evidence.signal
            how = f", exit code {code}" if code is not None else ""
            how += f", killed by signal {signal}" if signal is not None else ""
            return (
                f"{version} stopped running {elapsed:.1f} s into its {seconds:g} s health "
                f"check{how}"
            )
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
                kind="health",
            )
        except InstallError as error:
            run.evidence = evidence_of_error(error, "health_check")
            return f"{version} is unhealthy: {error}"
        if not service.is_active():
            run.evidence = _crash_evidence(installer)
            return f"{version} stopped running during its health command"
    logger.info("%s passed its health check (%g s)", version, seconds)
    return None


def _crash_evidence(installer: Installer) -> FailureEvidence:
    """The new release stopped: its exit status, if the service knows it."""
    status = None
    sample = getattr(installer.service, "sample", None)
    if sample is not None:
        try:
            status = sample().exit_status
        except (JaviaError, OSError):
            status = None
    code, signal = split_exit_status(status)
    return FailureEvidence(
        FailureClass.CRASH_AFTER_START, code, signal, with_application_output=True
    )
