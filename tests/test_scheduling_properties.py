"""General rules of ``javia_core.scheduling`` checked over many zones and instants.

The window rule (DESIGN.md section 4) is checked against an independent oracle
that walks the zone's wall clock minute by minute: a window for local date *d*
starts at the first instant at which the wall clock reaches *d* 02:00 for the
first time, whether by ticking (normal days, and the first pass of a doubled
hour) or by jumping over it (a spring-forward gap). Since 1990 every UTC offset
and transition in the zone database is a whole minute, so a minute grid sees
every such instant exactly.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from javia_core.models import InstallDirective, UpdateStatus, UpdateType
from javia_core.scheduling import (
    decide_install,
    is_online,
    next_window_start,
    plan_install,
    window_offset_seconds,
)

# "localtime" mirrors the host's configuration; every other name is a real zone.
ZONES = sorted(available_timezones() - {"localtime"})
FIRST, LAST = datetime(1990, 1, 1, tzinfo=UTC), datetime(2090, 12, 31, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
WINDOW_TIMES = [time(2, 0)] * 6 + [time(0, 0), time(1, 30), time(2, 30), time(3, 0), time(23, 30)]


def wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def first_window_start_by_walking(
    after: datetime, zone: ZoneInfo, at: time
) -> tuple[datetime, timedelta]:
    """The oracle: walk the wall clock from 30 h before ``after`` in minute steps.

    Returns the first instant later than ``after`` at which the wall clock reaches
    some date's ``at`` for the first time, and the largest backward step of the
    UTC offset seen on the way (0 if none).
    """
    grid = datetime.fromtimestamp((int(after.timestamp()) // 60) * 60, UTC) - timedelta(hours=30)
    highest = wall(grid, zone)
    largest_backward = timedelta(0)
    previous_offset = grid.astimezone(zone).utcoffset()
    while grid <= after:
        highest = max(highest, wall(grid, zone))
        grid += MINUTE
    highest = max(highest, wall(after, zone))
    while True:
        local = grid.astimezone(zone)
        offset = local.utcoffset()
        assert offset is not None and offset.total_seconds() % 60 == 0
        largest_backward = max(largest_backward, previous_offset - offset)  # type: ignore[operator]
        previous_offset = offset
        next_target = datetime.combine(highest.date(), at)
        if next_target <= highest:
            next_target = datetime.combine(highest.date() + timedelta(days=1), at)
        reading = local.replace(tzinfo=None)
        if reading >= next_target:
            return grid, largest_backward
        highest = max(highest, reading)
        grid += MINUTE


@lru_cache(maxsize=4096)
def offset_changes(zone_name: str, year: int) -> tuple[datetime, ...]:
    """Instants (UTC, whole seconds) at which the zone's UTC offset changes during ``year``."""
    zone = ZoneInfo(zone_name)
    changes = []
    day = datetime(year, 1, 1, tzinfo=UTC)
    before = day.astimezone(zone).utcoffset()
    while day.year == year:
        following = day + timedelta(days=1)
        after = following.astimezone(zone).utcoffset()
        if after != before:
            low, high = int(day.timestamp()), int(following.timestamp())
            while high - low > 1:
                middle = (low + high) // 2
                if datetime.fromtimestamp(middle, zone).utcoffset() == before:
                    low = middle
                else:
                    high = middle
            changes.append(datetime.fromtimestamp(high, UTC))
        before, day = after, following
    return tuple(changes)


@st.composite
def instants_near_offset_changes(draw: st.DrawFn) -> tuple[str, datetime]:
    """A zone and an instant within 30 h of one of its offset changes (or anywhere in a year)."""
    zone_name = draw(st.sampled_from(ZONES))
    year = draw(st.integers(1990, 2090))
    changes = offset_changes(zone_name, year)
    if changes:
        base = draw(st.sampled_from(changes))
        shift = draw(st.integers(-30 * 3600, 30 * 3600))
        instant = base + timedelta(seconds=shift)
        if draw(st.booleans()):
            instant += timedelta(microseconds=draw(st.integers(0, 999_999)))
    else:
        instant = datetime(year, 1, 1, tzinfo=UTC) + timedelta(
            seconds=draw(st.integers(0, 365 * 86400))
        )
    return zone_name, instant


def _changes_offset(zone_name: str) -> bool:
    zone = ZoneInfo(zone_name)
    samples = [datetime(y, m, 1, tzinfo=UTC) for y in (1995, 2011, 2027) for m in (1, 7)]
    return len({s.astimezone(zone).utcoffset() for s in samples}) > 1


# Zones whose offset changes in the sampled years: DST zones and a few that moved.
CHANGING_ZONES = [z for z in ZONES if _changes_offset(z)]


@st.composite
def window_times_inside_a_change(draw: st.DrawFn) -> tuple[str, datetime, time]:
    """A zone, an instant within 30 h of an offset change, and a window time the change
    swallows (spring-forward gap) or repeats (fall-back fold): the cases that matter."""
    zone_name = draw(st.sampled_from(CHANGING_ZONES))
    changes = ()
    while not changes:
        changes = offset_changes(zone_name, draw(st.integers(1990, 2090)))
    change = draw(st.sampled_from(changes))
    zone = ZoneInfo(zone_name)
    before = (change - timedelta(seconds=1)).astimezone(zone).utcoffset()
    after = change.astimezone(zone).utcoffset()
    assert before is not None and after is not None
    shift_minutes = abs(int((after - before).total_seconds()) // 60)
    first_affected = wall(change, zone) if after < before else wall(change, zone) - (after - before)
    inside = first_affected + timedelta(minutes=draw(st.integers(0, max(0, shift_minutes - 1))))
    instant = change + timedelta(seconds=draw(st.integers(-30 * 3600, 30 * 3600)))
    return zone_name, instant, inside.time()


anywhere = st.tuples(
    st.sampled_from(ZONES),
    st.datetimes(
        min_value=FIRST.replace(tzinfo=None),
        max_value=LAST.replace(tzinfo=None),
        timezones=st.just(UTC),
    ),
)


def check_window_rule(zone_name: str, after: datetime, at: time) -> None:
    zone = ZoneInfo(zone_name)
    result = next_window_start(after, zone_name, at)
    expected, largest_backward = first_window_start_by_walking(after, zone, at)
    assert result == expected, (zone_name, after.isoformat(), at)
    assert result.tzinfo is UTC

    # The rules as DESIGN.md section 4 states them, checked one by one.
    assert result > after
    # Consecutive windows are 24 h apart plus any backward offset change (a fall-back).
    assert result - after <= timedelta(hours=24) + largest_backward
    reading = wall(result, zone)
    if reading.time() != at:
        # Only a gap that swallowed ``at`` moves the start: the wall clock jumps over it here.
        before = wall(result - timedelta(seconds=1), zone)
        assert reading - before > timedelta(seconds=1)
        assert any(
            before < datetime.combine(before.date() + timedelta(days=days), at) < reading
            for days in (0, 1)
        )
    else:
        # Never the second occurrence of a doubled ``at``.
        assert result.astimezone(zone).fold == 0
    # No earlier instant in (after, result) shows ``at`` with fold=0.
    local_after = after.astimezone(zone).date()
    for days in range(-1, 3):
        candidate = datetime.combine(local_after + timedelta(days=days), at).replace(tzinfo=zone)
        exists = wall(candidate.astimezone(UTC), zone) == candidate.replace(tzinfo=None)
        if exists:
            assert not after < candidate < result, candidate.isoformat()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instants_near_offset_changes(), st.sampled_from(WINDOW_TIMES))
def test_window_start_matches_the_wall_clock_walk_near_offset_changes(
    zone_and_instant: tuple[str, datetime], at: time
) -> None:
    check_window_rule(*zone_and_instant, at)


@settings(max_examples=100, deadline=None)
@given(anywhere, st.sampled_from(WINDOW_TIMES))
def test_window_start_matches_the_wall_clock_walk_anywhere(
    zone_and_instant: tuple[str, datetime], at: time
) -> None:
    check_window_rule(*zone_and_instant, at)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(window_times_inside_a_change())
@example(("Pacific/Apia", datetime(2011, 12, 29, 13, tzinfo=UTC), time(2, 0)))
@example(("Pacific/Apia", datetime(2011, 12, 29, 13, tzinfo=UTC), time(13, 0)))
@example(("Pacific/Kwajalein", datetime(1993, 8, 20, 13, tzinfo=UTC), time(2, 0)))
@example(("Australia/Lord_Howe", datetime(2027, 10, 2, 0, tzinfo=UTC), time(2, 15)))
@example(("Antarctica/Troll", datetime(2027, 10, 30, 12, tzinfo=UTC), time(2, 0)))
def test_window_start_matches_the_wall_clock_walk_for_swallowed_or_doubled_times(
    case: tuple[str, datetime, time],
) -> None:
    check_window_rule(*case)


@settings(max_examples=200, deadline=None)
@given(instants_near_offset_changes())
def test_a_window_start_is_never_its_own_successor(zone_and_instant: tuple[str, datetime]) -> None:
    zone_name, instant = zone_and_instant
    start = next_window_start(instant, zone_name)
    following = next_window_start(start, zone_name)
    assert following > start
    # Just before a start, that start is next; in between two starts, the later one is.
    assert next_window_start(start - timedelta(microseconds=1), zone_name) == start
    assert next_window_start(start + (following - start) / 2, zone_name) == following


@settings(max_examples=300)
@given(st.uuids(), st.integers(1, 86400))
def test_offset_is_stable_and_inside_the_first_two_thirds(
    device: uuid.UUID, window_seconds: int
) -> None:
    offset = window_offset_seconds(device, window_seconds)
    assert offset == window_offset_seconds(str(device).upper(), window_seconds)
    assert 0 <= offset < max(1, window_seconds * 2 // 3)


@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2080, 1, 1), timezones=st.just(UTC)
    ),
    st.integers(-10_000, 10_000),
)
def test_online_means_seen_within_300_seconds(now: datetime, seconds_ago: int) -> None:
    last_seen = now - timedelta(seconds=seconds_ago)
    assert is_online(last_seen, now) == (seconds_ago <= 300)


@settings(max_examples=200, deadline=None)
@given(
    instants_near_offset_changes(),
    st.uuids(),
    st.sampled_from([UpdateType.SCHEDULED, UpdateType.URGENT]),
    st.sampled_from([600, 3600, 3 * 3600, 6 * 3600]),
)
def test_plans_fall_inside_a_window_with_time_to_finish(
    zone_and_instant: tuple[str, datetime],
    device: uuid.UUID,
    update_type: UpdateType,
    window_seconds: int,
) -> None:
    zone_name, now = zone_and_instant
    plan = plan_install(
        update_type, now=now, timezone=zone_name, device_uuid=device, window_seconds=window_seconds
    )
    assert plan.window_end is not None
    start = plan.window_end - timedelta(seconds=window_seconds)
    assert next_window_start(start - timedelta(microseconds=1), zone_name) == start  # a real window
    assert plan.install_at - start == timedelta(
        seconds=window_offset_seconds(device, window_seconds)
    )
    assert now <= plan.install_at < plan.window_end
    assert plan.window_end - plan.install_at > timedelta(seconds=window_seconds // 3 - 1)
    # The plan is the earliest possible: the previous window's slot for this device had passed.
    previous, candidate = None, next_window_start(start - timedelta(days=2), zone_name)
    while candidate < start:
        previous, candidate = candidate, next_window_start(candidate, zone_name)
    assert previous is not None
    assert previous + (plan.install_at - start) < now

    # And the agent, handed this plan, installs exactly inside [install_at, window_end).
    directive = InstallDirective(
        update_id=1,
        version="v1.0.0",
        update_type=update_type,
        status=UpdateStatus.PENDING,
        install_at=plan.install_at,
        window_end=plan.window_end,
        idle_seconds_required=plan.idle_seconds_required,
        size=1,
        manifest_url="/m",
        signature_url="/s",
        download_url="/d",
    )
    before = decide_install(directive, now=plan.install_at - timedelta(seconds=1), idle_seconds=0)
    assert not before.install_now and before.wake_at == plan.install_at
    assert decide_install(directive, now=plan.install_at, idle_seconds=0).install_now
    assert not decide_install(directive, now=plan.window_end, idle_seconds=0).install_now


def test_every_zone_has_a_window_tomorrow() -> None:
    """Every zone in the database resolves, so no device's timezone can break planning."""
    now = datetime(2027, 3, 28, 0, 30, tzinfo=UTC)
    for zone_name in ZONES:
        start = next_window_start(now, zone_name)
        assert now < start <= now + timedelta(hours=25), zone_name


def test_berlin_windows_over_a_year_are_23_24_or_25_hours_apart() -> None:
    start = next_window_start(datetime(2027, 1, 1, tzinfo=UTC), "Europe/Berlin")
    gaps = []
    for _ in range(365):
        following = next_window_start(start, "Europe/Berlin")
        gaps.append(following - start)
        start = following
    assert gaps.count(timedelta(hours=23)) == 1  # 2027-03-28
    assert gaps.count(timedelta(hours=25)) == 1  # 2027-10-31 -> 11-01
    assert gaps.count(timedelta(hours=24)) == 363


def test_largest_wait_in_the_zone_database_is_a_fall_back_plus_a_day() -> None:
    """The real bound on next_window_start(after) - after is 24 h + the backward shift.

    Antarctica/Vostok moved from +07 to -00 in 1994 (station closed for the
    season): the wait that night was 31 h; ordinary fall-backs give 25 h.
    """
    zone = ZoneInfo("Antarctica/Vostok")
    start = next_window_start(datetime(1994, 1, 30, 12, tzinfo=UTC), "Antarctica/Vostok")
    following = next_window_start(start, "Antarctica/Vostok")
    shift = start.astimezone(zone).utcoffset() - following.astimezone(zone).utcoffset()  # type: ignore[operator]
    assert following - start == timedelta(hours=24) + shift
    assert date(1994, 1, 31) <= start.astimezone(zone).date() <= date(1994, 2, 1)
