"""The wake-up channel end to end: a real server, a real agent, the default 300 s heartbeat.

Issue 14's target: an instant update published while a device is connected
starts on that device within 5 s, and a pause reaches it within seconds,
although its next heartbeat is minutes away. (SQLite here; the two-replica
PostgreSQL case is ``tests/backends/test_wakeup_replicas.py``.)
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from javia_devtools.demo import LocalFleet, example_app_dir

from .test_update_loop import final_rows, wait_for

pytestmark = pytest.mark.e2e

STARTED = {"downloading", "installing", "completed"}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[LocalFleet]:
    fleet = LocalFleet(tmp_path, heartbeat_seconds=300, health_seconds=0.5)
    fleet.generate_key()
    fleet.start_server()
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    target = tmp_path / "pi_client"
    shutil.copytree(example_app_dir(), target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def held(fleet: LocalFleet) -> int:
    answer = httpx.get(
        f"{fleet.url}/api/v1/wakeups", headers={"X-API-Key": fleet.api_key}, timeout=10
    )
    return int(answer.json()["held"])


def last_heartbeat(state_dir: Path) -> datetime | None:
    try:
        return datetime.fromisoformat(
            json.loads((state_dir / "heartbeat.json").read_text())["received_at"]
        )
    except (OSError, ValueError, KeyError):
        return None


def test_an_instant_update_starts_within_5_s_and_a_pause_arrives_within_seconds(
    fleet: LocalFleet, app_dir: Path
) -> None:
    initial = fleet.build_package(
        app_dir, "v1.0.0", "scheduled", fleet.root / "packages" / "v1.0.0"
    )
    device = fleet.add_device("kitchen", "UTC", initial_package=initial)
    fleet.start_agent(device)
    wait_for(lambda: last_heartbeat(device.state_dir), 30, "the first heartbeat")
    wait_for(lambda: held(fleet) == 1, 30, "the agent to hold the wake-up channel")

    update = fleet.publish(app_dir, "v1.1.0", "instant")
    published = time.monotonic()
    row = wait_for(
        lambda: (r := final_rows(fleet, update.id)[device.device_uuid]).status in STARTED and r,
        5,
        "the instant update to start on the device (the next heartbeat is 300 s away)",
    )
    assert time.monotonic() - published < 5
    assert row.started_at is not None and row.started_at - update.created_at < timedelta(seconds=5)
    wait_for(
        lambda: final_rows(fleet, update.id)[device.device_uuid].status == "completed",
        60,
        "completed",
    )
    assert device.app_status()["version"] == "v1.1.0"

    # A scheduled update wakes the device with a spread of up to 120 s; its pause at once.
    fleet.publish(app_dir, "v1.2.0", "scheduled")
    wait_for(lambda: held(fleet) == 1, 30, "the agent to hold the channel again")
    paused_at = datetime.now(UTC)
    with fleet.client() as client:
        client.rollout_command("v1.2.0", "pause", "checking a report")
    seen = wait_for(
        lambda: (beat := last_heartbeat(device.state_dir)) and beat >= paused_at and beat,
        5,
        "a heartbeat after the pause",
    )
    assert seen - paused_at < timedelta(seconds=5)
    assert device.app_status()["version"] == "v1.1.0"
