"""Idle time: measured on a monotonic clock, immune to wall-clock jumps (DESIGN.md section 7)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from javia_agent.activity import ACTIVITY_FILE_ENV, IdleTracker, record_activity


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_idle_time_ignores_wall_clock_jumps_in_the_activity_file(tmp_path: Path) -> None:
    path = tmp_path / "activity.json"
    clock = FakeClock()
    tracker = IdleTracker(path, monotonic=clock)
    wall = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

    record_activity(path, now=wall)
    assert tracker.idle_seconds() == 0.0
    clock.now += 600
    assert tracker.idle_seconds() == 600.0

    # NTP steps the wall clock back a year, and the app records activity then:
    record_activity(path, now=wall - timedelta(days=365))
    assert tracker.idle_seconds() == 0.0  # activity is activity, whatever its wall time
    clock.now += 1200
    # ... and forward ten years: idle time is still what the monotonic clock says.
    assert tracker.idle_seconds() == 1200.0
    record_activity(path, now=wall + timedelta(days=3650))
    assert tracker.idle_seconds() == 0.0
    clock.now += 30
    assert tracker.idle_seconds() == 30.0


def test_unchanged_content_is_not_activity() -> None:
    clock = FakeClock()
    content = {"value": b'{"counter": 1}'}
    tracker = IdleTracker(Path("unused"), monotonic=clock, reader=lambda path: content["value"])
    assert tracker.idle_seconds() == 0.0
    clock.now += 3599
    assert tracker.idle_seconds() == 3599.0
    content["value"] = b'{"counter": 2}'
    clock.now += 1
    assert tracker.idle_seconds() == 0.0


def test_idle_time_is_unknown_until_the_application_ever_recorded_activity() -> None:
    clock = FakeClock()
    content: dict[str, bytes | None] = {"value": None}
    tracker = IdleTracker(Path("unused"), monotonic=clock, reader=lambda path: content["value"])
    assert tracker.idle_seconds() is None
    clock.now += 7200
    assert tracker.idle_seconds() is None
    content["value"] = b"{}"
    assert tracker.idle_seconds() == 0.0


def test_polling_between_checks_notes_the_time_of_the_change() -> None:
    clock = FakeClock()
    content = {"value": b"1"}
    tracker = IdleTracker(Path("unused"), monotonic=clock, reader=lambda path: content["value"])
    tracker.poll()
    clock.now += 100
    content["value"] = b"2"
    assert tracker.poll() is True  # the agent's sleep loop polls every few seconds
    clock.now += 500
    assert tracker.idle_seconds() == 500.0


def test_record_activity_counts_up_and_honours_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state" / "activity.json"
    monkeypatch.setenv(ACTIVITY_FILE_ENV, str(path))
    assert record_activity() == path
    record_activity()
    body = json.loads(path.read_text())
    assert body["counter"] == 2 and "wall_time" in body
    assert [p.name for p in path.parent.iterdir()] == ["activity.json"]
