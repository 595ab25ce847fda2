"""The update-type rules of DESIGN.md section 4 (``javia_core.scheduling``).

Every test injects ``now``; no test reads a clock or sleeps. Expected instants
are written out by hand from the zones' published rules (e.g. Europe/Berlin
leaves CEST at 03:00 on the last Sunday of October), not computed by the code
under test.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone

import pytest

from javia_core.errors import JaviaError, ScheduleError, VersionError
from javia_core.models import InstallDirective, UpdateStatus, UpdateType
from javia_core.scheduling import (
    DEFAULT_IDLE_SECONDS,
    DEFAULT_WINDOW_SECONDS,
    MAX_WINDOW_SECONDS,
    DeviceFacts,
    InstallPlan,
    check_offered_window,
    current_install_plan,
    current_window,
    decide_install,
    describe_duration,
    is_online,
    most_urgent,
    next_window_start,
    plan_in_own_window,
    plan_install,
    plan_rollout,
    window_offset_seconds,
    window_start_on,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def fixed(hours: float) -> timezone:
    return timezone(timedelta(hours=hours))


# A device uuid with a known offset, so window-edge tests can aim at its slot.
DEVICE = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")
DEVICE_OFFSET = 1915  # seconds into a 3 h window: 00:31:55


# --------------------------------------------------------------------------- next_window_start


def test_new_york_spring_forward_window_starts_after_the_gap() -> None:
    # 2027-03-14: 02:00 EST jumps to 03:00 EDT, so 02:00 does not exist.
    after = datetime(2027, 3, 13, 20, 0, tzinfo=fixed(-5))
    start = next_window_start(after, "America/New_York")
    assert start == utc(2027, 3, 14, 7, 0)  # 03:00-04:00
    assert start.tzinfo is UTC


def test_berlin_fall_back_window_starts_at_first_occurrence() -> None:
    # 2027-10-31: 03:00 CEST falls back to 02:00 CET, so 02:00 occurs twice.
    after = datetime(2027, 10, 30, 20, 0, tzinfo=fixed(2))
    assert next_window_start(after, "Europe/Berlin") == utc(2027, 10, 31, 0, 0)  # 02:00+02:00


def test_result_is_an_aware_utc_datetime_whatever_the_input_offset() -> None:
    instant = utc(2027, 6, 10, 12, 0)
    results = {
        next_window_start(instant.astimezone(fixed(h)), "Asia/Tokyo") for h in (-11, 0, 5.5, 14)
    }
    assert results == {utc(2027, 6, 10, 17, 0)}  # 02:00 JST on 2027-06-11


def test_ordinary_summer_day_in_berlin() -> None:
    assert next_window_start(utc(2027, 6, 10, 12, 0), "Europe/Berlin") == utc(2027, 6, 11, 0, 0)


def test_after_exactly_at_a_window_start_gives_the_next_day() -> None:
    start = utc(2027, 6, 11, 0, 0)  # 02:00 CEST
    assert next_window_start(start, "Europe/Berlin") == utc(2027, 6, 12, 0, 0)
    assert next_window_start(start - timedelta(microseconds=1), "Europe/Berlin") == start


@pytest.mark.parametrize(
    "after",
    [
        utc(2027, 10, 31, 0, 0),  # the first 02:00 itself
        utc(2027, 10, 31, 0, 30),  # 02:30 CEST, first pass through the doubled hour
        utc(2027, 10, 31, 1, 0),  # 02:00 CET: the second occurrence is not a window start
        utc(2027, 10, 31, 1, 30),  # 02:30 CET
    ],
)
def test_berlin_doubled_hour_has_no_second_window(after: datetime) -> None:
    assert next_window_start(after, "Europe/Berlin") == utc(2027, 11, 1, 1, 0)  # 02:00 CET


def test_berlin_spring_forward_window_starts_at_three_cest() -> None:
    # 2027-03-28: 02:00 CET jumps to 03:00 CEST.
    assert next_window_start(utc(2027, 3, 27, 12, 0), "Europe/Berlin") == utc(2027, 3, 28, 1, 0)


def test_new_york_fall_back_keeps_two_am_which_occurs_once() -> None:
    # 2027-11-07: 02:00 EDT falls back to 01:00 EST; 01:00-02:00 is doubled, 02:00 is not.
    before = next_window_start(utc(2027, 11, 5, 12, 0), "America/New_York")
    on_the_night = next_window_start(before, "America/New_York")
    assert before == utc(2027, 11, 6, 6, 0)  # 02:00 EDT
    assert on_the_night == utc(2027, 11, 7, 7, 0)  # 02:00 EST, 25 h later
    assert on_the_night - before == timedelta(hours=25)


def test_london_transitions_at_one_am_leave_two_am_alone() -> None:
    # Europe/London changes at 01:00 GMT / 02:00 BST.
    assert next_window_start(utc(2027, 3, 27, 12, 0), "Europe/London") == utc(2027, 3, 28, 1, 0)
    assert next_window_start(utc(2027, 10, 30, 12, 0), "Europe/London") == utc(2027, 10, 31, 2, 0)


def test_sydney_both_transitions() -> None:
    # Fall back 2027-04-04 03:00 AEDT -> 02:00 AEST: first 02:00 is AEDT (+11).
    assert next_window_start(utc(2027, 4, 3, 0, 0), "Australia/Sydney") == utc(2027, 4, 3, 15, 0)
    # Spring forward 2027-10-03 02:00 AEST -> 03:00 AEDT: first instant after the gap.
    assert next_window_start(utc(2027, 10, 2, 0, 0), "Australia/Sydney") == utc(2027, 10, 2, 16, 0)


def test_lord_howe_half_hour_shift() -> None:
    # Spring forward 2027-10-03 02:00 +10:30 -> 02:30 +11: the gap swallows 02:00.
    start = next_window_start(utc(2027, 10, 2, 0, 0), "Australia/Lord_Howe")
    assert start == utc(2027, 10, 2, 15, 30)
    assert start.astimezone(fixed(11)).time() == time(2, 30)
    # Fall back 2027-04-04 02:00 +11 -> 01:30 +10:30: 01:30-02:00 doubles, 02:00 occurs once.
    assert next_window_start(utc(2027, 4, 3, 0, 0), "Australia/Lord_Howe") == utc(
        2027, 4, 3, 15, 30
    )


def test_two_hour_shift_in_antarctica_troll() -> None:
    # Troll moves +00 -> +02 at 01:00 UTC (local 01:00 -> 03:00) and back at 01:00 UTC
    # (local 03:00 -> 01:00), so 02:00 is swallowed in March and doubled in October.
    assert next_window_start(utc(2027, 3, 27, 12, 0), "Antarctica/Troll") == utc(2027, 3, 28, 1, 0)
    assert next_window_start(utc(2027, 10, 30, 12, 0), "Antarctica/Troll") == utc(
        2027, 10, 31, 0, 0
    )
    # Between the first (00:00Z) and the second (02:00Z) 02:00: next day's window.
    assert next_window_start(utc(2027, 10, 31, 1, 0), "Antarctica/Troll") == utc(2027, 11, 1, 2, 0)


def test_apia_skipped_day_starts_its_window_when_the_clock_resumes() -> None:
    # Samoa skipped 2011-12-30: 2011-12-29 23:59:59 -10 was followed by 2011-12-31 00:00 +14.
    after = utc(2011, 12, 29, 13, 0)  # 2011-12-29 03:00 -10, past that day's window start
    skipped_day = next_window_start(after, "Pacific/Apia")
    assert skipped_day == utc(2011, 12, 30, 10, 0)  # first instant after the gap: 12-31 00:00 +14
    assert window_start_on(date(2011, 12, 30), "Pacific/Apia") == skipped_day
    following = next_window_start(skipped_day, "Pacific/Apia")
    assert following == utc(2011, 12, 30, 12, 0)  # 2011-12-31 02:00 +14
    assert following - skipped_day == timedelta(hours=2)


def test_far_future_dates_follow_the_standing_rule() -> None:
    assert next_window_start(utc(2090, 7, 1, 12, 0), "Europe/Berlin") == utc(2090, 7, 2, 0, 0)
    assert next_window_start(utc(2500, 1, 1, 12, 0), "Europe/Berlin") == utc(2500, 1, 2, 1, 0)


def test_custom_window_start_time() -> None:
    # 03:30 in New York on a summer day is 07:30 UTC.
    start = next_window_start(utc(2027, 6, 10, 12, 0), "America/New_York", at=time(3, 30))
    assert start == utc(2027, 6, 11, 7, 30)


def test_utc_zone_windows_are_24_hours_apart() -> None:
    assert next_window_start(utc(2027, 1, 1, 2, 0), "UTC") == utc(2027, 1, 2, 2, 0)


def test_unknown_timezone_is_refused_with_an_example() -> None:
    with pytest.raises(ScheduleError, match="Europe/Berlin") as caught:
        next_window_start(utc(2027, 1, 1), "Mars/Olympus_Mons")
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, JaviaError)


def test_naive_after_is_refused() -> None:
    with pytest.raises(ScheduleError, match="timezone-aware"):
        next_window_start(datetime(2027, 1, 1), "Europe/Berlin")


def test_window_start_with_a_tzinfo_is_refused() -> None:
    with pytest.raises(ScheduleError, match="without timezone"):
        next_window_start(utc(2027, 1, 1), "Europe/Berlin", at=time(2, 0, tzinfo=UTC))


def test_current_window_reports_the_open_window_only() -> None:
    start, end = utc(2027, 6, 11, 0, 0), utc(2027, 6, 11, 3, 0)
    assert current_window(start, "Europe/Berlin") == (start, end)
    assert current_window(end - timedelta(seconds=1), "Europe/Berlin") == (start, end)
    assert current_window(end, "Europe/Berlin") is None
    assert current_window(start - timedelta(seconds=1), "Europe/Berlin") is None


# --------------------------------------------------------------------------- offsets


def test_offset_is_stable_and_independent_of_the_uuid_spelling() -> None:
    spellings = [DEVICE, str(DEVICE), str(DEVICE).upper(), "{" + str(DEVICE) + "}", DEVICE.hex]
    assert {window_offset_seconds(s) for s in spellings} == {DEVICE_OFFSET}


def test_offset_value_is_pinned_so_server_and_agent_releases_agree() -> None:
    # Changing the hash would move every device's slot mid-rollout.
    assert window_offset_seconds(DEVICE) == DEVICE_OFFSET
    assert window_offset_seconds(uuid.UUID(int=0)) == 1096  # checked with sha256sum


@pytest.mark.parametrize("window_seconds", [1, 2, 3, 600, 3600, 10800, 86400])
def test_offset_leaves_the_last_third_of_the_window(window_seconds: int) -> None:
    rng = random.Random(window_seconds)
    spread = max(1, window_seconds * 2 // 3)
    for _ in range(200):
        offset = window_offset_seconds(uuid.UUID(int=rng.getrandbits(128)), window_seconds)
        assert 0 <= offset < spread <= window_seconds


def test_offsets_of_a_fleet_cover_the_spread_evenly() -> None:
    rng = random.Random(20270314)
    fleet = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(1000)]
    offsets = [window_offset_seconds(device) for device in fleet]
    spread = DEFAULT_WINDOW_SECONDS * 2 // 3  # the first 2 h of 3 h
    buckets = [0] * 10
    for offset in offsets:
        buckets[offset * 10 // spread] += 1
    # 100 expected per 12-minute bucket; 60..140 is more than 4 standard deviations.
    assert all(60 <= count <= 140 for count in buckets), buckets
    assert min(offsets) < 60 and max(offsets) > spread - 60


def test_offset_refuses_a_bad_uuid_or_window() -> None:
    with pytest.raises(ScheduleError, match="uuid"):
        window_offset_seconds("not-a-uuid")
    with pytest.raises(ScheduleError, match="window length"):
        window_offset_seconds(DEVICE, 0)
    with pytest.raises(ScheduleError, match="window length"):
        window_offset_seconds(DEVICE, 86401)


# --------------------------------------------------------------------------- small rules


def test_online_threshold_is_inclusive() -> None:
    now = utc(2027, 6, 10, 12, 0)
    assert is_online(now - timedelta(seconds=300), now)
    assert not is_online(now - timedelta(seconds=301), now)
    assert not is_online(now - timedelta(seconds=300, microseconds=1), now)
    assert is_online(now, now)


def test_never_seen_device_is_offline() -> None:
    assert not is_online(None, utc(2027, 6, 10, 12, 0))


def test_last_seen_slightly_ahead_of_now_counts_as_online() -> None:
    now = utc(2027, 6, 10, 12, 0)
    assert is_online(now + timedelta(seconds=2), now)


def test_online_threshold_is_configurable_and_offset_independent() -> None:
    now = utc(2027, 6, 10, 12, 0)
    seen = (now - timedelta(seconds=60)).astimezone(fixed(-7))
    assert is_online(seen, now, within_seconds=60)
    assert not is_online(seen, now, within_seconds=59)


def test_online_refuses_naive_datetimes() -> None:
    with pytest.raises(ScheduleError):
        is_online(datetime(2027, 1, 1), utc(2027, 1, 1))


@pytest.mark.parametrize(
    ("types", "expected"),
    [
        ([UpdateType.SCHEDULED], UpdateType.SCHEDULED),
        ([UpdateType.SCHEDULED, UpdateType.URGENT], UpdateType.URGENT),
        ([UpdateType.URGENT, UpdateType.SCHEDULED, UpdateType.URGENT], UpdateType.URGENT),
        ([UpdateType.SCHEDULED, UpdateType.INSTANT, UpdateType.URGENT], UpdateType.INSTANT),
        (["instant", "scheduled"], UpdateType.INSTANT),
    ],
)
def test_most_urgent_orders_instant_urgent_scheduled(types: list, expected: UpdateType) -> None:
    assert most_urgent(types) is expected
    assert most_urgent(iter(types)) is expected


def test_most_urgent_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        most_urgent([])
    with pytest.raises(ScheduleError, match="scheduled, urgent, instant"):
        most_urgent(["soon"])


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (42.9, "42 s"),
        (300, "5 min"),
        (3600, "1 h"),
        (7980, "2 h 13 min"),
        (90061, "1 d 1 h"),
        (3 * 86400 + 59, "3 d"),
    ],
)
def test_describe_duration(seconds: float, text: str) -> None:
    assert describe_duration(seconds) == text


# --------------------------------------------------------------------------- plan_install


def plan(
    update_type: UpdateType | str, now: datetime, zone: str = "Europe/Berlin", **kw
) -> InstallPlan:
    return plan_install(update_type, now=now, timezone=zone, device_uuid=DEVICE, **kw)


def test_instant_installs_at_its_next_check() -> None:
    now = datetime(2027, 6, 10, 14, 0, tzinfo=fixed(2))
    result = plan(UpdateType.INSTANT, now)
    assert result == InstallPlan(
        utc(2027, 6, 10, 12, 0), None, None, "instant: installs at its next check"
    )
    assert result.install_at.tzinfo is UTC


def test_scheduled_installs_at_the_device_slot_in_the_next_window() -> None:
    result = plan(UpdateType.SCHEDULED, utc(2027, 6, 10, 12, 0))
    assert result.install_at == utc(2027, 6, 11, 0, 31, 55)  # 02:31:55 CEST
    assert result.window_end == utc(2027, 6, 11, 3, 0)  # 05:00 CEST
    assert result.idle_seconds_required is None
    assert result.reason == (
        "scheduled: maintenance window 02:00–05:00 Europe/Berlin, starts 2027-06-11 02:31 CEST"
    )


def test_scheduled_inside_a_window_with_the_slot_ahead_uses_that_window() -> None:
    slot = utc(2027, 6, 11, 0, 31, 55)
    for now in (utc(2027, 6, 11, 0, 0), slot - timedelta(seconds=1), slot):
        assert plan(UpdateType.SCHEDULED, now).install_at == slot


def test_scheduled_inside_a_window_past_the_slot_waits_for_the_next_window() -> None:
    now = utc(2027, 6, 11, 0, 31, 56)
    result = plan(UpdateType.SCHEDULED, now)
    assert result.install_at == utc(2027, 6, 12, 0, 31, 55)
    assert result.window_end == utc(2027, 6, 12, 3, 0)


def test_scheduled_on_the_berlin_spring_forward_night() -> None:
    result = plan(UpdateType.SCHEDULED, utc(2027, 3, 27, 12, 0))
    assert result.install_at == utc(2027, 3, 28, 1, 31, 55)  # 03:31:55 CEST
    assert result.window_end == utc(2027, 3, 28, 4, 0)  # a full 3 h: 06:00 CEST
    assert "03:00–06:00 Europe/Berlin" in result.reason
    assert result.reason.endswith("starts 2027-03-28 03:31 CEST")


def test_scheduled_on_the_new_york_spring_forward_night() -> None:
    result = plan(
        UpdateType.SCHEDULED, datetime(2027, 3, 13, 20, 0, tzinfo=fixed(-5)), "America/New_York"
    )
    assert result.install_at == utc(2027, 3, 14, 7, 31, 55)
    assert result.reason.endswith("starts 2027-03-14 03:31 EDT")


def test_urgent_deadline_is_the_scheduled_slot_plus_an_idle_rule() -> None:
    now = utc(2027, 6, 10, 12, 0)
    scheduled, urgent = plan(UpdateType.SCHEDULED, now), plan(UpdateType.URGENT, now)
    assert urgent.install_at == scheduled.install_at
    assert urgent.window_end == scheduled.window_end
    assert urgent.idle_seconds_required == DEFAULT_IDLE_SECONDS
    assert urgent.reason == "urgent: after 1 h idle, at the latest 2027-06-11 02:31 CEST"


def test_custom_window_and_idle_lengths() -> None:
    result = plan("urgent", utc(2027, 6, 10, 12, 0), window_seconds=3600, idle_seconds=1800)
    offset = window_offset_seconds(DEVICE, 3600)
    assert offset < 2400
    assert result.install_at == utc(2027, 6, 11, 0, 0) + timedelta(seconds=offset)
    assert result.window_end == utc(2027, 6, 11, 1, 0)
    assert result.idle_seconds_required == 1800
    assert result.reason.startswith("urgent: after 30 min idle")


def test_plan_install_refuses_bad_input() -> None:
    with pytest.raises(ScheduleError, match="scheduled, urgent, instant"):
        plan("later", utc(2027, 6, 10))
    with pytest.raises(ScheduleError, match="timezone-aware"):
        plan(UpdateType.SCHEDULED, datetime(2027, 6, 10))
    with pytest.raises(ScheduleError, match="Europe/Berlin"):
        plan(UpdateType.SCHEDULED, utc(2027, 6, 10), "Berlin")
    with pytest.raises(ScheduleError, match="idle"):
        plan(UpdateType.URGENT, utc(2027, 6, 10), idle_seconds=-1)


# --------------------------------------------------------------------------- current_install_plan


def replan(stored: InstallPlan, update_type: UpdateType, now: datetime) -> InstallPlan:
    return current_install_plan(
        update_type,
        stored.install_at,
        stored.window_end,
        now=now,
        timezone="Europe/Berlin",
        device_uuid=DEVICE,
    )


@pytest.mark.parametrize("update_type", [UpdateType.SCHEDULED, UpdateType.URGENT])
def test_stored_plan_stays_while_its_window_is_open(update_type: UpdateType) -> None:
    stored = plan(update_type, utc(2027, 6, 10, 12, 0))
    for now in (utc(2027, 6, 10, 18, 0), stored.install_at, utc(2027, 6, 11, 2, 59, 59)):
        current = replan(stored, update_type, now)
        assert (current.install_at, current.window_end) == (stored.install_at, stored.window_end)
        assert current.idle_seconds_required == stored.idle_seconds_required


@pytest.mark.parametrize("update_type", [UpdateType.SCHEDULED, UpdateType.URGENT])
def test_missed_window_moves_to_the_following_one(update_type: UpdateType) -> None:
    stored = plan(update_type, utc(2027, 6, 10, 12, 0))
    current = replan(stored, update_type, stored.window_end)  # type: ignore[arg-type]
    assert current.install_at == utc(2027, 6, 12, 0, 31, 55)
    assert current.window_end == utc(2027, 6, 12, 3, 0)


def test_device_back_inside_a_later_window_before_its_slot_uses_that_window() -> None:
    stored = plan(UpdateType.SCHEDULED, utc(2027, 6, 10, 12, 0))
    back = utc(2027, 6, 14, 0, 10)  # days later, 02:10 CEST, slot 02:31:55 still ahead
    assert replan(stored, UpdateType.SCHEDULED, back).install_at == utc(2027, 6, 14, 0, 31, 55)


def test_instant_plan_is_never_replanned() -> None:
    stored = plan(UpdateType.INSTANT, utc(2027, 6, 10, 12, 0))
    later = replan(stored, UpdateType.INSTANT, utc(2027, 6, 20, 12, 0))
    assert later.install_at == stored.install_at and later.window_end is None


# --------------------------------------------------------------------------- decide_install


def directive(
    update_type: UpdateType,
    install_at: datetime,
    window_end: datetime | None = None,
    idle: int | None = None,
) -> InstallDirective:
    return InstallDirective(
        update_id=7,
        version="v1.2.3",
        update_type=update_type,
        status=UpdateStatus.PENDING,
        install_at=install_at,
        window_end=window_end,
        idle_seconds_required=idle,
        size=1024,
        manifest_url="/m",
        signature_url="/s",
        download_url="/d",
    )


SLOT, END = utc(2027, 6, 11, 0, 31, 55), utc(2027, 6, 11, 3, 0)


def test_instant_directive_installs_now() -> None:
    decision = decide_install(
        directive(UpdateType.INSTANT, utc(2027, 6, 10, 12, 0)),
        now=utc(2027, 6, 10, 12, 4),
        idle_seconds=0,
    )
    assert decision.install_now and decision.wake_at is None


def test_scheduled_waits_for_its_slot_and_wakes_there() -> None:
    decision = decide_install(
        directive(UpdateType.SCHEDULED, SLOT, END),
        now=SLOT - timedelta(seconds=1),
        idle_seconds=None,
    )
    assert not decision.install_now
    assert decision.wake_at == SLOT


@pytest.mark.parametrize("now", [SLOT, SLOT + timedelta(hours=1), END - timedelta(microseconds=1)])
def test_scheduled_installs_inside_its_window(now: datetime) -> None:
    assert decide_install(
        directive(UpdateType.SCHEDULED, SLOT, END), now=now, idle_seconds=None
    ).install_now


def test_scheduled_after_the_window_waits_for_the_server_to_replan() -> None:
    decision = decide_install(
        directive(UpdateType.SCHEDULED, SLOT, END), now=END, idle_seconds=99999
    )
    assert not decision.install_now
    assert decision.wake_at is None
    assert "re-plans" in decision.reason


def test_decision_uses_the_given_clock_in_any_offset() -> None:
    now = (SLOT + timedelta(seconds=5)).astimezone(fixed(-10))
    assert decide_install(
        directive(UpdateType.SCHEDULED, SLOT, END), now=now, idle_seconds=None
    ).install_now


def test_urgent_installs_after_an_hour_of_idle_long_before_the_deadline() -> None:
    d = directive(UpdateType.URGENT, SLOT, END, idle=3600)
    now = SLOT - timedelta(hours=10)
    assert decide_install(d, now=now, idle_seconds=3600).install_now
    assert not decide_install(d, now=now, idle_seconds=3599.9).install_now


def test_urgent_installs_at_the_deadline_without_idle() -> None:
    d = directive(UpdateType.URGENT, SLOT, END, idle=3600)
    assert decide_install(d, now=SLOT, idle_seconds=0).install_now
    assert decide_install(d, now=SLOT, idle_seconds=None).install_now


def test_urgent_wakes_when_the_idle_hour_would_be_complete() -> None:
    d = directive(UpdateType.URGENT, SLOT, END, idle=3600)
    now = SLOT - timedelta(hours=5)
    decision = decide_install(d, now=now, idle_seconds=600)
    assert not decision.install_now
    assert decision.wake_at == now + timedelta(seconds=3000)


def test_urgent_wakes_at_the_deadline_when_it_comes_first() -> None:
    d = directive(UpdateType.URGENT, SLOT, END, idle=3600)
    now = SLOT - timedelta(minutes=10)
    assert decide_install(d, now=now, idle_seconds=0).wake_at == SLOT


def test_urgent_with_unknown_idle_time_waits_for_the_deadline() -> None:
    d = directive(UpdateType.URGENT, SLOT, END, idle=3600)
    decision = decide_install(d, now=SLOT - timedelta(hours=5), idle_seconds=None)
    assert not decision.install_now
    assert decision.wake_at == SLOT


def test_urgent_without_idle_requirement_uses_one_hour() -> None:
    d = directive(UpdateType.URGENT, SLOT, END, idle=None)
    now = SLOT - timedelta(hours=5)
    assert decide_install(d, now=now, idle_seconds=3600).install_now
    assert not decide_install(d, now=now, idle_seconds=3599).install_now


def test_urgent_after_its_window_closed_installs_only_when_idle() -> None:
    d = directive(UpdateType.URGENT, SLOT, END, idle=3600)
    now = END + timedelta(hours=6)  # the device was off during the night
    busy = decide_install(d, now=now, idle_seconds=60)
    assert not busy.install_now
    assert busy.wake_at == now + timedelta(seconds=3540)
    assert decide_install(d, now=now, idle_seconds=4000).install_now


def test_decide_install_refuses_bad_clock_or_idle_values() -> None:
    d = directive(UpdateType.URGENT, SLOT, END, idle=3600)
    with pytest.raises(ScheduleError, match="timezone-aware"):
        decide_install(d, now=datetime(2027, 6, 10), idle_seconds=0)
    with pytest.raises(ScheduleError, match="non-negative"):
        decide_install(d, now=SLOT, idle_seconds=-1)


# --------------------------------------------------------------------------- plan_rollout


NOW = utc(2027, 6, 10, 12, 0)


def facts(
    name: str,
    zone: str = "Europe/Berlin",
    seen_ago: float | None = 30,
    version: str | None = "v1.2.2",
    device: uuid.UUID = DEVICE,
) -> DeviceFacts:
    seen = None if seen_ago is None else NOW - timedelta(seconds=seen_ago)
    return DeviceFacts(device, name, zone, seen, version)


def test_instant_rollout_gives_rows_to_online_devices_only() -> None:
    fleet = [
        facts("kitchen", seen_ago=300),
        facts("garage", seen_ago=2 * 3600 + 13 * 60),
        facts("attic", seen_ago=None),
    ]
    kitchen, garage, attic = plan_rollout(UpdateType.INSTANT, "v1.2.3", fleet, now=NOW)
    assert kitchen.gets_row and kitchen.install_at_utc == NOW
    assert kitchen.reason == "online: installs at its next check"
    assert not garage.gets_row and garage.install_at_utc is None
    assert (
        garage.reason
        == "offline for 2 h 13 min (> 300 s): gets it at its next heartbeat and installs then"
    )
    assert not attic.gets_row
    assert attic.reason.startswith("never seen (> 300 s)")


def test_devices_already_on_the_version_or_newer_get_no_row() -> None:
    fleet = [facts("a", version="v1.2.3"), facts("b", version="v1.10.0"), facts("c", version=None)]
    same, newer, unknown = plan_rollout(UpdateType.SCHEDULED, "v1.2.3", fleet, now=NOW)
    assert (same.gets_row, same.reason) == (False, "already runs v1.2.3")
    assert (newer.gets_row, newer.reason) == (False, "already runs v1.10.0 (newer than v1.2.3)")
    assert unknown.gets_row


def test_scheduled_rollout_gives_every_device_its_local_slot() -> None:
    other = uuid.UUID("00000000-0000-4000-8000-000000000001")
    fleet = [facts("berlin"), facts("new-york", "America/New_York", seen_ago=86400, device=other)]
    berlin, new_york = plan_rollout(UpdateType.SCHEDULED, "v1.2.3", fleet, now=NOW)
    assert berlin.gets_row and new_york.gets_row
    assert berlin.install_at_utc == utc(2027, 6, 11, 0, 31, 55)
    assert berlin.install_at_local is not None and berlin.install_at_local.hour == 2
    assert berlin.install_at_local.tzname() == "CEST"
    assert new_york.install_at_local is not None and new_york.install_at_local.tzname() == "EDT"
    assert new_york.install_at_local.replace(tzinfo=None) >= datetime(2027, 6, 11, 2, 0)
    assert "offline for 1 d" in new_york.reason
    assert [p.device_name for p in (berlin, new_york)] == ["berlin", "new-york"]


def test_urgent_rollout_explains_the_idle_rule() -> None:
    (only,) = plan_rollout(UpdateType.URGENT, "v1.2.3", [facts("desk")], now=NOW, idle_seconds=7200)
    assert only.reason == "urgent: after 2 h idle, at the latest 2027-06-11 02:31 CEST"


def test_rollout_refuses_a_bad_version() -> None:
    with pytest.raises(VersionError):
        plan_rollout(UpdateType.INSTANT, "1.2.3", [], now=NOW)


def test_rollout_uses_the_servers_online_threshold() -> None:
    fleet = [facts("kitchen", seen_ago=100)]
    (strict,) = plan_rollout(UpdateType.INSTANT, "v1.2.3", fleet, now=NOW, online_within_seconds=60)
    (default,) = plan_rollout(UpdateType.INSTANT, "v1.2.3", fleet, now=NOW)
    assert not strict.gets_row and "(> 60 s)" in strict.reason
    assert default.gets_row


def test_reason_names_both_abbreviations_when_clocks_go_back_inside_the_window() -> None:
    result = plan(UpdateType.SCHEDULED, utc(2027, 10, 30, 12, 0))
    assert result.install_at == utc(2027, 10, 31, 0, 31, 55)
    assert result.window_end == utc(2027, 10, 31, 3, 0)  # 3 h: 02:00 CEST to 04:00 CET
    assert result.reason == (
        "scheduled: maintenance window 02:00 CEST–04:00 CET Europe/Berlin, starts 2027-10-31 02:31 CEST"
    )


def test_stored_plan_keeps_its_operator_reason() -> None:
    stored = plan(UpdateType.SCHEDULED, utc(2027, 6, 10, 12, 0))
    assert replan(stored, UpdateType.SCHEDULED, utc(2027, 6, 10, 20, 0)).reason == stored.reason
    urgent = plan(UpdateType.URGENT, utc(2027, 6, 10, 12, 0))
    assert replan(urgent, UpdateType.URGENT, utc(2027, 6, 10, 20, 0)).reason == urgent.reason


# --------------------------------------------------------------------------- the offered window


def test_a_scheduled_offer_must_name_a_window_no_longer_than_any_server_may_set() -> None:
    evening = utc(2027, 6, 10, 20, 36)
    # A window at any hour of day is still a window: its time of day is the server's setting.
    assert (
        check_offered_window(directive(UpdateType.SCHEDULED, evening, evening + timedelta(hours=3)))
        is None
    )
    longest = evening + timedelta(seconds=MAX_WINDOW_SECONDS)
    assert check_offered_window(directive(UpdateType.SCHEDULED, evening, longest)) is None
    refused = {
        "no window_end": directive(UpdateType.SCHEDULED, evening),
        "years": directive(UpdateType.SCHEDULED, evening, utc(2030, 1, 1)),
        "a second too long": directive(
            UpdateType.SCHEDULED, evening, longest + timedelta(seconds=1)
        ),
        "ends at the slot": directive(UpdateType.SCHEDULED, evening, evening),
        "ends before": directive(UpdateType.SCHEDULED, evening, evening - timedelta(hours=1)),
    }
    for name, offer in refused.items():
        assert check_offered_window(offer) is not None, name
    # The server's own bound is the same one.
    from javia_updates.settings import ServerSettings

    assert ServerSettings.model_fields["window_seconds"].metadata[-1].le == MAX_WINDOW_SECONDS
    # Other types are not windows of a scheduled update.
    assert check_offered_window(directive(UpdateType.INSTANT, evening)) is None


def test_a_pinned_window_replaces_the_servers_and_is_kept_while_open() -> None:
    evening = utc(2027, 6, 10, 20, 36)  # 22:36 in Berlin
    offer = directive(
        UpdateType.SCHEDULED, evening - timedelta(minutes=1), evening + timedelta(hours=3)
    )
    pin = {"timezone": "Europe/Berlin", "device_uuid": DEVICE, "window_start": time(2, 0)}
    own = plan_in_own_window(offer, now=evening, window_seconds=10_800, **pin)
    assert own.install_at == SLOT and own.window_end == END
    assert decide_install(own, now=evening, idle_seconds=None).install_now is False
    # Late in its own window (after its slot) the plan it already made still stands.
    late = END - timedelta(minutes=5)
    kept = plan_in_own_window(offer, now=late, window_seconds=10_800, previous=own, **pin)
    assert kept.install_at == SLOT and decide_install(kept, now=late, idle_seconds=None).install_now
    # Other types are bounded elsewhere.
    urgent = directive(UpdateType.URGENT, evening, evening + timedelta(hours=3), idle=3600)
    assert plan_in_own_window(urgent, now=evening, window_seconds=10_800, **pin) is urgent
