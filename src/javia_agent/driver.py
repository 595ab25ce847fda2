"""The driver: run the saved state's step, follow the table's row, save, repeat.

load state → the step for the state (:data:`STEPS`) → it returns an
:class:`~javia_agent.flow.Event` → :data:`~javia_agent.flow.FLOW` gives the
row → the row's edge runs and saves the next state → repeat, until the
device is idle again or a row says to wait.

Recovery after a crash uses the same table: :data:`RECOVERY_PROBES` looks at
what the saved state left on disk (is ``current`` already the new release?)
and returns the event the table then follows; the probe per state is the one
:data:`javia_agent.state.RECOVERY` names.

A save that trips the loop breaker (:class:`~javia_agent.errors.CrashLoopError`)
wrote nothing: the device is still in the state it was in, and that state
gets :attr:`Event.LOOP_DETECTED`, whose row the table holds like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from javia_agent import failure_details
from javia_agent.errors import CrashLoopError
from javia_agent.flow import FLOW, Edge, Event, Row
from javia_agent.state import PRE_SWITCH_STATES, RECOVERY, Recovery, UpdateSource, UpdateState
from javia_agent.steps import (
    commit,
    download,
    health,
    report,
    rollback,
    stage,
    staged,
    switch,
    verify,
)
from javia_agent.steps.common import Run, clip
from javia_core.errors import JaviaError
from javia_core.models import UpdateStatus

if TYPE_CHECKING:
    from javia_agent.installer import Installer, InstallOutcome

__all__ = ["RECOVERY_PROBES", "STEPS", "drive", "recover", "start"]

logger = logging.getLogger(__name__)

Step = Callable[["Installer", Run], Event]
#: A recovery probe: the event for an update found in its state at start-up
#: (``None``: nothing to do).
Probe = Callable[["Installer", Run], "Event | None"]

_S = UpdateState

#: The step that runs in each state.
STEPS: Mapping[UpdateState, Step] = MappingProxyType(
    {
        _S.DOWNLOADING: download.run,
        _S.VERIFYING: verify.run,
        _S.STAGING: stage.run,
        _S.STAGED: staged.run,
        _S.SWITCHING: switch.run,
        _S.HEALTH_CHECK: health.run,
        _S.COMMITTING: commit.run,
        _S.ROLLING_BACK: rollback.run,
        _S.REPORTING: report.run,
    }
)
if set(STEPS) != set(UpdateState) - {_S.IDLE}:  # pragma: no cover - caught by any import
    raise RuntimeError("every update state but idle needs a step")


def drive(installer: Installer, run: Run) -> InstallOutcome:
    """Run steps and follow the table from ``run``'s saved state until the drive stops."""
    while True:
        state = run.record.state
        event = STEPS[state](installer, run)
        outcome = _follow(installer, run, state, event)
        if outcome is not None:
            return outcome


def start(installer: Installer, run: Run, state: UpdateState, event: Event) -> InstallOutcome:
    """Follow the row for ``event`` posted to ``state`` (no step ran), then drive on."""
    outcome = _follow(installer, run, state, event)
    return outcome if outcome is not None else drive(installer, run)


def _follow(
    installer: Installer, run: Run, state: UpdateState, event: Event
) -> InstallOutcome | None:
    """Take the row for (``state``, ``event``); the outcome if the drive stops there."""
    from javia_agent.installer import InstallOutcome, InstallResult

    row = FLOW.get((state, event))
    if row is None:  # pragma: no cover - a step returned an event its state has no row for
        raise RuntimeError(f"no flow row for event {event} in state {state}")
    if row.edge == Edge.WAIT:
        return InstallOutcome(
            InstallResult.RETRY_LATER,
            run.record.version,
            run.reason,
            retry_after_seconds=run.retry_after_seconds,
            wait_seconds=run.wait_seconds,
        )
    if row.edge == Edge.HOLD:
        return InstallOutcome(InstallResult.STAGED, run.record.version, run.reason)
    if row.edge == Edge.AGAIN:
        return None
    try:
        _take(installer, run, row)
    except CrashLoopError as error:
        if event == Event.LOOP_DETECTED:  # pragma: no cover - the table's loop rows never trip
            raise
        run.reason = f"{rollback.reason(run)}; {error}" if state == _S.ROLLING_BACK else str(error)
        return _follow(installer, run, state, Event.LOOP_DETECTED)
    if run.state.update is None:
        return run.outcome
    if run.record.state != row.next:  # pragma: no cover - an edge that missed its target
        raise RuntimeError(f"edge {row.edge} left {run.record.state}, not {row.next}")
    return None


def _take(installer: Installer, run: Run, row: Row) -> None:
    """Do what ``row``'s edge says; every edge ends by saving ``row.next``."""
    edge = row.edge
    if edge == Edge.ENTER:
        if row.next == _S.ROLLING_BACK:
            why = rollback.reason(run)
            logger.warning("rolling back %s: %s", run.record.version, why)
            failure = failure_details.build(installer, run, why).model_dump(mode="json")
            installer.save(run, row.next, error=clip(why), failure=failure)
        else:
            installer.save(run, row.next)
    elif edge in (Edge.FAIL, Edge.FAIL_UNMARKED):
        report.fail(installer, run, blacklist=edge == Edge.FAIL)
    elif edge == Edge.SERVER_FAULT:
        report.server_fault(installer, run)
    elif edge == Edge.ABANDON:
        report.abandon(installer, run, run.reason or "abandoned")
    elif edge == Edge.COMPLETE:
        commit.complete(installer, run)
    elif edge == Edge.ROLLED_BACK:
        report.finish(installer, run, UpdateStatus.ROLLED_BACK, rollback.reason(run))
    elif edge == Edge.GIVE_UP_ROLLBACK:
        rollback.give_up(installer, run, run.reason or rollback.reason(run))
    elif edge == Edge.CLEAR:
        report.clear(installer, run)
    else:  # pragma: no cover - every edge is handled above
        raise RuntimeError(f"unknown edge {edge}")


# -- recovery -------------------------------------------------------------------------


def recover(installer: Installer) -> InstallOutcome | None:
    """Continue or undo the update the state file names, after a crash or power loss.

    Debris is removed first (:meth:`Releases.remove_debris`). The probe
    :data:`javia_agent.state.RECOVERY` names for the saved state returns an
    event, and the table takes it from there.

    Returns:
        The outcome of a recovered post-switch update, else ``None`` (a
        pre-switch update waits for the server's next install directive).
    """
    state = installer.store.load()
    keep = None
    if state.update is not None and state.update.source == UpdateSource.SERVER:
        keep = state.update.update_id
    installer.releases.remove_debris(keep_download=keep)
    record = state.update
    if record is None:
        return None
    action = RECOVERY[record.state]
    run = Run(state=state)
    logger.info("unfinished update %s in state %s: %s", record.version, record.state, action)
    event = RECOVERY_PROBES[action](installer, run)
    if event is None:
        return None
    outcome = start(installer, run, record.state, event)
    return None if record.state in PRE_SWITCH_STATES else outcome


def _pre_switch_probe(installer: Installer, run: Run, what: str) -> Event:
    record = run.record
    if record.source == UpdateSource.DIRECTORY:
        # Nobody will tell the agent to go on with a package directory.
        run.reason = "interrupted; run javia agent install again"
        return Event.ABANDON
    logger.info("%s of %s (update %s) %s", what, record.version, record.update_id, _WHEN_TOLD)
    return Event.RESTARTED


_WHEN_TOLD = "goes on when the server next says to install"


def _probe_nothing(installer: Installer, run: Run) -> Event | None:
    return None


def _probe_download(installer: Installer, run: Run) -> Event | None:
    """RESUME_DOWNLOAD: the ``.partial`` payload was kept by the clean-up; resume when told."""
    return _pre_switch_probe(installer, run, "the download")


def _probe_verification(installer: Installer, run: Run) -> Event | None:
    """REVERIFY: the payload is verified again from its first byte when next told to install."""
    return _pre_switch_probe(installer, run, "verification")


def _probe_staging(installer: Installer, run: Run) -> Event | None:
    """RESTAGE: remove the half-written release; staging starts afresh when next told."""
    event = _pre_switch_probe(installer, run, "staging")
    if event == Event.RESTARTED:
        installer.releases.discard(run.record.version)
    return event


def _probe_staged(installer: Installer, run: Run) -> Event | None:
    """KEEP_STAGED: keep the staged release; it is checked against the manifest before use."""
    return _pre_switch_probe(installer, run, "the staged release")


def _start_again(installer: Installer, run: Run) -> bool:
    """Start the new release again (a no-op if it runs; needed after a reboot in command mode)."""
    try:
        installer.service.start()
    except JaviaError as error:
        run.reason = f"{run.record.version} did not start again: {error}"
        return False
    return True


def _probe_switch(installer: Installer, run: Run) -> Event | None:
    """CHECK_CURRENT: ``current`` already moved: the switch is done (health check); else redo it."""
    if installer.current_release() != run.record.version:
        return Event.RESTARTED
    return Event.SUCCESS if _start_again(installer, run) else Event.FAILURE


def _probe_health_check(installer: Installer, run: Run) -> Event | None:
    """RECHECK_HEALTH: check the new release again, or roll back if it is not current."""
    if installer.current_release() != run.record.version:
        run.reason = "the agent restarted during the health check"
        return Event.FAILURE
    return Event.RESTARTED if _start_again(installer, run) else Event.FAILURE


def _probe_restarted(installer: Installer, run: Run) -> Event | None:
    """COMMIT, ROLL_BACK, REPORT: idempotent steps, simply run again."""
    return Event.RESTARTED


#: The probe of each recovery action (see :func:`recover`).
RECOVERY_PROBES: dict[Recovery, Probe] = {
    Recovery.NOTHING: _probe_nothing,
    Recovery.RESUME_DOWNLOAD: _probe_download,
    Recovery.REVERIFY: _probe_verification,
    Recovery.RESTAGE: _probe_staging,
    Recovery.KEEP_STAGED: _probe_staged,
    Recovery.CHECK_CURRENT: _probe_switch,
    Recovery.RECHECK_HEALTH: _probe_health_check,
    Recovery.COMMIT: _probe_restarted,
    Recovery.ROLL_BACK: _probe_restarted,
    Recovery.REPORT: _probe_restarted,
}
if set(RECOVERY_PROBES) != set(Recovery):  # pragma: no cover - caught by any import
    raise RuntimeError("every recovery action needs a probe in RECOVERY_PROBES")
