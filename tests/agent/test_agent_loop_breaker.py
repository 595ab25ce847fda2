"""A rollback that keeps crashing the agent until the loop breaker trips (issue 11).

It used to end ``rolled_back`` without moving ``current`` back or restarting
the old release: the device kept running the release that failed its health
check while the server was told otherwise. Now the breaker ends honestly:
the old release runs and the update is ``rolled_back``, or the update is
``failed`` with "rollback could not complete" and the device is marked for
attention (``state.json``, ``javia agent status``, every heartbeat).

The installer tests run the real application (command mode) and simulate the
agent's death with :class:`Crash`; the last two run a real ``javia agent run``
against a real server and SIGKILL it at every rollback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from javia_agent import driver
from javia_agent import releases as releases_module
from javia_agent.cli import app
from javia_agent.client import DeviceClient
from javia_agent.config import AgentConfig, write_config, write_token_file
from javia_agent.installer import Installer, InstallOutcome, InstallResult
from javia_agent.state import RECOVERY, Recovery, StateStore, UpdateRecord, UpdateState
from javia_agent.transport import RetryPolicy
from javia_core.models import InstallDirective, UpdateStatus
from javia_devtools.demo import FleetDevice

from .fleet import (
    FINAL,
    CrashFleet,
    app_alive,
    current_version,
    pause_env,
    provisioned_v1,
    saved_state,
    wait_for,
)
from .helpers import (
    Crash,
    CrashingService,
    Device,
    FileServer,
    PackageFactory,
    Signer,
    make_installer,
    serve_package,
)

UUID = "00000000-0000-0000-0000-000000000003"
MAX_SAVES = 5  # the five forward steps; a rollback gets twice as many saves


@pytest.fixture
def running_v1(device: Device, signer: Signer, make_package: PackageFactory) -> Device:
    outcome = make_installer(device, signer).install_from_directory(
        make_package("v1.0.0").directory
    )
    assert outcome.result == InstallResult.COMPLETED
    device.wait_for_app("v1.0.0")
    return device


@pytest.fixture
def client(file_server: FileServer) -> Iterator[DeviceClient]:
    with DeviceClient(
        file_server.url, device_uuid=UUID, token="device-token", retry=RetryPolicy(attempts=1)
    ) as client:
        yield client


def _restart_until_it_ends(make: callable, limit: int = 40) -> InstallOutcome:
    """Play the restarted agent (recover) until a restart survives; return its outcome."""
    for _ in range(limit):
        try:
            outcome = make().recover()
        except Crash:
            continue
        assert outcome is not None
        return outcome
    pytest.fail("the crash loop was never broken")


def test_a_rollback_that_always_crashes_ends_failed_and_marks_the_device_for_attention(
    running_v1: Device,
    signer: Signer,
    make_package: PackageFactory,
    file_server: FileServer,
    client: DeviceClient,
) -> None:
    directive = InstallDirective.model_validate(
        serve_package(file_server, 31, make_package("v1.1.0", fail=True))
    )
    # The new release exits at once; the agent dies each time the rollback stops
    # the application (the switch's stop is the 1st call, the rollback's the 2nd).
    first = make_installer(
        running_v1,
        signer,
        client=client,
        service=CrashingService(running_v1.service, {"stop": 2}),
        max_state_saves=MAX_SAVES,
    )
    with pytest.raises(Crash):
        first.install(directive)
    assert StateStore(running_v1.paths.state_file).load().state == UpdateState.ROLLING_BACK

    outcome = _restart_until_it_ends(
        lambda: make_installer(
            running_v1,
            signer,
            client=client,
            service=CrashingService(running_v1.service, {"stop": 1}),
            max_state_saves=MAX_SAVES,
        )
    )

    # The rollback never got past stopping the application: v1.1.0 is current.
    assert running_v1.current() == "v1.1.0"
    assert outcome.result == InstallResult.FAILED, outcome
    assert (outcome.reason or "").startswith("rollback could not complete")
    assert "crash loop" in (outcome.reason or "")
    update_id, status, message = running_v1.reports[-1]
    assert (update_id, status) == (31, UpdateStatus.FAILED)
    assert UpdateStatus.ROLLED_BACK not in running_v1.statuses()
    assert message is not None and "rollback could not complete" in message
    state = StateStore(running_v1.paths.state_file).load()
    assert state.update is None and state.failed_versions == ["v1.1.0"]
    assert state.attention is not None and "rollback could not complete" in state.attention

    # `javia agent status` says so, in JSON and to a person.
    config = _config_for(running_v1, signer)
    body = json.loads(CliRunner().invoke(app, ["status", "--json", "--config", str(config)]).output)
    assert body["attention"] == state.attention
    human = CliRunner().invoke(app, ["status", "--config", str(config)]).output
    assert "NEEDS ATTENTION" in human and "rollback could not complete" in human

    # A later update that commits clears the mark.
    fixed = make_installer(running_v1, signer).install_from_directory(
        make_package("v1.2.0").directory
    )
    assert fixed.result == InstallResult.COMPLETED
    assert StateStore(running_v1.paths.state_file).load().attention is None
    running_v1.wait_for_app("v1.2.0")


def test_a_rollback_crashing_after_the_old_release_runs_again_ends_rolled_back(
    running_v1: Device,
    signer: Signer,
    make_package: PackageFactory,
    file_server: FileServer,
    client: DeviceClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    directive = InstallDirective.model_validate(
        serve_package(file_server, 32, make_package("v1.1.0", fail=True))
    )
    remove = releases_module._remove_tree

    def crash_removing_the_new_release(path: Path) -> None:
        if path.name == "v1.1.0":
            raise Crash("dies removing the failed release")
        remove(path)

    monkeypatch.setattr(releases_module, "_remove_tree", crash_removing_the_new_release)
    with pytest.raises(Crash):
        make_installer(running_v1, signer, client=client, max_state_saves=MAX_SAVES).install(
            directive
        )
    outcome = _restart_until_it_ends(
        lambda: make_installer(running_v1, signer, client=client, max_state_saves=MAX_SAVES)
    )

    assert outcome.result == InstallResult.ROLLED_BACK, outcome
    assert running_v1.current() == "v1.0.0"
    running_v1.wait_for_app("v1.0.0")
    assert running_v1.reports[-1][:2] == (32, UpdateStatus.ROLLED_BACK)
    state = StateStore(running_v1.paths.state_file).load()
    assert state.attention is None and state.failed_versions == ["v1.1.0"]


def test_the_breaker_tripping_at_the_switch_fails_the_update_without_touching_the_release(
    running_v1: Device,
    signer: Signer,
    make_package: PackageFactory,
    file_server: FileServer,
    client: DeviceClient,
) -> None:
    """Downloading, verifying, staging use the 3 saves allowed: the switch is refused.

    It used to attempt a rollback from a pre-switch state, which the state
    table forbids (RuntimeError: the agent crashed instead of failing).
    """
    directive = InstallDirective.model_validate(
        serve_package(file_server, 33, make_package("v1.1.0"))
    )
    outcome = make_installer(running_v1, signer, client=client, max_state_saves=3).install(
        directive
    )
    assert outcome.result == InstallResult.FAILED, outcome
    assert "crash loop" in (outcome.reason or "")
    assert running_v1.current() == "v1.0.0"
    running_v1.wait_for_app("v1.0.0")
    assert not running_v1.paths.releases_dir.joinpath("v1.1.0").exists()
    assert StateStore(running_v1.paths.state_file).load().update is None


def test_every_recovery_action_has_a_handler_and_the_table_decides_which_runs(
    running_v1: Device, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert set(driver.RECOVERY_PROBES) == set(Recovery)
    called: list[Recovery] = []
    for action in Recovery:

        def handler(self: Installer, run: object, action: Recovery = action) -> None:
            called.append(action)

        monkeypatch.setitem(driver.RECOVERY_PROBES, action, handler)
    store = StateStore(running_v1.paths.state_file)
    for state in UpdateState:
        if state == UpdateState.IDLE:
            continue
        record = UpdateRecord(update_id=40, version="v1.9.0", state=state)
        store.path.write_text(store.load().model_copy(update={"update": record}).model_dump_json())
        called.clear()
        make_installer(running_v1, signer).recover()
        assert called == [RECOVERY[state]], state


def _config_for(device: Device, signer: Signer) -> Path:
    config = AgentConfig(
        server_url="http://127.0.0.1:9",
        device_uuid="00000000-0000-0000-0000-0000000000d3",
        token_file=device.root / "etc" / "token",
        install_root=device.paths.install_root,
        state_dir=device.paths.state_dir,
        keyring_dir=signer.keyring_dir,
        service_mode="command",
        start_command=[sys.executable, "app.py"],
    )
    path = device.root / "etc" / "agent.toml"
    write_config(config, path)
    write_token_file(config.token_file, "device-token-for-status")
    return path


# -- a real agent, SIGKILLed at every rollback ---------------------------------------

_versions = iter(range(1, 1000))


@pytest.fixture
def fleet_device(fleet: CrashFleet, request: pytest.FixtureRequest) -> Iterator[FleetDevice]:
    with provisioned_v1(fleet, request.node.name) as device:
        yield device


def _kill_at_every_rollback(
    fleet: CrashFleet, device: FleetDevice, update_id: int, points: str
) -> None:
    """Start the agent paused at ``points`` and SIGKILL it there until it stops pausing."""
    fleet.agent_overrides[device.name] = {"JAVIA_AGENT_MAX_STATE_SAVES": "5"}
    markers = [device.state_dir / f"paused-at-{point}" for point in points.split(",")]

    def paused_or_finished() -> bool:
        row = fleet.row(device, update_id)
        return any(m.exists() for m in markers) or bool(row and row.status in FINAL)

    for _ in range(20):
        fleet.start_agent_with(device, pause_env(points))
        wait_for(paused_or_finished, 60, "a rollback or the end of the update")
        if not any(m.exists() for m in markers):
            return
        fleet.kill_agent(device)
        for marker in markers:
            marker.unlink(missing_ok=True)
    pytest.fail("the crash loop was never broken")


@pytest.mark.e2e
def test_a_real_agent_killed_at_every_rollback_ends_with_the_old_release_running(
    fleet: CrashFleet, fleet_device: FleetDevice
) -> None:
    device = fleet_device
    bad = fleet.package(f"v8.{next(_versions)}.0", fail=True)
    update_id = fleet.publish_to(device, bad)

    _kill_at_every_rollback(fleet, device, update_id, "rolling_back")
    fleet.start_agent_with(device)  # (already running if the last start finished it)

    row = wait_for(
        lambda: (r := fleet.row(device, update_id)) and r.status in FINAL and r,
        60,
        "a final status on the server",
    )
    assert row.status == "rolled_back", row
    assert current_version(device) == "v1.0.0"
    wait_for(lambda: device.app_status()["version"] == "v1.0.0" and app_alive(device), 30, "v1.0.0")
    state = wait_for(lambda: (s := saved_state(device)).update is None and s, 30, "idle")
    assert state.attention is None and state.failed_versions == [bad.manifest.version]


@pytest.mark.e2e
def test_a_real_agent_whose_last_rollback_dies_too_reports_failed_and_asks_for_attention(
    fleet: CrashFleet, fleet_device: FleetDevice
) -> None:
    device = fleet_device
    bad = fleet.package(f"v8.{next(_versions)}.0", fail=True)
    update_id = fleet.publish_to(device, bad)

    # Killed at every rollback, and once more right after the breaker saved its verdict.
    _kill_at_every_rollback(fleet, device, update_id, "rolling_back,reporting")
    fleet.start_agent_with(device)

    row = wait_for(
        lambda: (r := fleet.row(device, update_id)) and r.status in FINAL and r,
        60,
        "a final status on the server",
    )
    assert row.status == "failed", row
    assert (row.error_message or "").startswith("rollback could not complete")
    assert fleet.final_transitions(device, update_id) == ["failed"]
    assert current_version(device) == bad.manifest.version  # said, not hidden
    # The heartbeat carries the mark to the server.
    with fleet.client() as admin:
        wait_for(
            lambda: (
                "rollback could not complete"
                in str(admin.get_device(device.device_uuid).metadata.get("attention"))
            ),
            30,
            "the attention mark in the device's metadata on the server",
        )
