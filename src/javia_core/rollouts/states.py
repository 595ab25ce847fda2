"""A rollout's states and the one table of moves between them (docs/rollouts.md, states). Pure.

Like the agent's flow table (``javia_agent.flow``): every (state, event) pair
has exactly one row in :data:`TRANSITIONS`, and :func:`apply_event` does what
the row says; there is no other path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from types import MappingProxyType

from javia_core.models import RolloutState, UpdateType
from javia_core.rollouts.policy import RolloutError, RolloutPolicy, RolloutStateError

__all__ = [
    "TRANSITIONS",
    "Effect",
    "Move",
    "Rollout",
    "RolloutEvent",
    "RolloutState",
    "apply_event",
    "device_may_start",
    "markdown_table",
    "rollout_at_publish",
    "waiting_reason",
]


class RolloutEvent(StrEnum):
    """An operator command (approve, pause, resume, cancel, advance) or an automatic one."""

    APPROVE = "approve"  # operator: start an awaiting rollout, or open a phase that waits
    PAUSE = "pause"  # operator
    RESUME = "resume"  # operator
    CANCEL = "cancel"  # operator (revert cancels the bad rollout too)
    HALT = "halt"  # automatic: halt_decision crossed the threshold
    ADVANCE = "advance"  # the phase gate, or the operator: open the next phase now
    COMPLETE = "complete"  # automatic: the last phase is open and every device finished


class Effect(StrEnum):
    """What an event does to a rollout in a given state."""

    ENTER = "enter"  # move to the row's next state
    NEXT_PHASE = "next_phase"  # stay active, open the next phase (refused at the last)
    APPROVE_PHASE = "approve_phase"  # NEXT_PHASE if the open phase waits for approval, else refused
    STAY = "stay"  # already there: success, nothing changes (idempotent under races)
    REFUSE = "refuse"  # illegal: RolloutStateError with the row's message


@dataclass(frozen=True, slots=True)
class Move:
    """One row of :data:`TRANSITIONS`: the effect, the next state, the operator's line."""

    effect: Effect
    next: RolloutState
    message: str = ""


_R, _V = RolloutState, RolloutEvent
#: States in which an open phase may wait for the operator's approval of the next.
_PHASE_GATED = frozenset({_R.ACTIVE, _R.PAUSED})


def _refuse(state: RolloutState, message: str) -> Move:
    return Move(Effect.REFUSE, state, message)


def _stay(state: RolloutState, message: str) -> Move:
    return Move(Effect.STAY, state, message)


def _enter(next_state: RolloutState) -> Move:
    return Move(Effect.ENTER, next_state)


_ROWS: dict[RolloutState, dict[RolloutEvent, Move]] = {
    _R.AWAITING_APPROVAL: {
        _V.APPROVE: _enter(_R.ACTIVE),
        _V.PAUSE: _refuse(_R.AWAITING_APPROVAL, "has not started: approve it or cancel it"),
        _V.RESUME: _refuse(_R.AWAITING_APPROVAL, "is not paused: it awaits approval"),
        _V.CANCEL: _enter(_R.CANCELLED),
        _V.HALT: _refuse(_R.AWAITING_APPROVAL, "has not started: nothing to halt"),
        _V.ADVANCE: _refuse(_R.AWAITING_APPROVAL, "awaits approval: approve it first"),
        _V.COMPLETE: _refuse(_R.AWAITING_APPROVAL, "has not started"),
    },
    _R.ACTIVE: {
        _V.APPROVE: Move(Effect.APPROVE_PHASE, _R.ACTIVE),
        _V.PAUSE: _enter(_R.PAUSED),
        _V.RESUME: _stay(_R.ACTIVE, "is already active"),
        _V.CANCEL: _enter(_R.CANCELLED),
        _V.HALT: _enter(_R.HALTED),
        _V.ADVANCE: Move(Effect.NEXT_PHASE, _R.ACTIVE),
        _V.COMPLETE: _enter(_R.COMPLETED),
    },
    _R.PAUSED: {
        _V.APPROVE: _refuse(_R.PAUSED, "is paused: resume it first"),
        _V.PAUSE: _stay(_R.PAUSED, "is already paused"),
        _V.RESUME: _enter(_R.ACTIVE),
        _V.CANCEL: _enter(_R.CANCELLED),
        # Installs in flight finish while paused; their failures may still halt it.
        _V.HALT: _enter(_R.HALTED),
        _V.ADVANCE: _refuse(_R.PAUSED, "is paused: resume it first"),
        _V.COMPLETE: _refuse(_R.PAUSED, "is paused: devices have not started"),
    },
    _R.HALTED: {
        _V.APPROVE: _refuse(_R.HALTED, "is halted: revert it or cancel it"),
        _V.PAUSE: _refuse(_R.HALTED, "is halted: it offers nothing already"),
        _V.RESUME: _refuse(_R.HALTED, "is halted: publish a fixed version, revert or cancel it"),
        # The revert cancels the bad rollout, which is usually halted.
        _V.CANCEL: _enter(_R.CANCELLED),
        _V.HALT: _stay(_R.HALTED, "is already halted"),  # the first reason stays
        _V.ADVANCE: _refuse(_R.HALTED, "is halted: revert it or cancel it"),
        _V.COMPLETE: _refuse(_R.HALTED, "is halted"),
    },
    _R.CANCELLED: {
        _V.APPROVE: _refuse(_R.CANCELLED, "is cancelled"),
        _V.PAUSE: _refuse(_R.CANCELLED, "is cancelled"),
        _V.RESUME: _refuse(_R.CANCELLED, "is cancelled: publish it again as a new version"),
        _V.CANCEL: _stay(_R.CANCELLED, "is already cancelled"),
        # A failure reported after the cancel: it offers nothing already.
        _V.HALT: _stay(_R.CANCELLED, "is cancelled: it offers nothing already"),
        _V.ADVANCE: _refuse(_R.CANCELLED, "is cancelled"),
        _V.COMPLETE: _refuse(_R.CANCELLED, "is cancelled"),
    },
    _R.COMPLETED: {
        _V.APPROVE: _refuse(_R.COMPLETED, "is completed: it needs no approval"),
        _V.PAUSE: _refuse(_R.COMPLETED, "is completed: nothing left to pause"),
        _V.RESUME: _refuse(_R.COMPLETED, "is completed: nothing to resume"),
        # Revert cancels a completed bad rollout: late joiners must not get it.
        _V.CANCEL: _enter(_R.CANCELLED),
        # Regressions keep arriving during the last devices' soak.
        _V.HALT: _enter(_R.HALTED),
        _V.ADVANCE: _refuse(_R.COMPLETED, "is completed: every phase is open"),
        _V.COMPLETE: _stay(_R.COMPLETED, "is already completed"),
    },
}

#: Every (state, event) pair and what it does; total: each pair has a row
#: (a test checks it). docs/rollouts.md shows the same table.
TRANSITIONS: Mapping[tuple[RolloutState, RolloutEvent], Move] = MappingProxyType(
    {(state, event): move for state, row in _ROWS.items() for event, move in row.items()}
)


@dataclass(frozen=True, slots=True)
class Rollout:
    """A rollout's state as stored: what :func:`apply_event` reads and returns.

    Attributes:
        state: where it stands.
        phase: the index of the open phase (phases ``0..phase`` are open).
        phase_count: how many phases the policy has (>= 1).
        uses_approval: its policy or the server asks for approval (to start, or
            per phase); an approve that arrives when nothing waits (a second
            operator's, racing the first) is then a no-op, not an error.
        awaiting_phase_approval: the open phase has passed its gate and waits for
            the operator's approval of the next (``phase_approval`` policies).
        halt_reason: why it halted (:func:`halt_decision`), None otherwise.

    Raises:
        RolloutError: a phase outside ``0..phase_count - 1``, or waiting for an
            approval without ``uses_approval``, or a phase approval in the last
            phase or in a state other than active and paused.
    """

    state: RolloutState
    phase: int = 0
    phase_count: int = 1
    uses_approval: bool = False
    awaiting_phase_approval: bool = False
    halt_reason: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.phase < self.phase_count:
            raise RolloutError(f"phase index {self.phase} is outside 0..{self.phase_count - 1}")
        waits = self.awaiting_phase_approval or self.state is RolloutState.AWAITING_APPROVAL
        if waits and not self.uses_approval:
            raise RolloutError("a rollout that waits for approval must use approval")
        if self.awaiting_phase_approval and self.phase == self.phase_count - 1:
            raise RolloutError("the last phase has no next phase to approve")
        if self.awaiting_phase_approval and self.state not in _PHASE_GATED:
            raise RolloutError(f"a {self.state.value} rollout has no phase waiting for approval")


def apply_event(
    rollout: Rollout, event: RolloutEvent, *, halt_reason: str | None = None
) -> tuple[Rollout, bool]:
    """Apply one event to a rollout through :data:`TRANSITIONS` (docs/rollouts.md, states).

    Idempotent moves (pausing a paused rollout, resuming an active one,
    cancelling a cancelled one, a second halt, a second approval of a rollout
    that uses approval) succeed and change nothing, so two operators or replicas
    racing end in the same state; the store writes the result conditionally on
    the state it read, and the loser re-reads and applies again. Opening the
    next phase clears ``awaiting_phase_approval``; a halt records ``halt_reason``.

    Args:
        rollout: the stored rollout.
        event: what happened.
        halt_reason: HALT only: the reason from :func:`halt_decision` (required
            when the rollout enters ``halted``).

    Returns:
        ``(rollout after, changed)``; ``changed`` is False for an idempotent no-op.

    Raises:
        RolloutStateError: the move is illegal in this state (the row's message),
            approving an active rollout whose phase does not wait for approval,
            or advancing past the last phase.
        ValueError: a halt without its reason (a programming error).
    """
    move = TRANSITIONS[(rollout.state, event)]
    what = f"{event.value} refused: the rollout"
    if move.effect is Effect.REFUSE:
        raise RolloutStateError(f"{what} {move.message}")
    if move.effect is Effect.STAY:
        return rollout, False
    if move.effect is Effect.APPROVE_PHASE and not rollout.awaiting_phase_approval:
        if rollout.uses_approval:
            return rollout, False  # approved already: nothing waits now
        raise RolloutStateError(
            f"{what} is active and needs no approval: phase {rollout.phase + 1} of "
            f"{rollout.phase_count} does not wait for one"
        )
    if move.effect in (Effect.NEXT_PHASE, Effect.APPROVE_PHASE):
        if rollout.phase + 1 >= rollout.phase_count:
            raise RolloutStateError(f"{what} is in its last phase: every phase is open")
        return replace(rollout, phase=rollout.phase + 1, awaiting_phase_approval=False), True
    reason = rollout.halt_reason
    if move.next is RolloutState.HALTED:
        if not halt_reason:
            raise ValueError("a halt needs the reason halt_decision gave")
        reason = halt_reason
    waits = rollout.awaiting_phase_approval and move.next in _PHASE_GATED
    return replace(
        rollout, state=move.next, halt_reason=reason, awaiting_phase_approval=waits
    ), True


def markdown_table() -> str:
    """:data:`TRANSITIONS` as a Markdown grid, states by events (docs/rollouts.md holds it verbatim).

    A cell is ``→ state`` (the rollout moves), ``next phase``, ``next phase if
    waiting`` (approve), ``no-op`` (idempotent success) or ``refused``.
    """
    cells = {
        Effect.NEXT_PHASE: "next phase",
        Effect.APPROVE_PHASE: "next phase if waiting",
        Effect.STAY: "no-op",
        Effect.REFUSE: "refused",
    }
    events = list(RolloutEvent)
    lines = [
        "| state | " + " | ".join(f"`{event}`" for event in events) + " |",
        "|---" * (len(events) + 1) + "|",
    ]
    for state in RolloutState:
        row = []
        for event in events:
            move = TRANSITIONS[(state, event)]
            row.append(f"→ `{move.next}`" if move.effect is Effect.ENTER else cells[move.effect])
        lines.append(f"| `{state}` | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def device_may_start(state: RolloutState, device_phase: int, open_phase: int) -> bool:
    """Whether a device that has not started may be offered the update now.

    An active rollout offers to devices in phases ``0..open_phase``; a completed
    one to every targeted device (late joiners); awaiting approval, paused,
    halted and cancelled rollouts offer nothing (docs/rollouts.md, states).
    Installs already in flight are not affected: they finish and report.

    Args:
        state: the rollout's state.
        device_phase: the device's phase index (:func:`phase_of`).
        open_phase: the rollout's open phase index.

    Returns:
        True when the device may start installing.
    """
    if state is RolloutState.COMPLETED:
        return True
    return state is RolloutState.ACTIVE and device_phase <= open_phase


def waiting_reason(
    rollout: Rollout, device_phase: int, *, phase_approval: bool = False
) -> str | None:
    """Why a device that has not started does not get the update now, or None if it may start.

    The plan's words for :func:`device_may_start` (docs/rollouts.md, states and
    phases): ``waits for approval``, ``phase 2 of 2, opens after phase 1
    soaks`` (``... is approved`` with ``phase_approval``), ``paused``,
    ``halted: never installs``, ``cancelled``.

    Args:
        rollout: the rollout as stored, or as a publish would create it
            (:func:`rollout_at_publish`).
        device_phase: the device's phase index (:func:`phase_of`).
        phase_approval: the policy's ``phase_approval``: the next phase opens
            when the operator approves it rather than after the soak.

    Returns:
        One line, or None when an active rollout's open phases hold the device
        or the rollout has completed.
    """
    state = rollout.state
    if state is RolloutState.AWAITING_APPROVAL:
        return "waits for approval"
    if state is RolloutState.PAUSED:
        return "paused"
    if state is RolloutState.HALTED:
        return "halted: never installs"
    if state is RolloutState.CANCELLED:
        return "cancelled"
    if device_may_start(state, device_phase, rollout.phase):
        return None
    gate = "is approved" if phase_approval else "soaks"
    return f"phase {device_phase + 1} of {rollout.phase_count}, opens after phase {device_phase} {gate}"


def rollout_at_publish(
    policy: RolloutPolicy, update_type: UpdateType, approval_required_for: Iterable[UpdateType]
) -> Rollout:
    """The rollout a publish creates: its first phase open, awaiting approval if asked.

    Args:
        policy: the publish's policy (``require_approval`` from ``--require-approval``).
        update_type: the update's type.
        approval_required_for: the server's ``JAVIA_APPROVAL_REQUIRED`` types
            (:func:`~javia_core.rollouts.policy.parse_approval_required`).

    Returns:
        A :class:`Rollout` in phase 0: ``awaiting_approval`` when the publish or
        the server requires approval for this type, else ``active``;
        ``uses_approval`` also when the policy has ``phase_approval``.
    """
    needs_approval = policy.require_approval or update_type in frozenset(approval_required_for)
    state = RolloutState.AWAITING_APPROVAL if needs_approval else RolloutState.ACTIVE
    return Rollout(
        state,
        phase=0,
        phase_count=len(policy.phases),
        uses_approval=needs_approval or policy.phase_approval,
    )
