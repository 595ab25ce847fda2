"""The whole loop with real processes: publish → heartbeat → download → verify →
stage → switch → restart → report, on loopback (issue: vertical slice)."""

from __future__ import annotations

import filecmp
import importlib.util
import shutil
import time
from pathlib import Path

import pytest

from javia_core.models import DeviceUpdateOut
from javia_devtools.demo import FleetDevice, LocalFleet

pytestmark = pytest.mark.e2e


def wait_for(predicate, timeout: float, what: str):
    """Poll ``predicate`` until it returns a truthy value; fail with ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def final_rows(fleet: LocalFleet, update_id: int) -> dict[str, DeviceUpdateOut]:
    with fleet.client() as client:
        return {str(row.device_uuid): row for row in client.update_devices(update_id)}


def provision(fleet: LocalFleet, app_dir: Path, names_and_zones) -> list[FleetDevice]:
    initial = fleet.build_package(
        app_dir, "v1.0.0", "scheduled", fleet.root / "packages" / "v1.0.0"
    )
    devices = []
    for name, zone in names_and_zones:
        device = fleet.add_device(name, zone, initial_package=initial)
        fleet.start_agent(device)
        devices.append(device)
    with fleet.client() as client:
        wait_for(
            lambda: all(d.last_seen for d in client.list_devices()),
            20,
            "every device's first heartbeat",
        )
    return devices


def test_instant_update_restarts_every_app_on_the_new_version(fleet: LocalFleet, app_dir: Path):
    devices = provision(
        fleet, app_dir, [("a", "America/New_York"), ("b", "Europe/Berlin"), ("c", "Asia/Kolkata")]
    )
    before = {d.name: d.app_status() for d in devices}
    assert all(status and status["version"] == "v1.0.0" for status in before.values())

    update = fleet.publish(app_dir, "v1.1.0", "instant")

    def all_completed():
        rows = final_rows(fleet, update.id)
        return len(rows) == 3 and all(r.status == "completed" for r in rows.values()) and rows

    rows = wait_for(all_completed, 45, "every device to report completed")
    for device in devices:
        status = wait_for(
            lambda d=device: (s := d.app_status()) and s["version"] == "v1.1.0" and s,
            10,
            "app on v1.1.0",
        )
        assert status["pid"] != before[device.name]["pid"], "the application was restarted"
        assert device.app_running()
        current = (device.install_root / "current").resolve()
        assert current == (device.install_root / "releases" / "v1.1.0").resolve()
        assert (current / "VERSION").read_text().strip() == "v1.1.0"
        assert rows[device.device_uuid].completed_at is not None
    with fleet.client() as client:
        wait_for(
            lambda: all(d.current_version == "v1.1.0" for d in client.list_devices()),
            10,
            "heartbeats to carry v1.1.0",
        )
        shown = client.get_update(update.id)
    assert shown.status_counts.get("completed") == 3
    # The operator's VERSION file now holds the published version.
    assert (app_dir / "VERSION").read_text().strip() == "v1.1.0"


def test_realistic_payload_installs_byte_for_byte(fleet: LocalFleet, app_dir: Path):
    """Hundreds of files in nested folders: a third-party package's source tree."""
    spec = importlib.util.find_spec("rich")
    assert spec and spec.origin
    source = Path(spec.origin).parent
    vendored = app_dir / "vendor" / "rich"
    shutil.copytree(source, vendored, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    file_count = sum(1 for p in vendored.rglob("*") if p.is_file())
    assert file_count >= 50

    (device,) = provision(fleet, app_dir, [("big", "Europe/Berlin")])
    update = fleet.publish(app_dir, "v2.0.0", "instant")
    wait_for(
        lambda: (
            (row := final_rows(fleet, update.id).get(device.device_uuid)) is not None
            and row.status == "completed"
        ),
        60,
        "the large update to complete",
    )
    installed = device.install_root / "releases" / "v2.0.0" / "vendor" / "rich"
    comparison = filecmp.dircmp(vendored, installed)
    assert not comparison.left_only and not comparison.right_only
    for path in vendored.rglob("*"):
        if path.is_file():
            twin = installed / path.relative_to(vendored)
            assert twin.read_bytes() == path.read_bytes(), path
    assert device.app_status()["version"] == "v2.0.0"


def test_package_signed_by_untrusted_key_is_refused_and_app_keeps_running(
    fleet: LocalFleet, app_dir: Path, tmp_path: Path
):
    (device,) = provision(fleet, app_dir, [("guarded", "UTC")])
    before = device.app_status()
    from javia_updates.keys import generate_keypair

    stranger = generate_keypair(tmp_path / "stranger", name="stranger")
    fleet.private_key_path = stranger.private_path  # sign with a key the device does not trust
    update = fleet.publish(app_dir, "v1.1.0", "instant")

    # The operator sees why on the row; the device does not blacklist the version
    # (an untrusted signature is the server's fault, retried with backoff).
    row = wait_for(
        lambda: (
            (r := final_rows(fleet, update.id).get(device.device_uuid))
            and stranger.key_id in (r.error_message or "")
            and r
        ),
        30,
        "the device to report the untrusted signature",
    )
    assert "keyring" in row.error_message and "server fault" in row.error_message
    assert row.status not in ("completed", "failed", "rolled_back")
    assert device.app_status()["pid"] == before["pid"]
    assert device.app_running()
    assert not (device.install_root / "releases" / "v1.1.0").exists()
    assert (device.install_root / "current").resolve().name == "v1.0.0"
