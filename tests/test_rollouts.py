"""Rollout rules of ``javia_core.rollouts`` on worked cases (docs/rollouts.md).

The general laws (phase membership, percentages, the closed table, offers)
are in tests/test_rollouts_properties.py.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from javia_core.errors import JaviaError
from javia_core.models import UpdateType
from javia_core.rollouts import (
    GateVerdict,
    Rollout,
    RolloutError,
    RolloutEvent,
    RolloutPolicy,
    RolloutState,
    RolloutStateError,
    Tally,
    apply_event,
    device_may_start,
    failure_rate_lower_bound,
    halt_decision,
    parse_approval_required,
    parse_duration,
    parse_phases,
    phase_gate,
    phase_of,
    post_install_regression,
    rollout_at_publish,
)
from javia_core.rollouts.states import markdown_table

NOW = datetime(2027, 6, 10, 12, 0, tzinfo=UTC)
DOC = Path(__file__).resolve().parents[1] / "docs" / "rollouts.md"
TABLE_START = (
    "<!-- rollout-table: generated from javia_core.rollouts.states.markdown_table(); "
    "a test keeps it in step -->\n"
)
TABLE_END = "<!-- /rollout-table -->"
S, E = RolloutState, RolloutEvent


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1d", 86400),
        ("1h30m", 5400),
        ("0", 0),
        (" 2H ", 7200),
    ],
)
def test_durations_in_operator_units(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "1.5h", "h", "30 m", "2w", "1m2h", "-5m", "٣m"])
def test_bad_durations_name_the_expected_form(text: str) -> None:
    with pytest.raises(RolloutError, match=r"e\.g\. 90s, 30m, 2h, 1d"):
        parse_duration(text)


def test_phases_parse_from_the_cli_form() -> None:
    assert parse_phases("1,10,50,100") == (1, 10, 50, 100)
    assert parse_phases(" 5 , 100 ") == (5, 100)
    assert parse_phases("100") == (100,)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("1,10,10,100", "must increase: 10 follows 10"),
        ("50,10,100", "must increase: 10 follows 50"),
        (
            "1,10,50",
            r"last phase must be 100 \(cumulative percentages such as 1,10,50,100\), got 50",
        ),
        ("0,100", "outside 1-100"),
        ("1,10,150", "outside 1-100"),
        ("", "no phases"),
        ("1,,100", "invalid phase ''"),
        ("0.5,100", "invalid phase '0.5'"),
        ("-1,100", "invalid phase '-1'"),
    ],
)
def test_bad_phases_are_one_clear_line(text: str, says: str) -> None:
    with pytest.raises(RolloutError, match=says) as caught:
        parse_phases(text)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, JaviaError) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"phases": (1, 10)}, "last phase must be 100"),
        ({"phases": ()}, "no phases"),
        ({"phase_soak_seconds": -1}, "phase soak must be 0 to 2592000"),
        ({"phase_soak_seconds": 30 * 86400 + 1}, "phase soak"),
        ({"halt_failure_rate": 0}, "halt failure rate"),
        ({"halt_failure_rate": 100.5}, "halt failure rate"),
        ({"halt_min_devices": 0}, "halt minimum"),
        ({"halt_min_devices": True}, "halt minimum"),
        ({"halt_min_devices": 1_000_001}, "halt minimum .* from 1 to 1000000"),
    ],
)
def test_a_policy_out_of_range_cannot_exist(fields: dict[str, object], says: str) -> None:
    with pytest.raises(RolloutError, match=says):
        RolloutPolicy(**fields)  # type: ignore[arg-type]


def test_policy_defaults_are_the_documented_ones() -> None:
    policy = RolloutPolicy()
    assert policy.phases == (100,)
    assert (policy.halt_failure_rate, policy.halt_min_devices) == (10.0, 5)
    assert (
        RolloutPolicy(phase_soak_seconds=30 * 86400, halt_failure_rate=100).halt_failure_rate == 100
    )


def test_approval_setting_and_the_rollout_a_publish_creates() -> None:
    required = parse_approval_required("instant, urgent")
    assert required == {UpdateType.INSTANT, UpdateType.URGENT}
    assert parse_approval_required("") == frozenset()
    with pytest.raises(RolloutError, match="unknown update type 'now'"):
        parse_approval_required("instant,now")
    policy = RolloutPolicy(phases=(1, 10, 100))
    instant = rollout_at_publish(policy, UpdateType.INSTANT, required)
    assert instant == Rollout(S.AWAITING_APPROVAL, phase=0, phase_count=3, uses_approval=True)
    scheduled = rollout_at_publish(policy, UpdateType.SCHEDULED, required)
    assert scheduled == Rollout(S.ACTIVE, phase=0, phase_count=3, uses_approval=False)
    asked = RolloutPolicy(require_approval=True)
    assert rollout_at_publish(asked, UpdateType.SCHEDULED, ()).state is S.AWAITING_APPROVAL
    per_phase = RolloutPolicy(phases=(10, 100), phase_approval=True)
    gated = rollout_at_publish(per_phase, UpdateType.URGENT, ())
    assert gated.state is S.ACTIVE and gated.uses_approval


# --------------------------------------------------------------------------- phases


def test_a_canary_device_goes_first_whatever_its_hash() -> None:
    phases = (1, 10, 50, 100)
    late = next(
        device
        for device in (uuid.UUID(int=n) for n in range(1000))
        if phase_of(device, "v1.4.0", phases) == 3
    )
    assert phase_of(late, "v1.4.0", phases, canary=True) == 0


def test_each_release_has_its_own_first_percent() -> None:
    devices = [uuid.UUID(int=n * 7919) for n in range(2000)]
    first = {d for d in devices if phase_of(d, "v1.4.0", (10, 100)) == 0}
    second = {d for d in devices if phase_of(d, "v1.5.0", (10, 100)) == 0}
    assert first and second and first != second


# --------------------------------------------------------------------------- states


def test_the_docs_table_is_the_code_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert TABLE_START in text and TABLE_END in text
    documented = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0]
    assert documented == markdown_table(), (
        "docs/rollouts.md's state table differs from javia_core.rollouts.states.TRANSITIONS: "
        "paste markdown_table()'s output between the rollout-table markers"
    )


def test_approve_starts_an_awaiting_rollout_and_offers_begin() -> None:
    awaiting = Rollout(S.AWAITING_APPROVAL, phase_count=3, uses_approval=True)
    assert not device_may_start(awaiting.state, 0, awaiting.phase)
    started, changed = apply_event(awaiting, E.APPROVE)
    assert changed and started.state is S.ACTIVE
    assert device_may_start(started.state, 0, started.phase)
    assert not device_may_start(started.state, 1, started.phase)


@pytest.mark.parametrize(
    ("state", "event", "says"),
    [
        (S.COMPLETED, E.PAUSE, "pause refused: the rollout is completed: nothing left to pause"),
        (S.COMPLETED, E.APPROVE, "needs no approval"),
        (S.ACTIVE, E.APPROVE, "is active and needs no approval"),
        (S.HALTED, E.RESUME, "is halted"),
        (S.CANCELLED, E.RESUME, "is cancelled"),
        (S.AWAITING_APPROVAL, E.ADVANCE, "approve it first"),
        (S.PAUSED, E.ADVANCE, "resume it first"),
    ],
)
def test_illegal_moves_are_refused_with_one_line(
    state: RolloutState, event: RolloutEvent, says: str
) -> None:
    with pytest.raises(RolloutStateError, match=says):
        apply_event(
            Rollout(state, phase_count=3, uses_approval=state is S.AWAITING_APPROVAL), event
        )


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.PAUSED, E.PAUSE),
        (S.ACTIVE, E.RESUME),
        (S.CANCELLED, E.CANCEL),
        (S.HALTED, E.HALT),
        (S.COMPLETED, E.COMPLETE),
        (S.CANCELLED, E.HALT),
    ],
)
def test_repeating_a_move_is_a_quiet_success(state: RolloutState, event: RolloutEvent) -> None:
    before = Rollout(state, phase=1, phase_count=3, halt_reason="first reason")
    after, changed = apply_event(before, event, halt_reason="second reason")
    assert after == before and not changed


def test_pause_resume_and_cancel() -> None:
    active = Rollout(S.ACTIVE, phase=1, phase_count=3)
    paused, _ = apply_event(active, E.PAUSE)
    assert paused.state is S.PAUSED and paused.phase == 1
    assert not device_may_start(paused.state, 0, paused.phase)
    resumed, _ = apply_event(paused, E.RESUME)
    assert resumed == active
    cancelled, _ = apply_event(resumed, E.CANCEL)
    assert not device_may_start(cancelled.state, 0, cancelled.phase)


def test_a_halt_keeps_its_reason_and_only_cancel_leads_out() -> None:
    halted, _ = apply_event(Rollout(S.PAUSED, phase_count=2), E.HALT, halt_reason="too many")
    assert halted.state is S.HALTED and halted.halt_reason == "too many"
    for event in (E.APPROVE, E.PAUSE, E.RESUME, E.ADVANCE, E.COMPLETE):
        with pytest.raises(RolloutStateError):
            apply_event(halted, event)
    cancelled, _ = apply_event(halted, E.CANCEL)
    assert cancelled.state is S.CANCELLED and cancelled.halt_reason == "too many"


def test_a_completed_rollout_can_still_halt_or_be_cancelled_by_a_revert() -> None:
    done = Rollout(S.COMPLETED, phase=2, phase_count=3)
    assert device_may_start(done.state, 2, done.phase)
    assert apply_event(done, E.HALT, halt_reason="regressions")[0].state is S.HALTED
    assert apply_event(done, E.CANCEL)[0].state is S.CANCELLED


def test_advance_opens_phases_up_to_the_last() -> None:
    rollout = Rollout(S.ACTIVE, phase_count=3)
    rollout, _ = apply_event(rollout, E.ADVANCE)
    rollout, _ = apply_event(rollout, E.ADVANCE)
    assert rollout.phase == 2
    with pytest.raises(RolloutStateError, match="last phase"):
        apply_event(rollout, E.ADVANCE)


def test_approve_opens_a_phase_that_waits_for_approval() -> None:
    waiting = Rollout(
        S.ACTIVE, phase=0, phase_count=2, uses_approval=True, awaiting_phase_approval=True
    )
    opened, changed = apply_event(waiting, E.APPROVE)
    assert changed and opened.phase == 1 and not opened.awaiting_phase_approval
    # A second operator's approve, racing the first, changes nothing.
    assert apply_event(opened, E.APPROVE) == (opened, False)


# --------------------------------------------------------------------------- halt


def test_halt_reason_reads_as_the_docs_say() -> None:
    policy = RolloutPolicy()
    tally = Tally(targeted=100, completed=3, failed=1, rolled_back=1, regressions=1)
    assert halt_decision(policy, tally) == (
        "3 of 5 finished devices failed (60%; at least 27.2% with 95% confidence) >= 10%: "
        "1 failed, 1 rolled back, 1 regressed after install"
    )


def test_no_halt_before_the_minimum_finished() -> None:
    assert halt_decision(RolloutPolicy(), Tally(targeted=100, failed=4)) is None
    assert halt_decision(RolloutPolicy(), Tally(targeted=100, failed=5)) is not None


def test_one_chance_failure_does_not_halt_but_evidence_does() -> None:
    # A good release with rare random failures: 1 of the first 10 finished
    # devices is 10 % observed, but only 2.3 % with 95 % confidence.
    policy = RolloutPolicy(halt_failure_rate=10, halt_min_devices=5)
    assert halt_decision(policy, Tally(targeted=50, completed=9, failed=1)) is None
    assert halt_decision(policy, Tally(targeted=50, completed=8, failed=2)) is None
    # Three of ten is at least 12.7 %: halt.
    assert halt_decision(policy, Tally(targeted=50, completed=7, failed=3)) is not None
    # A release failing everywhere halts at the minimum, whatever the threshold.
    assert halt_decision(policy, Tally(targeted=50, failed=5)) is not None
    strict = RolloutPolicy(halt_failure_rate=100, halt_min_devices=5)
    assert halt_decision(strict, Tally(targeted=50, rolled_back=5)) is not None
    assert halt_decision(strict, Tally(targeted=50, completed=1, rolled_back=5)) is None


def test_the_lower_bound_grows_with_evidence() -> None:
    assert failure_rate_lower_bound(0, 0) == 0.0
    assert failure_rate_lower_bound(0, 100) == 0.0
    assert round(failure_rate_lower_bound(1, 10), 1) == 2.3
    assert round(failure_rate_lower_bound(5, 5), 1) == 64.9
    assert failure_rate_lower_bound(10, 100) < failure_rate_lower_bound(100, 1000) < 10


def test_a_tally_that_cannot_be_is_refused() -> None:
    with pytest.raises(RolloutError, match="more regressions"):
        Tally(targeted=5, completed=1, regressions=2)
    with pytest.raises(RolloutError, match="more finished"):
        Tally(targeted=1, completed=1, failed=1)
    with pytest.raises(RolloutError, match="negative"):
        Tally(targeted=-1)


# --------------------------------------------------------------------------- regressions


def regression(**changes: object) -> str | None:
    facts: dict[str, object] = {
        "completed_at": NOW - timedelta(minutes=10),
        "last_seen": NOW - timedelta(minutes=1),
        "heartbeat_interval_seconds": 300.0,
        "soak_seconds": 3600,
        "restarts_at_completion": 2,
        "restarts_reported": 2,
        "exit_status": None,
        "now": NOW,
    }
    facts.update(changes)
    return post_install_regression(**facts)  # type: ignore[arg-type]


def test_a_device_heartbeating_with_a_quiet_app_is_healthy() -> None:
    assert regression() is None
    assert regression(exit_status=0) is None


def test_a_crashing_or_restarting_app_is_a_regression() -> None:
    assert regression(exit_status=139) == "application exited with status 139 after installing"
    assert regression(restarts_reported=3) == "application restarted 1 time(s) after installing"
    assert regression(restarts_at_completion=None, restarts_reported=1) is not None


def test_silence_beyond_three_intervals_within_the_soak_is_a_regression() -> None:
    completed = NOW - timedelta(minutes=30)
    quiet = {"completed_at": completed, "last_seen": completed + timedelta(minutes=2)}
    assert regression(**quiet) == (
        "silent for 28 min (> 3 heartbeat intervals of 5 min) since 2 min after installing"
    )
    # Exactly three intervals is not more than three.
    assert regression(**quiet, now=completed + timedelta(minutes=17)) is None
    # Never heard from since the completion report.
    assert regression(completed_at=completed, last_seen=None) is not None


def test_silence_that_began_after_the_soak_is_not_the_release() -> None:
    completed = NOW - timedelta(hours=5)
    seen = completed + timedelta(hours=2)
    assert regression(completed_at=completed, last_seen=seen) is None
    # A device that comes back clears it.
    assert regression(completed_at=completed, last_seen=NOW) is None


def test_regression_inputs_are_checked() -> None:
    with pytest.raises(RolloutError, match="timezone-aware"):
        regression(now=NOW.replace(tzinfo=None))
    with pytest.raises(RolloutError, match="heartbeat interval"):
        regression(heartbeat_interval_seconds=0.0)


# --------------------------------------------------------------------------- gate

PHASED = RolloutPolicy(phases=(1, 10, 50, 100), phase_soak_seconds=1800)


def test_gate_waits_for_the_soak_from_the_first_install() -> None:
    first = NOW - timedelta(minutes=20)
    tally = Tally(targeted=3, completed=2)
    waiting = phase_gate(PHASED, phase=0, tally=tally, first_completed_at=first, now=NOW)
    assert waiting.verdict is GateVerdict.WAIT
    assert waiting.opens_at == first + timedelta(minutes=30)
    assert waiting.reason == "phase 1 of 4 (1%): waits for soak, 10 min left"
    later = phase_gate(PHASED, phase=0, tally=tally, first_completed_at=first, now=waiting.opens_at)
    assert later.verdict is GateVerdict.ADVANCE


def test_gate_waits_until_a_device_installed_healthily() -> None:
    for tally in (Tally(targeted=3), Tally(targeted=20, completed=1, regressions=1)):
        decision = phase_gate(PHASED, phase=1, tally=tally, first_completed_at=None, now=NOW)
        assert decision.verdict is GateVerdict.WAIT and decision.opens_at is None


def test_gate_holds_an_unhealthy_phase_below_the_halt_minimum() -> None:
    tally = Tally(targeted=3, completed=1, failed=1)
    decision = phase_gate(
        PHASED, phase=0, tally=tally, first_completed_at=NOW - timedelta(days=1), now=NOW
    )
    assert decision.verdict is GateVerdict.WAIT
    assert "not healthy: 1 of 2 finished devices failed (50%)" in decision.reason


def test_gate_skips_an_empty_phase() -> None:
    decision = phase_gate(
        PHASED, phase=0, tally=Tally(targeted=0), first_completed_at=None, now=NOW
    )
    assert decision.verdict is GateVerdict.ADVANCE


def test_scheduled_phase_opens_at_most_once_per_window() -> None:
    closes = NOW + timedelta(hours=14)
    decision = phase_gate(
        PHASED,
        phase=0,
        tally=Tally(targeted=2, completed=2),
        first_completed_at=NOW - timedelta(hours=2),
        now=NOW,
        window_closed_at=closes,
    )
    assert decision.verdict is GateVerdict.WAIT and decision.opens_at == closes
    assert "maintenance window" in decision.reason


def test_phase_approval_replaces_the_soak() -> None:
    policy = RolloutPolicy(phases=(10, 100), phase_soak_seconds=86400, phase_approval=True)
    decision = phase_gate(
        policy, phase=0, tally=Tally(targeted=4, completed=1), first_completed_at=NOW, now=NOW
    )
    assert decision.verdict is GateVerdict.AWAIT_APPROVAL


def test_last_phase_completes_when_every_device_finished() -> None:
    last = {"phase": 3, "first_completed_at": NOW, "now": NOW}
    going = phase_gate(PHASED, tally=Tally(targeted=10, completed=7), **last)  # type: ignore[arg-type]
    assert going.verdict is GateVerdict.LAST_PHASE and "3 device(s) still to finish" in going.reason
    done = phase_gate(PHASED, tally=Tally(targeted=10, completed=9, failed=1), **last)  # type: ignore[arg-type]
    assert done.verdict is GateVerdict.COMPLETE


def test_gate_refuses_a_phase_the_policy_does_not_have() -> None:
    with pytest.raises(RolloutError, match="outside the policy's 4 phases"):
        phase_gate(PHASED, phase=4, tally=Tally(targeted=1), first_completed_at=None, now=NOW)


def test_waiting_reason_says_why_a_device_is_held_back_or_none_when_it_may_start() -> None:
    from javia_core.rollouts import waiting_reason

    active = Rollout(S.ACTIVE, phase=0, phase_count=3)
    assert waiting_reason(active, 0) is None
    assert waiting_reason(active, 1) == "phase 2 of 3, opens after phase 1 soaks"
    assert waiting_reason(active, 2, phase_approval=True) == (
        "phase 3 of 3, opens after phase 2 is approved"
    )
    awaiting = Rollout(S.AWAITING_APPROVAL, phase_count=3, uses_approval=True)
    assert waiting_reason(awaiting, 0) == "waits for approval"
    assert waiting_reason(Rollout(S.PAUSED, phase_count=3), 0) == "paused"
    halted = Rollout(S.HALTED, halt_reason="3 of 5 failed")
    assert waiting_reason(halted, 0) == "halted: never installs"
    assert waiting_reason(Rollout(S.CANCELLED), 0) == "cancelled"
    assert waiting_reason(Rollout(S.COMPLETED, phase=0, phase_count=3), 2) is None


def test_the_policy_parsers_echo_what_the_operator_typed() -> None:
    from javia_core.rollouts import (
        parse_halt_failure_rate,
        parse_halt_min_devices,
        parse_phase_soak,
    )

    with pytest.raises(RolloutError, match=r"phase soak '99d' is too long: at most 30d"):
        parse_phase_soak("99d")
    assert parse_phase_soak("30d") == 30 * 86400
    assert parse_phase_soak("90", bare_seconds=True) == 90
    with pytest.raises(RolloutError, match="invalid duration '90'"):
        parse_phase_soak("90")
    with pytest.raises(RolloutError, match="'abc' is not a percentage"):
        parse_halt_failure_rate("abc")
    for rate in ("nan", "inf", "0", "100.5"):
        with pytest.raises(RolloutError, match="above 0 and at most 100"):
            parse_halt_failure_rate(rate)
    assert parse_halt_failure_rate(" 12.5 ") == 12.5
    with pytest.raises(RolloutError, match="'x' is not a whole number of devices"):
        parse_halt_min_devices("x")
    with pytest.raises(RolloutError, match=r"from 1 to 1000000, e.g. 5; got '9999999999999999999"):
        parse_halt_min_devices("9" * 400)
    assert parse_halt_min_devices("1000000") == 1_000_000
