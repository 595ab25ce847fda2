"""A row the device reported ``staged`` (prepared ahead of its window) is still a waiting row.

The server keeps offering it, counts it, re-plans it when its window passed,
and a newer publish or a cancelled rollout ends it (issue 14, "prepared
before the window"; docs/agent.md, "Staged ahead of the window").
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta

from javia_agent.client import DeviceClient
from javia_core.models import HeartbeatRequest, StatusReport, UpdateStatus
from javia_devtools.demo import javia_command
from javia_updates.admin_client import AdminClient
from shared_helpers import server_process


def _stage(service, clock, register, beat, make_package):  # type: ignore[no-untyped-def]
    device, _ = register(timezone="Europe/Berlin")
    beat(device)
    update = service.publish_update(make_package("v1.1.0", "scheduled").upload(), now=clock.now)
    offer = beat(device).update
    for status in (UpdateStatus.DOWNLOADING, UpdateStatus.STAGED):
        service.report_status(
            service.find_device(device.device_uuid),
            offer.update_id,
            StatusReport(status=status),
            now=clock.now,
        )
    return device, update, offer


def test_a_staged_row_is_offered_on_and_counted(service, clock, register, beat, make_package):  # type: ignore[no-untyped-def]
    device, update, offer = _stage(service, clock, register, beat, make_package)

    again = beat(device).update
    assert again is not None
    assert (str(again.version), again.status) == ("v1.1.0", UpdateStatus.STAGED)
    assert again.install_at == offer.install_at
    assert service.update_devices(update.id).items[0].status is UpdateStatus.STAGED
    assert service.get_update(update.id, now=clock.now).status_counts == {"staged": 1}


def test_a_staged_row_whose_window_passed_is_planned_for_the_next_one(  # type: ignore[no-untyped-def]
    service, clock, register, beat, make_package
):
    device, _, offer = _stage(service, clock, register, beat, make_package)
    clock.now = offer.window_end + timedelta(minutes=1)  # the device slept through its window

    later = beat(device).update
    assert later is not None and later.status is UpdateStatus.STAGED
    assert later.install_at == offer.install_at + timedelta(days=1)


def test_a_newer_publish_supersedes_a_staged_row(service, clock, register, beat, make_package):  # type: ignore[no-untyped-def]
    device, update, _ = _stage(service, clock, register, beat, make_package)
    service.publish_update(make_package("v1.2.0", "scheduled").upload(), now=clock.now)

    offer = beat(device).update
    assert offer is not None and str(offer.version) == "v1.2.0"
    assert service.update_devices(update.id).items[0].status is UpdateStatus.SUPERSEDED


def test_a_cancelled_rollout_cancels_its_staged_rows(service, clock, register, beat, make_package):  # type: ignore[no-untyped-def]
    device, update, _ = _stage(service, clock, register, beat, make_package)
    out = service.rollout_command(update.id, "cancel", reason="bad", now=clock.now)

    assert out.status_counts == {"cancelled": 1}
    assert beat(device).update is None


def test_updates_show_and_devices_show_say_staged(tmp_path, make_package, monkeypatch):  # type: ignore[no-untyped-def]
    """The operator's CLI against a real server: a device that staged the update."""

    def javia(*args: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("JAVIA_")}
        return subprocess.run(
            [*javia_command(), *args], capture_output=True, text=True, env=clean, timeout=60
        )

    monkeypatch.setenv("COLUMNS", "200")
    api_key = "staged-rows-admin-key-0123456789"
    package = make_package("v1.1.0", "scheduled")
    paths = {}
    for name, data in (
        ("manifest", package.manifest),
        ("signature", package.signature),
        ("payload", package.payload),
    ):
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    with server_process(tmp_path, api_key) as (url, _):
        with AdminClient(url, api_key) as admin:
            device = admin.register_device(device_name="kitchen")
            admin.publish(
                manifest_path=paths["manifest"],
                signature_path=paths["signature"],
                payload_path=paths["payload"],
            )
        with DeviceClient(url, device_uuid=device.device_uuid, token=device.device_token) as pi:
            offer = pi.heartbeat(HeartbeatRequest(current_version="v1.0.0")).update
            assert offer is not None
            for status in (UpdateStatus.DOWNLOADING, UpdateStatus.STAGED):
                pi.report_status(
                    offer.update_id, StatusReport.from_device(status, None, datetime.now(UTC))
                )
        common = ("--server", url, "--api-key", api_key)
        shown = javia("updates", "show", "v1.1.0", *common)
        assert "1 staged" in shown.stdout, shown.stdout + shown.stderr
        device_shown = javia("devices", "show", str(device.device_uuid), *common)
        assert " staged " in device_shown.stdout, device_shown.stdout + device_shown.stderr
