"""General laws of ``javia_core.rollouts`` over many devices, phases and states (docs/rollouts.md).

* phase membership is a function of the device and the rollout only: stable
  under re-planning, independent of which other devices are planned and of
  their order;
* cumulative percentages are respected within sampling tolerance;
* the transition table is closed (every state and event has an answer) and a
  halted, paused, cancelled or awaiting rollout never offers, whatever events
  led there;
* the halt decision agrees with its definition.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from javia_core.rollouts import (
    TRANSITIONS,
    Effect,
    GateVerdict,
    Rollout,
    RolloutEvent,
    RolloutPolicy,
    RolloutState,
    RolloutStateError,
    Tally,
    apply_event,
    device_may_start,
    failure_rate_lower_bound,
    halt_decision,
    phase_gate,
    phase_of,
)

NOW = datetime(2027, 6, 10, 12, 0, tzinfo=UTC)
GATED = {RolloutState.ACTIVE, RolloutState.PAUSED}
NEVER_OFFERS = {
    RolloutState.AWAITING_APPROVAL,
    RolloutState.PAUSED,
    RolloutState.HALTED,
    RolloutState.CANCELLED,
}


@st.composite
def phase_lists(draw: st.DrawFn) -> tuple[int, ...]:
    """Valid cumulative phases: a strictly increasing subset of 1..99, then 100."""
    inner = draw(st.sets(st.integers(1, 99), max_size=6))
    return (*sorted(inner), 100)


uuids = st.uuids()
keys = st.from_regex(r"v[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True)


@given(uuids, keys, phase_lists())
def test_membership_is_in_range_and_stable(
    device: uuid.UUID, key: str, phases: tuple[int, ...]
) -> None:
    phase = phase_of(device, key, phases)
    assert 0 <= phase < len(phases)
    assert phase_of(uuid.UUID(str(device)), str(key), tuple(phases)) == phase


@given(st.lists(uuids, min_size=1, max_size=30, unique=True), st.randoms(), keys, phase_lists())
def test_membership_ignores_the_other_devices_and_their_order(
    devices: list[uuid.UUID], shuffle: object, key: str, phases: tuple[int, ...]
) -> None:
    alone = {device: phase_of(device, key, phases) for device in devices}
    replanned = list(devices)
    shuffle.shuffle(replanned)  # type: ignore[attr-defined]
    together = {device: phase_of(device, key, phases) for device in replanned}
    assert together == alone


@given(uuids, keys, phase_lists(), phase_lists())
def test_a_wider_phase_never_drops_a_device(
    device: uuid.UUID, key: str, first: tuple[int, ...], second: tuple[int, ...]
) -> None:
    """Changing the phase list keeps the order: inside p % stays inside any q >= p %."""
    k = phase_of(device, key, first)
    for j, percent in enumerate(second):
        if percent >= first[k]:
            assert phase_of(device, key, second) <= j
            break


@given(uuids, keys, phase_lists())
def test_a_canary_is_always_in_the_first_phase(
    device: uuid.UUID, key: str, phases: tuple[int, ...]
) -> None:
    assert phase_of(device, key, phases, canary=True) == 0


@pytest.mark.parametrize("phases", [(1, 10, 50, 100), (5, 25, 100), (33, 66, 100)])
@pytest.mark.parametrize("key", ["v1.0.0", "v2.3.4"])
def test_cumulative_percentages_are_respected(phases: tuple[int, ...], key: str) -> None:
    """20,000 devices: the share in phases 0..k is phases[k] % within 4.5 standard deviations."""
    fleet = 20_000
    counts = [0] * len(phases)
    for n in range(fleet):
        counts[phase_of(uuid.UUID(int=n * 0x9E3779B97F4A7C15 % (1 << 128)), key, phases)] += 1
    cumulative = 0
    for k, percent in enumerate(phases):
        cumulative += counts[k]
        p = percent / 100
        tolerance = 4.5 * math.sqrt(fleet * p * (1 - p)) + 1
        assert abs(cumulative - fleet * p) <= tolerance, (k, cumulative)


# --------------------------------------------------------------------------- states


def test_the_transition_table_is_closed() -> None:
    assert set(TRANSITIONS) == {(s, e) for s in RolloutState for e in RolloutEvent}
    for (state, _event), move in TRANSITIONS.items():
        if move.effect in (Effect.STAY, Effect.REFUSE):
            assert move.next is state and move.message
        if move.effect in (Effect.NEXT_PHASE, Effect.APPROVE_PHASE):
            assert state is RolloutState.ACTIVE


@st.composite
def rollouts(draw: st.DrawFn) -> Rollout:
    """A consistent stored rollout: any state, phase and approval flags that can coexist."""
    count = draw(st.integers(1, 5))
    state = draw(st.sampled_from(RolloutState))
    phase = draw(st.integers(0, count - 1))
    waits_phase = phase < count - 1 and state in GATED and draw(st.booleans())
    uses = waits_phase or state is RolloutState.AWAITING_APPROVAL or draw(st.booleans())
    reason = "threshold" if state is RolloutState.HALTED else None
    return Rollout(state, phase, count, uses, waits_phase, reason)


@given(rollouts(), st.lists(st.sampled_from(RolloutEvent), max_size=12), st.integers(0, 4))
def test_no_event_sequence_makes_a_stopped_rollout_offer(
    rollout: Rollout, events: list[RolloutEvent], device_phase: int
) -> None:
    for event in events:
        with contextlib.suppress(RolloutStateError):  # refused: nothing changed
            rollout, _ = apply_event(rollout, event, halt_reason="threshold")
        assert 0 <= rollout.phase < rollout.phase_count
        if rollout.state in NEVER_OFFERS:
            assert not device_may_start(rollout.state, device_phase, rollout.phase)
        if rollout.state is RolloutState.HALTED:
            assert rollout.halt_reason is not None


@given(rollouts(), st.sampled_from(RolloutEvent))
def test_every_event_answers_and_repeating_a_success_is_a_no_op(
    rollout: Rollout, event: RolloutEvent
) -> None:
    try:
        after, _ = apply_event(rollout, event, halt_reason="threshold")
    except RolloutStateError as refused:
        assert str(refused).startswith(f"{event.value} refused: the rollout")
        return
    if event in (RolloutEvent.ADVANCE, RolloutEvent.APPROVE) and after.phase != rollout.phase:
        return  # opening a phase is a step, not a state: repeating opens the next
    again, changed = apply_event(after, event, halt_reason="another")
    assert again == after and not changed


@given(st.sampled_from(RolloutState), st.integers(0, 10), st.integers(0, 10))
def test_only_active_and_completed_rollouts_offer(
    state: RolloutState, device: int, open_: int
) -> None:
    offers = device_may_start(state, device, open_)
    if state in NEVER_OFFERS:
        assert not offers
    elif state is RolloutState.ACTIVE:
        assert offers == (device <= open_)
    else:
        assert offers


# --------------------------------------------------------------------------- halt and gate


@st.composite
def tallies(draw: st.DrawFn) -> Tally:
    completed, failed, rolled_back = (draw(st.integers(0, 60)) for _ in range(3))
    regressions = draw(st.integers(0, completed))
    extra = draw(st.integers(0, 20))
    return Tally(
        completed + failed + rolled_back + extra, completed, failed, rolled_back, regressions
    )


policies = st.builds(
    RolloutPolicy,
    phases=phase_lists(),
    phase_soak_seconds=st.integers(0, 7 * 86400),
    halt_failure_rate=st.floats(0.5, 100),
    halt_min_devices=st.integers(1, 50),
    phase_approval=st.booleans(),
)


@given(policies, tallies())
def test_halt_follows_its_definition(policy: RolloutPolicy, tally: Tally) -> None:
    reason = halt_decision(policy, tally)
    expected = (
        tally.finished >= policy.halt_min_devices
        and tally.failures > 0
        and (
            failure_rate_lower_bound(tally.failures, tally.finished) >= policy.halt_failure_rate
            or tally.failures == tally.finished
        )
    )
    # The rule never halts below the observed threshold.
    if expected:
        assert tally.failures * 100 >= policy.halt_failure_rate * tally.finished - 1e-9
    assert (reason is not None) == expected
    if reason is not None:
        assert reason.startswith(f"{tally.failures} of {tally.finished} finished devices failed")


@given(policies, tallies(), st.integers(0, 7 * 86400), st.integers(0, 10 * 86400))
@settings(max_examples=200)
def test_the_gate_never_opens_an_unhealthy_or_unsoaked_phase(
    policy: RolloutPolicy, tally: Tally, since_first: int, window_in: int
) -> None:
    assume(len(policy.phases) > 1 and tally.targeted > 0)
    first = NOW - timedelta(seconds=since_first) if tally.completed else None
    closes = NOW - timedelta(days=5) + timedelta(seconds=window_in)
    decision = phase_gate(
        policy, phase=0, tally=tally, first_completed_at=first, now=NOW, window_closed_at=closes
    )
    opens = decision.verdict in (GateVerdict.ADVANCE, GateVerdict.AWAIT_APPROVAL)
    healthy = tally.healthy > 0 and tally.failures * 100 < policy.halt_failure_rate * tally.finished
    assert opens == (healthy and (policy.phase_approval or decision.opens_at is None))
    if decision.verdict is GateVerdict.ADVANCE:
        assert first is not None and closes <= NOW
        assert first + timedelta(seconds=policy.phase_soak_seconds) <= NOW
    if decision.opens_at is not None:
        assert decision.verdict is GateVerdict.WAIT and decision.opens_at > NOW
