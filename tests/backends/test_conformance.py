"""Backend conformance: what every backend must do, through the Backend interface and the service.

Each test runs on every backend (``conftest.BACKEND_KINDS``): the shipped
``local`` backend on SQLite, the same on a real PostgreSQL server, and the
``supabase`` backend (PostgreSQL + Storage's HTTP contract). The tests say
what a user of the server relies on (DESIGN.md sections 4 and 5), not how the
SQL is written: devices, heartbeats, publish, supersession, status
transitions, listing and package objects.

Store details that only concern SQL (migrations, one bulk INSERT per publish,
WAL, foreign keys) are in ``tests/server/test_server_backend.py``; races
between replicas and fleet-sized publishes are in ``test_concurrency.py``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from javia_core.errors import ConflictError, NotFoundError
from javia_core.manifest import PAYLOAD_NAME
from javia_core.models import (
    DeviceRegisterRequest,
    DeviceStatus,
    HeartbeatRequest,
    StatusReport,
    UpdateStatus,
    UpdateType,
)
from javia_updates.backends import Backend
from javia_updates.backends.base import DeviceRecord
from javia_updates.service import UpdateService
from shared_helpers import store_update

# A Friday noon in winter: no DST change in Berlin or New York for weeks.
NOW = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)


def register(
    service: UpdateService, *, timezone: str = "UTC", name: str | None = None, **metadata: object
) -> tuple[DeviceRecord, str]:
    registered = service.register_device(
        DeviceRegisterRequest(device_name=name, timezone=timezone, metadata=dict(metadata)), now=NOW
    )
    return service.find_device(registered.device_uuid), registered.device_token


def beat(
    service: UpdateService, device: DeviceRecord, at: datetime = NOW, version: str | None = "v1.0.0"
):  # type: ignore[no-untyped-def]
    fresh = service.find_device(device.device_uuid)
    return service.heartbeat(fresh, HeartbeatRequest(current_version=version), now=at)


def report(
    service: UpdateService,
    device: DeviceRecord,
    update_id: int,
    status: UpdateStatus,
    at: datetime = NOW,
):  # type: ignore[no-untyped-def]
    fresh = service.find_device(device.device_uuid)
    return service.report_status(fresh, update_id, StatusReport(status=status), now=at)


def rows_of(backend: Backend, update_id: int) -> dict[uuid.UUID, object]:
    return {
        row.device_uuid: row for row in backend.store.list_device_updates(update_id=update_id).items
    }


# --------------------------------------------------------------------------- devices


def test_registration_stores_the_device_and_only_its_token_authenticates(service, backend):
    metadata = {"room": "kitchen", "nested": {"grüße": [1, 2.5, True, None]}}
    device, token = register(service, timezone="Europe/Berlin", name="kitchen-pi", **metadata)

    assert service.authenticate_device(token) == device
    assert service.authenticate_device(token + "x") is None
    assert service.authenticate_device("") is None
    shown = service.get_device(device.device_uuid, now=NOW)
    assert (shown.device_name, shown.timezone, shown.metadata) == (
        "kitchen-pi",
        "Europe/Berlin",
        metadata,
    )
    assert shown.registered_at == NOW and shown.registered_at.utcoffset() == timedelta(0)
    assert shown.status is DeviceStatus.OFFLINE  # never heard from yet

    with pytest.raises(ConflictError, match="already registered"):
        service.register_device(DeviceRegisterRequest(device_uuid=device.device_uuid), now=NOW)
    with pytest.raises(NotFoundError):
        service.get_device(uuid.uuid4(), now=NOW)
    registrations = [e for e in service.audit_log().items if e.action == "device.register"]
    assert len(registrations) == 1


# --------------------------------------------------------------------------- heartbeats


def test_heartbeat_records_the_device_and_it_goes_offline_after_three_silent_intervals(service):
    device, _ = register(service, room="hall")
    answer = service.heartbeat(
        device,
        HeartbeatRequest(
            current_version="v1.0.0", status=DeviceStatus.UPDATING, metadata={"temp_c": 41}
        ),
        now=NOW,
    )

    assert answer.server_time == NOW and answer.update is None
    stored = service.find_device(device.device_uuid)
    assert (stored.last_seen, stored.current_version) == (NOW, "v1.0.0")
    assert stored.metadata == {"room": "hall", "temp_c": 41}  # merged, the device's keys win
    interval = service.settings.heartbeat_interval_seconds
    at_limit = NOW + timedelta(seconds=3 * interval)
    assert service.get_device(device.device_uuid, now=at_limit).status is DeviceStatus.UPDATING
    past = at_limit + timedelta(seconds=1)
    assert service.get_device(device.device_uuid, now=past).status is DeviceStatus.OFFLINE


def test_devices_list_in_registration_order_with_filters_and_pages(service):
    devices = [register(service, name=f"pi-{i}")[0] for i in range(5)]
    beat(service, devices[0], version="v1.0.0")
    beat(service, devices[1], version="v1.0.0")
    beat(service, devices[3], version="v1.1.0")

    def names(page):
        return [d.device_name for d in page.items]

    assert names(service.list_devices(now=NOW)) == [f"pi-{i}" for i in range(5)]
    assert service.list_devices(now=NOW, online=True).total == 3
    assert names(service.list_devices(now=NOW, online=False)) == ["pi-2", "pi-4"]
    assert names(service.list_devices(now=NOW, status=DeviceStatus.OFFLINE)) == ["pi-2", "pi-4"]
    assert names(service.list_devices(now=NOW, version="v1.0.0")) == ["pi-0", "pi-1"]
    page = service.list_devices(now=NOW, limit=2, offset=2)
    assert (names(page), page.total) == (["pi-2", "pi-3"], 5)
    an_hour_later = NOW + timedelta(hours=1)
    assert service.list_devices(now=an_hour_later, online=True).total == 0


# --------------------------------------------------------------------------- publish


def test_scheduled_publish_gives_every_device_a_row_in_its_local_maintenance_window(
    service, backend, make_package
):
    berlin, _ = register(service, timezone="Europe/Berlin")
    new_york, _ = register(service, timezone="America/New_York")
    for device in (berlin, new_york):
        beat(service, device)

    update = service.publish_update(make_package("v1.1.0", "scheduled").upload(), now=NOW)

    assert update.status_counts == {"pending": 2}
    rows = rows_of(backend, update.id)
    window = timedelta(seconds=service.settings.window_seconds)
    for device in (berlin, new_york):
        row = rows[device.device_uuid]
        zone = ZoneInfo(device.timezone)
        opens = row.window_end - window
        assert opens.astimezone(zone).time() == time(2, 0)  # DESIGN.md section 4
        assert NOW < opens <= NOW + timedelta(days=1)
        assert opens <= row.scheduled_for < row.window_end
        assert (row.status, row.install_type) == (UpdateStatus.PENDING, UpdateType.SCHEDULED)


def test_publish_to_targets_reaches_only_them_and_unknown_targets_store_nothing(
    service, backend, make_package
):
    chosen, _ = register(service)
    other, _ = register(service)
    stranger = uuid.uuid4()

    with pytest.raises(NotFoundError, match=str(stranger)):
        service.publish_update(
            make_package("v1.1.0").upload(), now=NOW, targets=[chosen.device_uuid, stranger]
        )
    with pytest.raises(NotFoundError):
        service.resolve_update("v1.1.0")
    assert not [e for e in service.audit_log().items if e.action == "update.publish"]

    update = service.publish_update(
        make_package("v1.1.0").upload(), now=NOW, targets=[chosen.device_uuid]
    )
    assert set(rows_of(backend, update.id)) == {chosen.device_uuid}
    assert update.targets == [chosen.device_uuid]
    assert beat(service, other).update is None


def test_instant_publish_reaches_devices_seen_within_300_seconds_and_the_rest_at_their_next_heartbeat(
    service, backend, make_package
):
    recent, _ = register(service)
    stale, _ = register(service)
    beat(service, recent, at=NOW - timedelta(seconds=300))  # inclusive: counts as online
    beat(service, stale, at=NOW - timedelta(seconds=301))

    update = service.publish_update(make_package("v1.1.0", "instant").upload(), now=NOW)

    assert set(rows_of(backend, update.id)) == {recent.device_uuid}
    later = NOW + timedelta(minutes=10)
    directive = beat(service, stale, at=later).update
    assert directive is not None
    assert (str(directive.version), directive.update_type) == ("v1.1.0", UpdateType.INSTANT)
    assert directive.install_at <= later


def test_a_version_is_published_once_and_its_package_survives_a_second_attempt(
    service, backend, make_package
):
    package = make_package("v1.1.0", extra_bytes=4096)
    first = service.publish_update(package.upload(), now=NOW)

    with pytest.raises(ConflictError, match=rf"already published \(update {first.id}\)"):
        service.publish_update(package.upload(), now=NOW)
    with pytest.raises(ConflictError):
        service.publish_update(make_package("v1.1.0", "urgent").upload(), now=NOW)

    stored = service.resolve_update("v1.1.0")
    assert b"".join(service.payload_range(stored, 0, stored.archive_size)) == package.payload
    assert service.list_updates().total == 1


def test_a_device_registered_after_publish_gets_only_the_newest_update_at_its_first_heartbeat(
    service, backend, make_package
):
    service.publish_update(make_package("v1.1.0", "urgent").upload(), now=NOW)
    newest = service.publish_update(make_package("v1.2.0", "scheduled").upload(), now=NOW)
    device, _ = register(service, timezone="Europe/Berlin")

    directive = beat(service, device, version="v1.0.0").update

    assert directive is not None and directive.update_id == newest.id
    history = service.device_history(device.device_uuid)
    assert [(row.version, row.status) for row in history.items] == [
        ("v1.2.0", UpdateStatus.PENDING)
    ]


# --------------------------------------------------------------------------- supersession


def test_the_highest_pending_version_wins_with_the_most_urgent_timing(
    service, backend, make_package
):
    device, _ = register(service, timezone="Europe/Berlin")
    beat(service, device)
    urgent = service.publish_update(make_package("v1.1.0", "urgent").upload(), now=NOW)
    scheduled = service.publish_update(make_package("v1.2.0", "scheduled").upload(), now=NOW)

    directive = beat(service, device).update

    assert (str(directive.version), directive.update_type) == ("v1.2.0", UpdateType.URGENT)
    assert directive.idle_seconds_required == service.settings.urgent_idle_seconds
    counts = {u.version: u.status_counts for u in service.list_updates().items}
    assert counts == {"v1.2.0": {"pending": 1}, "v1.1.0": {"superseded": 1}}
    superseded = backend.store.get_device_update(device.id, urgent.id)
    assert superseded.completed_at == NOW and "v1.2.0" in (superseded.error_message or "")
    assert (
        backend.store.get_device_update(device.id, scheduled.id).install_type is UpdateType.URGENT
    )


def test_a_publish_supersedes_pending_rows_in_its_own_write(service, backend, make_package):
    device, _ = register(service, timezone="Europe/Berlin")
    beat(service, device)
    urgent = service.publish_update(make_package("v1.1.0", "urgent").upload(), now=NOW)
    scheduled = service.publish_update(make_package("v1.2.0", "scheduled").upload(), now=NOW)

    # No heartbeat since: the publish itself moved the older row.
    older = backend.store.get_device_update(device.id, urgent.id)
    assert (older.status, older.completed_at) == (UpdateStatus.SUPERSEDED, NOW)
    assert older.error_message == "superseded by v1.2.0"
    newer = backend.store.get_device_update(device.id, scheduled.id)
    assert (newer.install_type, newer.scheduled_for) == (UpdateType.URGENT, older.scheduled_for)
    logged = [entry for entry in backend.store.list_audit(limit=10, offset=0).items]
    assert any(
        entry.action == "device_update.superseded" and entry.details.get("rows") == 1
        for entry in logged
    )


def test_a_device_that_already_runs_a_version_has_its_pending_row_superseded(
    service, backend, make_package
):
    device, _ = register(service)
    beat(service, device)
    update = service.publish_update(make_package("v1.1.0").upload(), now=NOW)

    assert beat(service, device, version="v1.1.0").update is None  # installed by hand, say
    assert backend.store.get_device_update(device.id, update.id).status is UpdateStatus.SUPERSEDED


# --------------------------------------------------------------------------- status transitions


def test_progress_moves_only_forward_and_repeated_or_late_reports_change_nothing(
    service, backend, make_package
):
    device, _ = register(service)
    beat(service, device)
    update = service.publish_update(make_package("v1.1.0", "instant").upload(), now=NOW)
    later = NOW + timedelta(seconds=5)

    sent = [
        (UpdateStatus.DOWNLOADING, True),
        (UpdateStatus.INSTALLING, True),
        (UpdateStatus.DOWNLOADING, False),  # late: the row stays installing
        (UpdateStatus.COMPLETED, True),
        (UpdateStatus.COMPLETED, False),  # repeated: accepted, nothing written
        (UpdateStatus.FAILED, False),  # a final status has no way out
    ]
    outcomes = [(report(service, device, update.id, status, later).changed) for status, _ in sent]

    assert outcomes == [changed for _, changed in sent]
    row = backend.store.get_device_update(device.id, update.id)
    assert (row.status, row.started_at, row.completed_at) == (UpdateStatus.COMPLETED, later, later)
    assert service.find_device(device.device_uuid).current_version == "v1.1.0"
    status_lines = [e for e in service.audit_log().items if e.action == "device_update.status"]
    assert [(line.details["from"], line.details["to"]) for line in status_lines] == [
        ("installing", "completed"),
        ("downloading", "installing"),
        ("pending", "downloading"),
    ]
    assert beat(service, device, at=later, version="v1.1.0").update is None


def test_a_failed_version_is_never_offered_again_but_a_newer_one_is(service, make_package):
    device, _ = register(service)
    beat(service, device)
    broken = service.publish_update(make_package("v1.1.0", "instant").upload(), now=NOW)
    report(service, device, broken.id, UpdateStatus.DOWNLOADING)
    assert (
        report(service, device, broken.id, UpdateStatus.ROLLED_BACK).status
        is UpdateStatus.ROLLED_BACK
    )

    assert beat(service, device).update is None
    fixed = service.publish_update(make_package("v1.1.1", "instant").upload(), now=NOW)
    assert beat(service, device).update.update_id == fixed.id


def test_a_report_for_an_update_not_assigned_to_the_device_is_not_found(service, make_package):
    chosen, _ = register(service)
    other, _ = register(service)
    update = service.publish_update(
        make_package("v1.1.0").upload(), now=NOW, targets=[chosen.device_uuid]
    )

    with pytest.raises(NotFoundError):
        report(service, other, update.id, UpdateStatus.COMPLETED)
    assert not service.device_may_read(service.find_device(other.device_uuid), update.id)
    assert service.device_may_read(service.find_device(chosen.device_uuid), update.id)


# --------------------------------------------------------------------------- listing


def test_updates_list_highest_version_first_numerically_with_filters_and_pages(
    service, backend, make_package
):
    device, _ = register(service)
    beat(service, device, at=NOW)
    for version, kind in (("v1.2.0", "instant"), ("v1.9.0", "scheduled"), ("v1.10.0", "urgent")):
        service.publish_update(make_package(version, kind).upload(), now=NOW)

    def versions(page):
        return [u.version for u in page.items]

    assert versions(service.list_updates()) == ["v1.10.0", "v1.9.0", "v1.2.0"]
    assert versions(service.list_updates(update_type=UpdateType.URGENT)) == ["v1.10.0"]
    page = service.list_updates(limit=1, offset=1)
    assert (versions(page), page.total) == (["v1.9.0"], 3)
    by_id = service.get_update(service.resolve_update("v1.9.0").id)
    assert (by_id.version, by_id.update_type) == ("v1.9.0", UpdateType.SCHEDULED)

    beat(service, device, at=NOW)  # supersedes the two older rows
    assert service.update_devices("v1.10.0").total == 1
    assert service.update_devices("v1.9.0", status=UpdateStatus.SUPERSEDED).total == 1
    assert service.update_devices("v1.9.0", status=UpdateStatus.PENDING).total == 0
    history = service.device_history(device.device_uuid)
    assert [row.version for row in history.items] == ["v1.10.0", "v1.9.0", "v1.2.0"]


def test_updates_list_in_numeric_version_order_whatever_order_they_were_written_in(
    service, backend
):
    # Publishing refuses a version below the highest one, so the rows go in through the
    # store, in an order that is neither numeric nor text order, forwards or backwards.
    for version in ("v1.9.0", "v1.10.0", "v1.2.0"):
        store_update(backend.store, version, now=NOW)

    assert [u.version for u in service.list_updates().items] == ["v1.10.0", "v1.9.0", "v1.2.0"]
    assert [u.version for u in service.list_updates(limit=1, offset=1).items] == ["v1.9.0"]
    newer = backend.store.updates_newer_than((1, 2, 0))
    assert [u.version for u in newer] == ["v1.10.0", "v1.9.0"]


def test_the_audit_log_lists_changes_newest_first_in_pages(service, make_package):
    device, _ = register(service)
    beat(service, device)
    service.publish_update(make_package("v1.1.0", "instant").upload(), now=NOW)

    page = service.audit_log(limit=2)
    assert [entry.action for entry in page.items] == ["update.publish", "device.register"]
    assert page.total == 2
    assert page.items[0].details["version"] == "v1.1.0" and page.items[0].at == NOW
    assert service.audit_log(limit=1, offset=1).items[0].actor == "admin"


# --------------------------------------------------------------------------- packages


def test_package_objects_come_back_byte_for_byte_in_any_range(service, backend, make_package):
    package = make_package("v1.1.0", extra_bytes=700_000)  # several download chunks
    update = service.resolve_update(service.publish_update(package.upload(), now=NOW).id)
    size = update.archive_size

    assert size == len(package.payload)
    assert service.package_documents(update) == (package.manifest, package.signature)
    assert b"".join(service.payload_range(update, 0, size)) == package.payload
    for start, end in ((0, 1), (size - 1, size), (1000, 300_000), (262_143, 262_145)):
        assert b"".join(service.payload_range(update, start, end)) == package.payload[start:end]
    assert backend.blobs.size(update.package_url, PAYLOAD_NAME) == size


def test_a_lost_package_object_is_not_found(service, backend, make_package):
    update = service.resolve_update(
        service.publish_update(make_package("v1.1.0").upload(), now=NOW).id
    )
    backend.blobs.delete(update.package_url)

    with pytest.raises(NotFoundError):
        service.payload_range(update, 0, update.archive_size)
    with pytest.raises(NotFoundError):
        backend.blobs.size(update.package_url, PAYLOAD_NAME)


def test_publish_uploads_stream_from_the_backends_upload_directory(service, backend, make_package):
    package = make_package("v1.1.0")
    upload_dir = service.upload_dir()
    spooled = upload_dir / "incoming.part"
    spooled.write_bytes(package.payload)
    upload = package.upload()
    upload.payload_path.unlink()
    upload = type(upload)(package.manifest, package.signature, spooled)

    service.publish_update(upload, now=NOW)

    assert not spooled.exists()  # consumed: moved into the blob store or sent and removed
    assert list(upload_dir.iterdir()) == []
