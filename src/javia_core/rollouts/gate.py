"""When the next phase of a rollout opens: the phase gate (docs/rollouts.md, phase gate). Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from javia_core.rollouts.health import Tally
from javia_core.rollouts.policy import RolloutError, RolloutPolicy, check_aware
from javia_core.scheduling import describe_duration

__all__ = ["GateDecision", "GateVerdict", "phase_gate"]


class GateVerdict(StrEnum):
    """What the phase gate says about the open phase."""

    WAIT = "wait"  # the open phase has not proven itself yet
    ADVANCE = "advance"  # open the next phase now (post RolloutEvent.ADVANCE)
    AWAIT_APPROVAL = "await_approval"  # proven; the next phase waits for the operator
    LAST_PHASE = "last_phase"  # every phase is open; devices still to finish
    COMPLETE = "complete"  # every phase open, every device finished (post COMPLETE)


@dataclass(frozen=True, slots=True)
class GateDecision:
    """The phase gate's answer.

    Attributes:
        verdict: what to do.
        reason: one line for operators (``updates show``, ``plan``).
        opens_at: WAIT only: the earliest UTC instant the next phase can open, if
            the phase stays healthy (None when it waits for a device to complete).
    """

    verdict: GateVerdict
    reason: str
    opens_at: datetime | None = None


def phase_gate(
    policy: RolloutPolicy,
    *,
    phase: int,
    tally: Tally,
    first_completed_at: datetime | None,
    now: datetime,
    window_closed_at: datetime | None = None,
) -> GateDecision:
    """Whether the next phase of an active rollout opens (docs/rollouts.md, phase gate).

    In this order:

    1. The last phase is open: COMPLETE once every device in it finished, else
       LAST_PHASE.
    2. A phase without devices proves nothing and costs nothing: ADVANCE.
    3. Its finished devices fail at the halt rate or more (even below the halt
       minimum): WAIT, for more devices or the operator. No device has completed
       healthily yet: WAIT.
    4. ``phase_approval``: AWAIT_APPROVAL (the approval replaces soak and window).
    5. The soak has not passed since the phase's first completed install, or,
       for scheduled updates, the maintenance window has not closed: WAIT with
       ``opens_at``. Else ADVANCE.

    The halt itself is :func:`~javia_core.rollouts.health.halt_decision` over the
    whole rollout, asked first.

    Args:
        policy: the rollout's policy.
        phase: the open phase's index.
        tally: the open phase's counts (its own devices only).
        first_completed_at: when its first device reported ``completed`` (aware),
            None if none has.
        now: an aware datetime, the server's clock.
        window_closed_at: scheduled updates only: the UTC end of the first
            maintenance window to start after the phase opened (the latest among
            its devices' zones), so a phase opens at most once per window; None
            for urgent and instant updates.

    Returns:
        The :class:`GateDecision`.

    Raises:
        RolloutError: ``phase`` outside the policy's phases, or a naive datetime.
    """
    check_aware("now", now)
    check_aware("first_completed_at", first_completed_at)
    check_aware("window_closed_at", window_closed_at)
    count = len(policy.phases)
    if not 0 <= phase < count:
        raise RolloutError(f"phase index {phase} is outside the policy's {count} phases")
    label = f"phase {phase + 1} of {count} ({policy.phases[phase]}%)"
    if phase == count - 1:
        if tally.finished == tally.targeted:
            return GateDecision(GateVerdict.COMPLETE, f"{label}: every device finished")
        left = tally.targeted - tally.finished
        return GateDecision(GateVerdict.LAST_PHASE, f"{label}: {left} device(s) still to finish")
    if tally.targeted == 0:
        return GateDecision(GateVerdict.ADVANCE, f"{label} has no devices")
    if tally.fails_at(policy.halt_failure_rate):
        line = tally.describe_failures(policy.halt_failure_rate)
        return GateDecision(GateVerdict.WAIT, f"{label} is not healthy: {line}")
    if tally.healthy == 0 or first_completed_at is None:
        return GateDecision(GateVerdict.WAIT, f"{label}: no device has installed it healthily yet")
    if policy.phase_approval:
        return GateDecision(GateVerdict.AWAIT_APPROVAL, f"{label} is healthy: awaits approval")
    opens_at = first_completed_at + timedelta(seconds=policy.phase_soak_seconds)
    waits_for = "soak"
    if window_closed_at is not None and window_closed_at > opens_at:
        opens_at, waits_for = window_closed_at, "the maintenance window to close"
    if now < opens_at:
        remaining = describe_duration((opens_at - now).total_seconds())
        return GateDecision(
            GateVerdict.WAIT, f"{label}: waits for {waits_for}, {remaining} left", opens_at
        )
    return GateDecision(GateVerdict.ADVANCE, f"{label} stayed healthy: the next phase opens")
