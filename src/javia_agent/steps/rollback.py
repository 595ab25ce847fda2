"""ROLLING_BACK: ``current`` back to the previous release, restarted; the new one removed.

Idempotent, so recovery simply runs it again. When the loop breaker stops a
rollback that kept crashing the agent, :func:`give_up` ends the update
honestly (the :attr:`~javia_agent.flow.Edge.GIVE_UP_ROLLBACK` edge).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from javia_agent.flow import Event
from javia_agent.state import UpdateRecord, UpdateSource, UpdateState
from javia_agent.steps.common import Run, clip
from javia_core.errors import JaviaError
from javia_core.models import UpdateStatus

if TYPE_CHECKING:
    from javia_agent.installer import Installer

__all__ = ["give_up", "reason", "run"]

logger = logging.getLogger(__name__)


def reason(run: Run) -> str:
    """Why ``run`` is being rolled back (after a restart: the saved error)."""
    return run.reason or run.record.error or "interrupted while rolling back"


def run(installer: Installer, run: Run) -> Event:
    """Restore the previous release, remove the new one and its download."""
    record = run.record
    why = reason(run)
    problem = restore_previous(installer, record)
    if problem is not None:
        why = f"{why}; {problem}"
    installer.releases.discard(record.version)
    installer.releases.remove_download(record)
    run.reason = why
    return Event.SUCCESS


def restore_previous(installer: Installer, record: UpdateRecord) -> str | None:
    """Stop the application, point ``current`` at the previous release (or at nothing
    without one) and start it; return why restarting it failed, else ``None``."""
    previous = record.previous_version
    service = installer.service
    try:
        service.stop()
    except JaviaError as error:
        logger.error("stopping %s during rollback failed: %s", record.version, error)
    if previous is not None and installer.releases.directory(previous).is_dir():
        installer.releases.point_current(previous)
        try:
            service.start()
        except JaviaError as error:
            logger.error("restarting %s after rollback failed: %s", previous, error)
            return f"restarting {previous} failed too: {error}"
    else:
        installer.releases.point_current(None)
    return None


def give_up(installer: Installer, run: Run, why: str) -> None:
    """The rollback kept crashing the agent until the save cap tripped: end honestly.

    Reporting ``rolled_back`` while the release that failed its health
    check still runs would be a lie, and trying the rollback again and
    again is the loop being broken. So:

    1. the worst case is saved first, durably: the update ends ``failed``
       with the reason "rollback could not complete: ...", and the device
       is marked for attention (:attr:`AgentState.attention`, shown by
       ``javia agent status``, sent as ``attention`` in every heartbeat's
       metadata, cleared when an update commits);
    2. the rollback is then tried exactly once more (a crash here
       restarts into the saved report, never into another attempt);
    3. if ``current`` then points at the previous release and the
       application runs (or, with no previous release, nothing is current
       and nothing runs), the update ends ``rolled_back`` instead and the
       mark is taken back. The failed release is left for the next commit's
       pruning (removing it may be what crashed).
    """
    record = run.record
    previous = record.previous_version
    attention_before = run.state.attention
    message = clip(f"rollback could not complete: {why}") or why
    failed = list(run.state.failed_versions)
    if record.source == UpdateSource.SERVER and record.version not in failed:
        failed.append(record.version)  # its signature verified; it failed its health check
    logger.critical("update %s: %s; trying the rollback once more", record.version, message)
    installer.persist(
        run,
        run.state.model_copy(
            update={
                "failed_versions": failed,
                "attention": message,
                "update": record.model_copy(
                    update={
                        "state": UpdateState.REPORTING,
                        "final_status": UpdateStatus.FAILED,
                        "error": message,
                    }
                ),
            }
        ),
    )
    problem = restore_previous(installer, record)
    installer.releases.remove_download(record)
    current = installer.current_release()
    active = installer.service.is_active()
    back = current == previous and (active if previous is not None else not active)
    if back:
        logger.warning("%s runs again after the crash loop's last rollback", previous or "nothing")
        installer.persist(
            run,
            run.state.model_copy(
                update={
                    "attention": attention_before,
                    "update": run.record.model_copy(
                        update={"final_status": UpdateStatus.ROLLED_BACK, "error": clip(why)}
                    ),
                }
            ),
        )
    else:
        running = f"{current} is current" if current else "no release is current"
        detail = f"{running}, the application {'runs' if active else 'is not running'}"
        message = clip(f"{message} ({detail}{'; ' + problem if problem else ''})") or message
        logger.critical("update %s: %s; the device needs attention", record.version, message)
        installer.persist(
            run,
            run.state.model_copy(
                update={
                    "attention": message,
                    "update": run.record.model_copy(update={"error": message}),
                }
            ),
        )
