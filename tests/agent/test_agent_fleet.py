"""Rollback, refusal and report delivery with real processes: server, agent, application.

- a release whose process exits 1 is rolled back: the old release runs
  again, the server records rolled_back, the heartbeat carries the old version
  and the server never offers that version again; a republish under a new
  version installs;
- a disk too small for the release is refused before anything is switched;
- status reports queued while the server is down are delivered, in order,
  once it is back.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import httpx
import pytest

from javia_devtools.demo import FleetDevice

from .fleet import (
    CrashFleet,
    app_alive,
    assert_complete_tree,
    current_version,
    heartbeat_answer,
    pause_env,
    provisioned_v1,
    saved_state,
    starts_of,
    wait_for,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def device(fleet: CrashFleet, request: pytest.FixtureRequest) -> Iterator[FleetDevice]:
    """A registered device with v1.0.0 installed; the agent starts it when it starts."""
    with provisioned_v1(fleet, request.node.name) as device:
        yield device


def _start_running_v1(fleet: CrashFleet, device: FleetDevice) -> int:
    """Start the agent; return the pid of the v1.0.0 application it starts."""
    fleet.start_agent_with(device)
    status = wait_for(
        lambda: (s := device.app_status()) and s["version"] == "v1.0.0" and app_alive(device) and s,
        30,
        "the agent to start v1.0.0",
    )
    return int(status["pid"])


def test_a_release_that_exits_1_is_rolled_back_and_never_offered_again(
    fleet: CrashFleet, device: FleetDevice
) -> None:
    old_pid = _start_running_v1(fleet, device)
    bad = fleet.package("v2.0.0", fail=True)
    update_id = fleet.publish_to(device, bad)

    row = wait_for(
        lambda: (r := fleet.row(device, update_id)) and r.status == "rolled_back" and r,
        60,
        "rolled_back on the server",
    )
    assert "v2.0.0 stopped running" in row.error_message
    status = wait_for(
        lambda: (s := device.app_status()) and s["pid"] != old_pid and app_alive(device) and s,
        20,
        "the old release to be restarted",
    )
    assert status["version"] == "v1.0.0" and current_version(device) == "v1.0.0"
    assert_complete_tree(
        device.install_root / "releases" / "v1.0.0", fleet.package("v1.0.0").manifest
    )

    # Several heartbeats later: the device says v1.0.0 and is offered nothing.
    seen: set[str] = set()

    def later_heartbeats() -> bool:
        answer = heartbeat_answer(device)
        if answer and answer["update"] is None:
            seen.add(answer["received_at"])
        return len(seen) >= 3

    wait_for(later_heartbeats, 30, "three heartbeats without an offer")
    with fleet.client() as admin:
        assert admin.get_device(device.device_uuid).current_version == "v1.0.0"
    assert starts_of(device, "v2.0.0") == 1  # tried once, not in a loop
    assert saved_state(device).failed_versions == ["v2.0.0"]
    assert fleet.final_transitions(device, update_id) == ["rolled_back"]

    # The operator fixes it and republishes under a new version: that one installs.
    fixed = fleet.package("v2.0.1")
    fixed_id = fleet.publish_to(device, fixed)
    wait_for(
        lambda: (r := fleet.row(device, fixed_id)) and r.status == "completed",
        60,
        "the republished version to complete",
    )
    wait_for(
        lambda: (s := device.app_status()) and s["version"] == "v2.0.1" and app_alive(device),
        20,
        "v2.0.1 to run",
    )


def test_too_little_disk_space_is_refused_before_anything_is_switched(
    fleet: CrashFleet, device: FleetDevice
) -> None:
    fleet.agent_overrides[device.name] = {
        "JAVIA_AGENT_DISK_RESERVE_BYTES": str(10**15),
        "JAVIA_AGENT_RETRY_DEADLINE_SECONDS": "0",  # a full disk is retried until the deadline
    }
    old_pid = _start_running_v1(fleet, device)
    new = fleet.package("v3.0.0")
    update_id = fleet.publish_to(device, new)

    row = wait_for(
        lambda: (r := fleet.row(device, update_id)) and r.status == "failed" and r,
        60,
        "failed on the server",
    )
    message = row.error_message
    assert "not enough disk space for v3.0.0" in message
    assert f"download {new.manifest.archive.size:,}" in message
    assert f"unpacked release {new.manifest.unpacked_size:,}" in message
    assert "reserve 1,000,000,000,000,000 bytes" in message and "are free" in message
    assert device.app_status()["pid"] == old_pid and app_alive(device)  # never stopped
    assert current_version(device) == "v1.0.0"
    assert not (device.install_root / "releases" / "v3.0.0").exists()
    downloads = device.state_dir / "downloads"
    assert not downloads.exists() or not any(downloads.iterdir())
    assert starts_of(device, "v3.0.0") == 0


def test_reports_queued_while_the_server_is_down_are_delivered_in_order_when_it_returns(
    fleet: CrashFleet, device: FleetDevice
) -> None:
    new = fleet.package("v4.0.0")
    update_id = fleet.publish_to(device, new)
    # Hold the agent once the download is done, take the server down, let the agent go on.
    fleet.start_agent_with(device, pause_env("verifying"))
    marker = device.state_dir / "paused-at-verifying"
    wait_for(marker.exists, 60, "the download to finish")
    assert fleet.row(device, update_id).status == "downloading"
    assert fleet.server is not None
    fleet.server.send_signal(signal.SIGTERM)
    fleet.server.wait(timeout=15)
    try:
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{fleet.url}/api/v1/health", timeout=1)
        marker.unlink()

        # The agent installs on its own and queues its reports on disk.
        outbox = device.state_dir / "outbox"
        state = wait_for(
            lambda: (s := saved_state(device)).update is None and s, 60, "the install to end"
        )
        assert state.current_version == "v4.0.0"
        queued = [json.loads(path.read_text()) for path in sorted(outbox.glob("*.json"))]
        assert [(q["update_id"], q["report"]["status"]) for q in queued] == [
            (update_id, "installing"),
            (update_id, "completed"),
        ]
    finally:
        fleet.start_server()

    wait_for(
        lambda: (r := fleet.row(device, update_id)) and r.status == "completed",
        60,
        "the queued reports to arrive",
    )
    wait_for(lambda: not any(outbox.glob("*.json")), 20, "the outbox to drain")
    answer = httpx.get(
        f"{fleet.url}/api/v1/audit",
        params={"limit": 1000},
        headers={"X-API-Key": fleet.api_key},
        timeout=10,
    ).json()
    transitions = [
        (entry["details"]["from"], entry["details"]["to"])
        for entry in reversed(answer["items"])  # oldest first
        if entry["action"] == "device_update.status"
        and entry["actor"] == f"device:{device.device_uuid}"
        and entry["details"].get("update_id") == update_id
    ]
    assert transitions == [
        ("pending", "downloading"),
        ("downloading", "installing"),
        ("installing", "completed"),
    ]
    with fleet.client() as admin:
        wait_for(
            lambda: admin.get_device(device.device_uuid).current_version == "v4.0.0",
            20,
            "the heartbeat to carry v4.0.0",
        )
