"""Rollouts with real agents: canary first, automatic halt, pause/resume/cancel, approval
(issue 13; docs/rollouts.md).

Every device is a real ``javia agent run`` process with the example application;
every operator step is the real ``javia`` CLI. Heartbeats come every 0.5 s and
the agent's health window is 1 s, so a soak of a few seconds is many heartbeats.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from javia_core.models import UpdateOut
from javia_devtools.demo import FleetDevice, LocalFleet

from .test_tags_cli import javia
from .test_update_loop import final_rows, provision, wait_for

pytestmark = pytest.mark.e2e

#: Several heartbeats (0.5 s each): long enough for a device that may start to start.
SEVERAL_HEARTBEATS = 4.0
NOT_STARTED = {"pending", "cancelled"}
#: The pause test's soak: room for the CLI to pause after the canary completes on a busy machine.
PAUSE_SOAK_SECONDS = 20


def run(fleet: LocalFleet, *args: str) -> str:
    """One ``javia`` command that must succeed; its stdout."""
    result = javia(fleet, *args)
    assert result.returncode == 0, f"javia {' '.join(args)}: {result.stderr}"
    return result.stdout


def rollout(fleet: LocalFleet, version: str) -> dict[str, Any]:
    """The ``rollout`` object of ``javia updates show VERSION --json``."""
    shown = json.loads(run(fleet, "updates", "show", version, "--json"))
    found: dict[str, Any] = shown["update"]["rollout"]
    return found


def phases(fleet: LocalFleet, version: str) -> dict[str, int]:
    """Each targeted device's phase, from ``javia updates plan VERSION --json``."""
    plan = json.loads(run(fleet, "updates", "plan", version, "--json"))
    return {entry["device_uuid"]: entry["phase"] for entry in plan}


def tag_canary(fleet: LocalFleet, device: FleetDevice) -> None:
    run(fleet, "devices", "tag", device.device_uuid, "--add", "canary")


def status(fleet: LocalFleet, update: UpdateOut, device: FleetDevice) -> str:
    return str(final_rows(fleet, update.id)[device.device_uuid].status)


def wait_completed(fleet: LocalFleet, update: UpdateOut, devices: list[FleetDevice]) -> None:
    wait_for(
        lambda: all(status(fleet, update, d) == "completed" for d in devices),
        45,
        f"{', '.join(d.name for d in devices)} to complete {update.version}",
    )
    for device in devices:
        wait_for(
            lambda d=device: (d.app_status() or {}).get("version") == update.version,
            10,
            f"{device.name}'s application on {update.version}",
        )


def assert_never_started(
    fleet: LocalFleet, update: UpdateOut, devices: list[FleetDevice], pids: dict[str, int]
) -> None:
    """Not one of ``devices`` started ``update``: row not started, nothing downloaded, same app."""
    rows = final_rows(fleet, update.id)
    for device in devices:
        row = rows.get(device.device_uuid)
        if row is not None:
            assert row.status in NOT_STARTED and row.started_at is None, (device.name, row)
        assert not (device.install_root / "releases" / update.version).exists(), device.name
        app = device.app_status()
        assert app is not None and app["version"] != update.version, device.name
        assert app["pid"] == pids[device.name], f"{device.name}'s application was restarted"


def app_pids(devices: list[FleetDevice]) -> dict[str, int]:
    pids = {}
    for device in devices:
        app = device.app_status()
        assert app is not None, device.name
        pids[device.name] = int(app["pid"])
    return pids


def fleet_of(fleet: LocalFleet, app_dir: Path, count: int) -> list[FleetDevice]:
    return provision(fleet, app_dir, [(f"pi-{index}", "UTC") for index in range(count)])


def split_by_phase(
    fleet: LocalFleet, version: str, devices: list[FleetDevice]
) -> tuple[list[FleetDevice], list[FleetDevice]]:
    """(devices of the first phase, the rest) as the server's plan places them."""
    placed = phases(fleet, version)
    first = [d for d in devices if placed[d.device_uuid] == 0]
    rest = [d for d in devices if placed[d.device_uuid] != 0]
    return first, rest


def canary_rollout(
    fleet: LocalFleet, app_dir: Path, soak: str
) -> tuple[UpdateOut, list[FleetDevice], list[FleetDevice], dict[str, int]]:
    """Five devices, the first tagged ``canary``; v1.1.0 in phases 1 and 100 with ``soak``,
    waited for until the first phase completed: (update, first phase, the rest, app pids)."""
    devices = fleet_of(fleet, app_dir, 5)
    tag_canary(fleet, devices[0])
    pids = app_pids(devices)
    update = fleet.publish(
        app_dir, "v1.1.0", "instant", options=("--phases", "1,100", "--phase-soak", soak)
    )
    first, rest = split_by_phase(fleet, "v1.1.0", devices)
    assert devices[0] in first and len(rest) >= 3
    wait_completed(fleet, update, first)
    return update, first, rest, pids


def test_a_release_that_crashes_after_start_halts_in_the_first_phase(
    fleet: LocalFleet, app_dir: Path
):
    devices = fleet_of(fleet, app_dir, 6)
    tag_canary(fleet, devices[0])
    pids = app_pids(devices)
    # v1.1.0 passes the agent's 1 s health check, then its application exits 1 after 5 s.
    (app_dir / "CRASH_AFTER").write_text("5")

    update = fleet.publish(
        app_dir,
        "v1.1.0",
        "instant",
        options=(
            "--phases",
            "1,100",
            "--phase-soak",
            "60s",
            "--halt-min-devices",
            "1",
            "--halt-failure-rate",
            "10",
        ),
    )
    first, rest = split_by_phase(fleet, "v1.1.0", devices)
    assert devices[0] in first and len(rest) >= 3

    halted = wait_for(
        lambda: (shown := rollout(fleet, "v1.1.0"))["state"] == "halted" and shown,
        40,
        "the rollout to halt",
    )
    assert halted["phase"] == 0, "a second phase opened before the halt"
    assert "regressed after install" in halted["halt_reason"], halted["halt_reason"]
    assert halted["health"]["exposed"]["regressions"] >= 1
    rows = final_rows(fleet, update.id)
    # The real path: the install completed (health check passed), the crash came after.
    assert rows[devices[0].device_uuid].status == "completed"
    crashed = devices[0].app_status()
    assert crashed is not None and crashed["version"] == "v1.1.0"
    assert not devices[0].app_running(), "the canary's v1.1.0 application should have crashed"

    time.sleep(SEVERAL_HEARTBEATS)
    assert rollout(fleet, "v1.1.0")["state"] == "halted"
    assert_never_started(fleet, update, rest, pids)
    counts = {status(fleet, update, d) for d in rest}
    assert counts <= NOT_STARTED, counts


def test_a_canary_goes_first_and_the_rest_waits_for_advance(fleet: LocalFleet, app_dir: Path):
    update, _, rest, pids = canary_rollout(fleet, app_dir, "1h")
    time.sleep(SEVERAL_HEARTBEATS)
    shown = rollout(fleet, "v1.1.0")
    assert (shown["state"], shown["phase"]) == ("active", 0)
    assert_never_started(fleet, update, rest, pids)

    run(fleet, "updates", "advance", "v1.1.0", "--reason", "canary is fine")
    wait_completed(fleet, update, rest)
    wait_for(
        lambda: rollout(fleet, "v1.1.0")["state"] == "completed", 20, "the rollout to complete"
    )


def test_pause_holds_devices_that_have_not_started_and_resume_lets_them_go(
    fleet: LocalFleet, app_dir: Path
):
    update, first, rest, pids = canary_rollout(fleet, app_dir, f"{PAUSE_SOAK_SECONDS}s")
    paused = json.loads(run(fleet, "updates", "pause", "v1.1.0", "--reason", "look", "--json"))
    assert paused["rollout"]["state"] == "paused"
    assert paused["rollout"]["phase"] == 0, "the soak passed before the pause: raise it"

    # The soak passes while paused (since the first completed install), and nothing opens.
    completed_at = final_rows(fleet, update.id)[first[0].device_uuid].completed_at
    assert completed_at is not None
    soaked = completed_at.timestamp() + PAUSE_SOAK_SECONDS + SEVERAL_HEARTBEATS
    time.sleep(max(SEVERAL_HEARTBEATS, soaked - time.time()))
    shown = rollout(fleet, "v1.1.0")
    assert (shown["state"], shown["phase"]) == ("paused", 0)
    assert_never_started(fleet, update, rest, pids)

    run(fleet, "updates", "resume", "v1.1.0")
    wait_completed(fleet, update, rest)


def test_cancel_stops_a_rollout_for_good_and_a_later_version_still_installs(
    fleet: LocalFleet, app_dir: Path
):
    bad, first, rest, pids = canary_rollout(fleet, app_dir, "1h")
    cancelled = json.loads(run(fleet, "updates", "cancel", "v1.1.0", "--reason", "bad", "--json"))
    assert cancelled["rollout"]["state"] == "cancelled"
    assert {status(fleet, bad, d) for d in rest} == {"cancelled"}

    time.sleep(SEVERAL_HEARTBEATS)
    assert rollout(fleet, "v1.1.0")["state"] == "cancelled"
    assert_never_started(fleet, bad, rest, pids)

    fixed = fleet.publish(app_dir, "v1.2.0", "instant")
    wait_completed(fleet, fixed, first + rest)
    assert {status(fleet, bad, d) for d in rest} == {"cancelled"}


def test_a_rollout_that_requires_approval_offers_nothing_until_approved(
    fleet: LocalFleet, app_dir: Path
):
    devices = fleet_of(fleet, app_dir, 3)
    pids = app_pids(devices)

    update = fleet.publish(app_dir, "v1.1.0", "instant", options=("--require-approval",))
    assert update.rollout is not None and update.rollout.state == "awaiting_approval"
    time.sleep(SEVERAL_HEARTBEATS)
    assert rollout(fleet, "v1.1.0")["state"] == "awaiting_approval"
    assert_never_started(fleet, update, devices, pids)

    approved = json.loads(run(fleet, "updates", "approve", "v1.1.0", "--json"))
    assert approved["rollout"]["state"] == "active"
    wait_completed(fleet, update, devices)
