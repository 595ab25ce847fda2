"""The three update types with real processes under a controlled clock (issue: update policies).

The server's maintenance window and urgent idle time are settings, so the tests
open a 36-second window a few seconds from now and ask for 3 s of idle time: the
same rules as production (02:00 local, 3 h, 1 h), on a clock a test can wait for.
Devices sit in zones that are always UTC+0 so "a few seconds from now" is the same
wall time for all of them.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from javia_agent.activity import record_activity
from javia_devtools.demo import FleetDevice, LocalFleet, example_app_dir

from .test_update_loop import final_rows, wait_for

pytestmark = pytest.mark.e2e

WINDOW_SECONDS = 36


def _fleet(root: Path, **server_env: str) -> LocalFleet:
    fleet = LocalFleet(root, heartbeat_seconds=0.5, health_seconds=0.5)
    fleet.generate_key()
    fleet.start_server(extra_env=server_env)
    return fleet


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    target = tmp_path / "pi_client"
    shutil.copytree(example_app_dir(), target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def _provision(
    fleet: LocalFleet, app_dir: Path, names_and_zones, start_agents: bool = True
) -> list[FleetDevice]:
    initial = fleet.build_package(
        app_dir, "v1.0.0", "scheduled", fleet.root / "packages" / "v1.0.0"
    )
    devices = [
        fleet.add_device(name, zone, initial_package=initial) for name, zone in names_and_zones
    ]
    if start_agents:
        for device in devices:
            fleet.start_agent(device)
        with fleet.client() as client:
            wait_for(
                lambda: all(d.last_seen for d in client.list_devices()),
                20,
                "first heartbeats",
            )
    return devices


def _utc(moment: datetime | None) -> datetime:
    assert moment is not None
    return moment.astimezone(UTC)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[LocalFleet]:
    fleet = _fleet(tmp_path)
    try:
        yield fleet
    finally:
        fleet.stop()


def test_scheduled_update_waits_for_each_devices_slot_in_the_window(
    fleet: LocalFleet, app_dir: Path
):
    devices = _provision(fleet, app_dir, [("utc", "UTC"), ("abidjan", "Africa/Abidjan")])
    pids = {d.name: d.app_status()["pid"] for d in devices}
    # The operator moves the maintenance window: it now opens 20 s from now (room for a restart
    # and a publish on a loaded machine) and lasts 36 s.
    opens = (datetime.now(UTC) + timedelta(seconds=20)).replace(microsecond=0)
    fleet.restart_server(
        extra_env={
            "JAVIA_WINDOW_START": opens.strftime("%H:%M:%S"),
            "JAVIA_WINDOW_SECONDS": str(WINDOW_SECONDS),
        }
    )

    update = fleet.publish(app_dir, "v1.1.0", "scheduled")
    rows = final_rows(fleet, update.id)
    assert len(rows) == 2
    for row in rows.values():
        slot = _utc(row.scheduled_for)
        assert opens <= slot < opens + timedelta(seconds=WINDOW_SECONDS * 2 / 3 + 1), row
    # Before the window the update is prepared (the default 6 h lead): downloaded,
    # verified and unpacked next to the running release, reported staged; the
    # applications keep running their old release.
    wait_for(
        lambda: all(r.status == "staged" for r in final_rows(fleet, update.id).values()),
        15,
        "both devices to stage the update ahead of the window",
    )
    time.sleep(max(0.0, (opens - datetime.now(UTC)).total_seconds() - 2))
    assert all(r.status == "staged" for r in final_rows(fleet, update.id).values())
    assert {d.name: d.app_status()["pid"] for d in devices} == pids
    for device in devices:
        assert (device.install_root / "releases" / "v1.1.0" / "VERSION").is_file()
        assert (device.install_root / "current").resolve().name == "v1.0.0"
    staged_at = datetime.now(UTC)

    done = wait_for(
        lambda: (
            (r := final_rows(fleet, update.id))
            and all(x.status == "completed" for x in r.values())
            and r
        ),
        WINDOW_SECONDS + 30,
        "both devices to install in the window",
    )
    for device in devices:
        row = done[device.device_uuid]
        # The new release started (the switch) in the slot; the download ran ahead of
        # the window (the row's started_at is the download's start).
        switched = datetime.fromisoformat(device.app_status()["started_at"])
        assert switched >= _utc(row.scheduled_for) - timedelta(seconds=1), (
            "installed before its slot"
        )
        assert switched < opens + timedelta(seconds=WINDOW_SECONDS), (
            "installed after the window closed"
        )
        assert _utc(row.started_at) < staged_at, "downloaded in the window, not ahead of it"
        assert device.app_status()["version"] == "v1.1.0"
        assert device.app_status()["pid"] != pids[device.name]
        # In the window the agent went on from the staged release: no second download.
        log = device.agent_log.read_text(encoding="utf-8", errors="replace")
        assert "resuming update v1.1.0" in log and "at staged" in log, log[-3000:]
        assert log.count("installing update v1.1.0") == 1, "staged once, never from scratch"


def test_urgent_update_waits_for_idle_then_installs_before_the_window(
    fleet: LocalFleet, app_dir: Path
):
    (busy,) = _provision(fleet, app_dir, [("busy", "UTC")])
    # Today's 3 h window closed 30 min ago, so the next opens in ~20.5 h; 3 s of quiet counts as idle.
    far = datetime.now(UTC) - timedelta(hours=3, minutes=30)
    fleet.restart_server(
        extra_env={"JAVIA_WINDOW_START": far.strftime("%H:%M:%S"), "JAVIA_URGENT_IDLE_SECONDS": "3"}
    )
    activity = busy.state_dir / "activity" / "activity.json"  # the agent's default record
    activity.parent.mkdir(exist_ok=True)
    pid = busy.app_status()["pid"]

    # Someone keeps talking to the assistant while the update is published and 6 s after.
    talking = threading.Event()
    talking.set()

    def talk() -> None:
        while talking.is_set():
            record_activity(activity)
            time.sleep(0.3)

    speaker = threading.Thread(target=talk, daemon=True)
    speaker.start()
    try:
        update = fleet.publish(app_dir, "v1.1.0", "urgent")
        (row,) = final_rows(fleet, update.id).values()
        assert _utc(row.scheduled_for) > datetime.now(UTC) + timedelta(hours=19), (
            "deadline is the window"
        )
        time.sleep(6)
        # Prepared while the assistant is in use; installed only at the idle moment.
        assert final_rows(fleet, update.id)[busy.device_uuid].status == "staged"
        assert busy.app_status()["pid"] == pid
        assert (busy.install_root / "releases" / "v1.1.0").is_dir()
    finally:
        talking.clear()
        speaker.join()
    last_activity = datetime.now(UTC)

    wait_for(
        lambda: (r := final_rows(fleet, update.id)[busy.device_uuid]).status == "completed" and r,
        30,
        "the urgent update to install once idle",
    )
    switched = datetime.fromisoformat(busy.app_status()["started_at"])
    assert switched >= last_activity + timedelta(seconds=2.5), "did not wait for 3 s of idle"
    assert busy.app_status()["version"] == "v1.1.0"


def test_instant_update_reaches_online_devices_now_and_offline_ones_at_their_next_heartbeat(
    fleet: LocalFleet, app_dir: Path
):
    if True:
        online, offline = _provision(
            fleet, app_dir, [("online", "UTC"), ("offline", "Asia/Kolkata")], start_agents=False
        )
        fleet.start_agent(online)
        with fleet.client() as client:
            wait_for(
                lambda: client.get_device(online.device_uuid).last_seen,
                20,
                "online's heartbeat",
            )
            assert client.get_device(offline.device_uuid).last_seen is None

        update = fleet.publish(app_dir, "v1.1.0", "instant")
        rows = final_rows(fleet, update.id)
        assert set(rows) == {online.device_uuid}, (
            "only devices seen in the last 300 s get a row at publish"
        )
        wait_for(
            lambda: final_rows(fleet, update.id)[online.device_uuid].status == "completed",
            30,
            "online",
        )
        assert offline.app_status()["version"] == "v1.0.0"

        fleet.start_agent(offline)  # the device comes back: reconciled at its next heartbeat
        row = wait_for(
            lambda: (
                (r := final_rows(fleet, update.id).get(offline.device_uuid))
                and r.status == "completed"
                and r
            ),
            30,
            "the returning device to install",
        )
        assert offline.app_status()["version"] == "v1.1.0"
        assert row.completed_at is not None
