"""The update-type rules of DESIGN.md section 4 (javia_updates.scheduling)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from javia_updates.scheduling import next_window_start


def test_new_york_spring_forward_window_starts_after_the_gap() -> None:
    after = datetime(2027, 3, 13, 20, 0, tzinfo=timezone(timedelta(hours=-5)))
    start = next_window_start(after, "America/New_York")
    assert start == datetime(2027, 3, 14, 7, 0, tzinfo=UTC)
    assert start.utcoffset() == timedelta(0)


def test_berlin_fall_back_window_starts_at_first_occurrence() -> None:
    after = datetime(2027, 10, 30, 20, 0, tzinfo=timezone(timedelta(hours=2)))
    assert next_window_start(after, "Europe/Berlin") == datetime(2027, 10, 31, 0, 0, tzinfo=UTC)
