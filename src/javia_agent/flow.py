"""The update flow as one table: (state, event) → edge → next state (Mender's daemon, STYLE.md).

Every move an update makes is a row of :data:`FLOW`. A step (one module under
:mod:`javia_agent.steps`) runs in the state it is named after and returns one
:class:`Event`; the driver (:mod:`javia_agent.driver`) looks the pair up here,
does what the row's :class:`Edge` says and saves the next state before its
step runs. After a crash or power loss the driver finds the saved state,
asks that state's recovery probe what it sees on disk (an event, usually
:attr:`Event.RESTARTED`) and follows the same table: there is no other path.

The loop breaker is rows too: when saving the next state trips the save cap
(:class:`~javia_agent.errors.CrashLoopError`), nothing was written, the
device is still in the state it was in, and that state gets
:attr:`Event.LOOP_DETECTED`.

Pure: no I/O. ``docs/agent.md`` holds :func:`markdown_table` verbatim (a test
checks it), so the newcomer's "what happens if power fails after the switch?"
has one answer, in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from javia_agent.state import TRANSITIONS, UpdateState

__all__ = ["FLOW", "Edge", "Event", "Row", "markdown_table"]


class Event(StrEnum):
    """What a step (or a recovery probe) says happened."""

    SUCCESS = "success"  # the step did its work
    FAILURE = "failure"  # the package or its release failed (the version is marked failed)
    GIVE_UP = "give_up"  # failed, not the package's fault (config, disk, payload never came)
    RETRY_LATER = "retry_later"  # network trouble, shutdown, dpkg lock: try again next cycle
    ABANDON = "abandon"  # the server withdrew the update, or nobody will go on with it
    SERVER_FAULT = "server_fault"  # the server's bytes did not verify: drop them, retry later
    LOOP_DETECTED = "loop_detected"  # saving the next state tripped the save cap
    RESTARTED = "restarted"  # the agent started and found the update in this state
    HOLD = "hold"  # staged ahead of the window: the install time has not come
    STALE = "stale"  # a staged release no longer matches its signed manifest


class Edge(StrEnum):
    """What the driver does on a row, before the next state's step runs."""

    ENTER = "enter"  # save the next state (with the reason, if any)
    WAIT = "wait"  # save nothing, stop: the server's next install directive resumes it
    HOLD = "hold"  # save nothing, stop: staged; the directive at install time goes on
    AGAIN = "again"  # save nothing, run the same state's step again (it is already saved)
    FAIL = "fail"  # remove the new release and download; save REPORTING failed, marked failed
    FAIL_UNMARKED = "fail_unmarked"  # the same, but the version may be offered again
    SERVER_FAULT = "server_fault"  # drop the update and its download; report it downloading
    ABANDON = "abandon"  # drop the update and its download, no report
    COMPLETE = "complete"  # save REPORTING completed with current_version (point of no return)
    ROLLED_BACK = "rolled_back"  # save REPORTING rolled_back, marked failed
    GIVE_UP_ROLLBACK = "give_up_rollback"  # save REPORTING failed + attention, try once more
    CLEAR = "clear"  # the final report is queued: save no update (idle)


@dataclass(frozen=True)
class Row:
    """One edge of the flow: what to do and where it leads."""

    edge: Edge
    next: UpdateState


_S, _E = UpdateState, Event


def _pre_switch(state: UpdateState, success: UpdateState, loop: Edge) -> dict[Event, Row]:
    return {
        _E.SUCCESS: Row(Edge.ENTER, success),
        _E.FAILURE: Row(Edge.FAIL, _S.REPORTING),
        _E.GIVE_UP: Row(Edge.FAIL_UNMARKED, _S.REPORTING),
        _E.RETRY_LATER: Row(Edge.WAIT, state),
        _E.ABANDON: Row(Edge.ABANDON, _S.IDLE),
        _E.SERVER_FAULT: Row(Edge.SERVER_FAULT, _S.IDLE),
        _E.LOOP_DETECTED: Row(loop, _S.REPORTING),
        _E.RESTARTED: Row(Edge.WAIT, state),
    }


_ROWS: dict[UpdateState, dict[Event, Row]] = {
    # Before the switch the running release is untouched: every failure is a report.
    _S.DOWNLOADING: _pre_switch(_S.DOWNLOADING, _S.VERIFYING, Edge.FAIL_UNMARKED),
    _S.VERIFYING: _pre_switch(_S.VERIFYING, _S.STAGING, Edge.FAIL_UNMARKED),
    # The payload verified at VERIFYING: a loop while staging marks the version failed.
    _S.STAGING: _pre_switch(_S.STAGING, _S.STAGED, Edge.FAIL),
    # Staged (ahead of the window, or just now): apt's install and the setup
    # command, then the switch. A release changed on disk is made again.
    _S.STAGED: {
        **_pre_switch(_S.STAGED, _S.SWITCHING, Edge.FAIL),
        _E.HOLD: Row(Edge.HOLD, _S.STAGED),
        _E.STALE: Row(Edge.ENTER, _S.VERIFYING),
    },
    # From the switch on, every failure converges on a good release: roll back.
    _S.SWITCHING: {
        _E.SUCCESS: Row(Edge.ENTER, _S.HEALTH_CHECK),
        _E.FAILURE: Row(Edge.ENTER, _S.ROLLING_BACK),
        _E.LOOP_DETECTED: Row(Edge.ENTER, _S.ROLLING_BACK),
        _E.RESTARTED: Row(Edge.ENTER, _S.SWITCHING),  # `current` still old: switch again
    },
    _S.HEALTH_CHECK: {
        _E.SUCCESS: Row(Edge.ENTER, _S.COMMITTING),
        _E.FAILURE: Row(Edge.ENTER, _S.ROLLING_BACK),
        _E.LOOP_DETECTED: Row(Edge.ENTER, _S.ROLLING_BACK),
        _E.RESTARTED: Row(Edge.ENTER, _S.HEALTH_CHECK),  # `current` new: check it again
    },
    _S.COMMITTING: {
        _E.SUCCESS: Row(Edge.COMPLETE, _S.REPORTING),
        _E.LOOP_DETECTED: Row(Edge.ENTER, _S.ROLLING_BACK),
        _E.RESTARTED: Row(Edge.ENTER, _S.COMMITTING),  # commit is idempotent: again
    },
    _S.ROLLING_BACK: {
        _E.SUCCESS: Row(Edge.ROLLED_BACK, _S.REPORTING),
        _E.LOOP_DETECTED: Row(Edge.GIVE_UP_ROLLBACK, _S.REPORTING),
        _E.RESTARTED: Row(Edge.ENTER, _S.ROLLING_BACK),  # rollback is idempotent: again
    },
    _S.REPORTING: {
        _E.SUCCESS: Row(Edge.CLEAR, _S.IDLE),
        _E.RESTARTED: Row(Edge.AGAIN, _S.REPORTING),  # queue the report again
    },
}

#: The whole update flow: (state, event) → row. A pair not in it is a bug.
FLOW: Mapping[tuple[UpdateState, Event], Row] = MappingProxyType(
    {(state, event): row for state, rows in _ROWS.items() for event, row in rows.items()}
)

for (_state, _event), _row in FLOW.items():  # pragma: no cover - caught by any import
    if _row.next != _state and _row.next not in TRANSITIONS[_state]:
        raise RuntimeError(f"flow row {_state} --{_event}--> {_row.next} is not a transition")
if {state for state, _ in FLOW} != set(UpdateState) - {_S.IDLE}:  # pragma: no cover
    raise RuntimeError("every update state but idle needs rows in FLOW")


def markdown_table() -> str:
    """:data:`FLOW` as a Markdown table (``docs/agent.md`` holds it verbatim)."""
    lines = ["| state | event | edge | next state |", "|---|---|---|---|"]
    for (state, event), row in FLOW.items():
        lines.append(f"| `{state}` | `{event}` | `{row.edge}` | `{row.next}` |")
    return "\n".join(lines) + "\n"
