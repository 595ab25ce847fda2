"""REPORTING, and the edges that end an update: fail, server fault, abandon, rolled back, clear.

The step queues the final status report (the server accepts repeats, so
recovery simply queues it again); the :attr:`~javia_agent.flow.Edge.CLEAR`
edge then saves the device idle. The other functions here are the edges of
:data:`javia_agent.flow.FLOW` that end an update before or after the switch.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from javia_agent import failure_details
from javia_agent.errors import StateError
from javia_agent.flow import Event
from javia_agent.state import PRE_SWITCH_STATES, UpdateSource, UpdateState
from javia_agent.steps.common import Run, clip
from javia_core.models import UpdateStatus

if TYPE_CHECKING:
    from javia_agent.installer import Installer

__all__ = ["abandon", "clear", "fail", "finish", "run", "server_fault"]

logger = logging.getLogger(__name__)


def run(installer: Installer, run: Run) -> Event:
    """Queue the final report (server updates only)."""
    record = run.record
    status = record.final_status or UpdateStatus.FAILED
    installer.report(
        record.update_id if record.source == UpdateSource.SERVER else None,
        status,
        record.error,
        failure=failure_details.stored(record.failure),
    )
    return Event.SUCCESS


def clear(installer: Installer, run: Run) -> None:
    """The CLEAR edge: the update is over; the outcome follows its final status."""
    from javia_agent.installer import InstallOutcome, InstallResult

    record = run.record
    status = record.final_status or UpdateStatus.FAILED
    installer.persist(run, run.state.model_copy(update={"update": None}))
    result = {
        UpdateStatus.COMPLETED: InstallResult.COMPLETED,
        UpdateStatus.ROLLED_BACK: InstallResult.ROLLED_BACK,
    }.get(status, InstallResult.FAILED)
    run.outcome = InstallOutcome(result, record.version, record.error)


def fail(installer: Installer, run: Run, *, blacklist: bool = True) -> None:
    """The FAIL edges: a pre-switch failure; the running release was never touched.

    Args:
        installer: the installer.
        run: the update; ``run.reason`` is reported as the failure's message.
        blacklist: add the version to ``failed_versions`` (never offered
            again); False when the device's configuration was at fault.
    """
    record = run.record
    reason = run.reason or "failed"
    logger.error("update %s failed: %s", record.version, reason)
    installer.releases.discard(record.version)
    installer.releases.remove_download(record)
    finish(installer, run, UpdateStatus.FAILED, reason, blacklist=blacklist)


def finish(
    installer: Installer, run: Run, status: UpdateStatus, reason: str, *, blacklist: bool = True
) -> None:
    """Save REPORTING with the final status (and the version marked failed, if asked).

    A ``failed`` or ``rolled_back`` status carries its structured failure: the
    one saved when the rollback began, else built now
    (:func:`javia_agent.failure_details.build`).
    """
    record = run.record
    failure = record.failure
    if status in (UpdateStatus.FAILED, UpdateStatus.ROLLED_BACK) and failure is None:
        failure = failure_details.build(installer, run, reason).model_dump(mode="json")
    failed = list(run.state.failed_versions)
    if blacklist and record.source == UpdateSource.SERVER and record.version not in failed:
        failed.append(record.version)
    installer.persist(
        run,
        run.state.model_copy(
            update={
                "failed_versions": failed,
                "update": record.model_copy(
                    update={
                        "state": UpdateState.REPORTING,
                        "final_status": status,
                        "error": clip(reason),
                        "failure": failure,
                    }
                ),
            }
        ),
    )


def server_fault(installer: Installer, run: Run) -> None:
    """The SERVER_FAULT edge: drop what did not verify, report it, retry later.

    Only a package whose signature verified may mark a version failed
    (DESIGN.md section 10): junk named ``v2.0.0`` must never make the real,
    signed ``v2.0.0`` be skipped. The download is deleted (so the next try
    fetches it afresh), the update record dropped, and a ``downloading``
    report carries the reason to the server, whose row stays open.
    """
    from javia_agent.installer import InstallOutcome, InstallResult

    record = run.record
    version, update_id = record.version, record.update_id
    message = (
        f"server fault: {run.reason} ({version} is not marked failed on the device; "
        "it is tried again later)"
    )
    logger.error("update %s (%s): %s", version, update_id, message)
    abandon(installer, run, "its download did not verify")
    installer.report(update_id, UpdateStatus.DOWNLOADING, message)
    run.outcome = InstallOutcome(InstallResult.SERVER_FAULT, version, clip(message))


def abandon(installer: Installer, run: Run, reason: str) -> None:
    """The ABANDON edge: drop a pre-switch update without a report (the server moved on).

    Raises:
        StateError: the update is past the switch: it must converge first.
    """
    from javia_agent.installer import InstallOutcome, InstallResult

    record = run.record
    if record.state not in PRE_SWITCH_STATES:
        raise StateError(
            f"update {record.version} is in state {record.state}: it must finish before another starts"
        )
    logger.info("abandoning update %s: %s", record.version, reason)
    installer.releases.discard(record.version)
    installer.releases.remove_download(record)
    installer.persist(run, run.state.model_copy(update={"update": None}))
    run.outcome = InstallOutcome(InstallResult.ABANDONED, record.version, reason)
