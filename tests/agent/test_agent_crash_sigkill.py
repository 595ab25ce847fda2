"""One crash test per saved state: a REAL agent process killed with SIGKILL at that step.

For each state of the update state machine (and the instants inside the
switch and the staging that matter most), a real ``javia agent run`` process
installs a real update from a real ``javia server`` process, is killed with
SIGKILL at that step — no signal handler, no ``finally``, no flush — and
started again. It must converge (the issue's rules, checked by
:func:`fleet.assert_converged`):

- the application runs a complete release, old or new, never a mix; the
  release ``current`` resolves to matches its signed manifest file by file;
- the server ends with exactly one final status for the update (its audit
  log shows one transition into completed/rolled_back);
- no update is installed twice: the new version was started exactly once.

How each step is hit: the download is slowed by the agent's own rate limit
and the agent is killed once part of the payload is on disk (natural
slowness). The other steps last milliseconds; the agent's test hook
``JAVIA_AGENT_PAUSE_AT=<point>`` makes it write ``paused-at-<point>`` right
after saving that state and sit still until it is killed (see
:func:`javia_agent.installer.pause_hook_from_environment`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

import pytest

from javia_agent.state import UpdateState
from javia_core.models import UpdateType
from javia_devtools.demo import FleetDevice
from javia_updates.packaging import BuiltPackage

from .fleet import (
    FINAL,
    CrashFleet,
    app_alive,
    assert_complete_tree,
    assert_converged,
    current_version,
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


_versions = iter(range(1, 1000))


def next_version() -> str:
    """A version no other test on this server published."""
    return f"v1.{next(_versions)}.0"


def _kill_at(fleet: CrashFleet, device: FleetDevice, point: str, expected: UpdateState) -> None:
    marker = device.state_dir / f"paused-at-{point}"
    wait_for(marker.exists, 60, f"the agent to reach {point}")
    assert saved_state(device).state == expected
    fleet.kill_agent(device)
    marker.unlink()


# Pause point, the state saved there, whether the new release is bad (exits 1),
# the outcome after the restart.
CASES = [
    ("verifying", UpdateState.VERIFYING, False, "completed"),
    ("staging", UpdateState.STAGING, False, "completed"),
    ("staging.extracted", UpdateState.STAGING, False, "completed"),
    ("staged", UpdateState.STAGED, False, "completed"),
    ("switching", UpdateState.SWITCHING, False, "completed"),
    ("switching.stopped", UpdateState.SWITCHING, False, "completed"),
    ("switching.linked", UpdateState.SWITCHING, False, "completed"),
    ("health_check", UpdateState.HEALTH_CHECK, False, "completed"),
    ("committing", UpdateState.COMMITTING, False, "completed"),
    ("rolling_back", UpdateState.ROLLING_BACK, True, "rolled_back"),
    ("reporting", UpdateState.REPORTING, False, "completed"),
    ("idle", UpdateState.IDLE, False, "completed"),
]


@pytest.mark.parametrize(("point", "state", "bad", "final"), CASES, ids=[case[0] for case in CASES])
def test_sigkill_at_each_step_converges(
    fleet: CrashFleet,
    device: FleetDevice,
    point: str,
    state: UpdateState,
    bad: bool,
    final: str,
) -> None:
    old = fleet.package("v1.0.0")
    new = fleet.package(next_version(), fail=bad)
    version = new.manifest.version
    update_id = fleet.publish_to(device, new)

    fleet.start_agent_with(device, pause_env(point))
    _kill_at(fleet, device, point, state)
    if point == "switching.stopped":
        assert not app_alive(device) and current_version(device) == "v1.0.0"
    if point == "switching.linked":
        assert not app_alive(device) and current_version(device) == version

    fleet.start_agent_with(device)  # the restart: no hook this time

    running: BuiltPackage = old if final == "rolled_back" else new
    assert_converged(
        fleet, device, running=running, update_id=update_id, final=final, new_version=version
    )
    if final == "rolled_back":
        assert saved_state(device).failed_versions == [version]
        assert not (device.install_root / "releases" / version).exists()
        assert starts_of(device, "v1.0.0") == 2  # the agent's first start, then the rollback
    else:
        # The previous release stays for a rollback.
        releases = sorted(p.name for p in (device.install_root / "releases").iterdir())
        assert releases == sorted(["v1.0.0", version])


def test_sigkill_during_the_download_resumes_from_the_partial_file(
    fleet: CrashFleet, device: FleetDevice
) -> None:
    blob = random.Random(4).randbytes(800_000)  # incompressible: the payload is ~800 kB
    new = fleet.package(next_version(), extra_files={"model.bin": blob})
    size = new.manifest.archive.size
    update_id = fleet.publish_to(device, new)
    partial = device.state_dir / "downloads" / str(update_id) / "payload.tar.gz.partial"

    # 400 kB/s: the download takes about two seconds; kill it a quarter of the way in.
    fleet.start_agent_with(device, {"JAVIA_AGENT_DOWNLOAD_RATE_LIMIT_BYTES_PER_SECOND": "400000"})
    wait_for(lambda: partial.exists() and partial.stat().st_size >= 200_000, 60, "200 kB on disk")
    assert saved_state(device).state == UpdateState.DOWNLOADING
    fleet.kill_agent(device)
    kept = partial.stat().st_size
    assert 0 < kept < size
    assert app_alive(device) and device.app_status()["version"] == "v1.0.0"
    log_before = device.agent_log.read_text(errors="replace")

    fleet.start_agent_with(device)

    assert_converged(
        fleet,
        device,
        running=new,
        update_id=update_id,
        final="completed",
        new_version=new.manifest.version,
    )
    restarted_log = device.agent_log.read_text(errors="replace")[len(log_before) :]
    resumed = re.search(r"resuming the payload download at byte (\d+) of (\d+)", restarted_log)
    assert resumed is not None, restarted_log
    assert int(resumed.group(1)) == kept and int(resumed.group(2)) == size


def test_sigkill_while_staged_ahead_keeps_the_release_and_a_cancel_drops_it(
    fleet: CrashFleet, device: FleetDevice
) -> None:
    """A scheduled update staged hours before its window survives SIGKILL untouched.

    The agent stages it at once (a 7-day lead), holds it in ``staged`` and is
    killed there: the old release still runs, the staged one is complete; the
    restarted agent keeps it (no second download). When the operator cancels
    the rollout the staged release is deleted and never installed.
    """
    new = fleet.package(next_version(), update_type=UpdateType.SCHEDULED)
    version = new.manifest.version
    with fleet.client() as admin:
        update_id = int(
            admin.publish(
                manifest_path=new.manifest_path,
                signature_path=new.signature_path,
                payload_path=new.payload_path,
                update_type="scheduled",
                targets=[device.device_uuid],
            ).id
        )
    fleet.agent_overrides[device.name] = {"JAVIA_AGENT_STAGING_LEAD_SECONDS": "604800"}
    try:
        fleet.start_agent_with(device)  # it starts v1.0.0, then stages the update
        old_pid = wait_for(lambda: (s := device.app_status()) and s["pid"], 30, "v1.0.0 to run")
        wait_for(
            lambda: (r := fleet.row(device, update_id)) and r.status == "staged",
            60,
            "the update to be staged on the server",
        )
        assert saved_state(device).state == UpdateState.STAGED
        fleet.kill_agent(device)

        release = device.install_root / "releases" / version
        assert current_version(device) == "v1.0.0" and app_alive(device)
        assert device.app_status()["pid"] == old_pid
        assert_complete_tree(release, new.manifest)

        fleet.start_agent_with(device)
        # Two heartbeats later it still rests staged, staged only once.
        beat_file = device.state_dir / "heartbeat.json"
        for _ in range(2):
            seen = beat_file.stat().st_mtime_ns if beat_file.exists() else 0
            wait_for(
                lambda seen=seen: beat_file.exists() and beat_file.stat().st_mtime_ns != seen,
                30,
                "a heartbeat after the restart",
            )
        assert saved_state(device).state == UpdateState.STAGED
        assert (
            device.agent_log.read_text(errors="replace").count(f"installing update {version}") == 1
        )
        assert device.app_status()["pid"] == old_pid

        with fleet.client() as admin:
            admin.rollout_command(str(update_id), "cancel", "changed our mind")
        wait_for(lambda: not release.exists(), 30, "the staged release to be deleted")
        wait_for(lambda: saved_state(device).update is None, 30, "the agent to go idle")
    finally:
        fleet.agent_overrides.pop(device.name, None)
    assert fleet.row(device, update_id).status == "cancelled"
    assert current_version(device) == "v1.0.0" and device.app_status()["pid"] == old_pid
    assert starts_of(device, version) == 0


def test_a_crash_loop_in_the_health_check_is_broken_by_the_save_cap(
    fleet: CrashFleet, device: FleetDevice
) -> None:
    """Every start dies in the health check: after the cap the agent rolls back for good."""
    new = fleet.package(next_version())
    update_id = fleet.publish_to(device, new)
    fleet.agent_overrides[device.name] = {"JAVIA_AGENT_MAX_STATE_SAVES": "6"}
    marker = device.state_dir / "paused-at-health_check"

    def paused_or_finished() -> bool:
        row = fleet.row(device, update_id)
        return marker.exists() or bool(row and row.status in FINAL)

    try:
        for _ in range(8):
            fleet.start_agent_with(device, pause_env("health_check"))
            wait_for(paused_or_finished, 60, "the health check or the end of the update")
            if not marker.exists():
                break
            fleet.kill_agent(device)
            marker.unlink()
        else:
            pytest.fail("the crash loop was never broken")
        state = wait_for(lambda: (s := saved_state(device)).update is None and s, 30, "idle")
    finally:
        fleet.agent_overrides.pop(device.name, None)
    assert state.failed_versions == [new.manifest.version]
    assert current_version(device) == "v1.0.0"
    row = wait_for(
        lambda: (r := fleet.row(device, update_id)) and r.status == "rolled_back" and r,
        30,
        "rolled_back on the server",
    )
    assert "crash loop" in (row.error_message or "")
    assert fleet.final_transitions(device, update_id) == ["rolled_back"]
    wait_for(lambda: device.app_status()["version"] == "v1.0.0" and app_alive(device), 20, "v1.0.0")
