"""The update-type rules of the service (DESIGN.md section 4), with an injected clock."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from pydantic import ValidationError

from javia_core import scheduling
from javia_core.errors import (
    ConflictError,
    ManifestError,
    NotFoundError,
    PackageError,
    SignatureError,
)
from javia_core.models import (
    DeviceRegisterRequest,
    DeviceStatus,
    HeartbeatRequest,
    StatusReport,
    UpdateStatus,
    UpdateType,
)
from javia_updates.service import InvalidRequestError, UpdateService, derive_status


def statuses(service: UpdateService, version: str) -> dict[uuid.UUID, UpdateStatus]:
    """device uuid → row status for the update published as ``version``."""
    return {row.device_uuid: row.status for row in service.update_devices(version).items}


def report(service, device, directive, status: UpdateStatus, clock, message=None):  # type: ignore[no-untyped-def]
    fresh = service.find_device(device.device_uuid)
    return service.report_status(
        fresh,
        directive.update_id,
        StatusReport(status=status, error_message=message),
        now=clock.now,
    )


# --------------------------------------------------------------------------- publish


def test_scheduled_publish_gives_every_device_a_row_in_its_next_window(
    service, clock, register, beat, make_package
):
    berlin, _ = register(timezone="Europe/Berlin")
    tokyo, _ = register(timezone="Asia/Tokyo")
    never_seen, _ = register(timezone="UTC")
    beat(berlin)
    beat(tokyo)

    update = service.publish_update(make_package("v1.1.0", "scheduled").upload(), now=clock.now)

    assert update.status_counts == {"pending": 3}
    rows = {row.device_uuid: row for row in service.update_devices(update.id).items}
    for device in (berlin, tokyo, never_seen):
        expected = scheduling.plan_install(
            UpdateType.SCHEDULED,
            now=clock.now,
            timezone=device.timezone,
            device_uuid=device.device_uuid,
        )
        assert rows[device.device_uuid].scheduled_for == expected.install_at
    # Berlin's 02:00 on the next morning is 01:00 UTC; the offset lies in the first 2 h.
    berlin_at = rows[berlin.device_uuid].scheduled_for
    assert clock.now.replace(day=16, hour=1) <= berlin_at < clock.now.replace(day=16, hour=3)


def test_devices_already_on_the_version_or_newer_get_no_row(
    service, clock, register, beat, make_package
):
    old, _ = register()
    same, _ = register()
    newer, _ = register()
    beat(old, "v1.0.0")
    beat(same, "v1.1.0")
    beat(newer, "v2.0.0")

    update = service.publish_update(make_package("v1.1.0", "urgent").upload(), now=clock.now)

    assert statuses(service, update.version) == {old.device_uuid: UpdateStatus.PENDING}


def test_urgent_directive_requires_the_configured_idle_time(
    service, clock, register, beat, make_package
):
    device, _ = register(timezone="America/New_York")
    beat(device)
    service.publish_update(make_package("v1.1.0", "urgent").upload(), now=clock.now)

    directive = beat(device).update

    assert directive.update_type is UpdateType.URGENT
    assert directive.idle_seconds_required == service.settings.urgent_idle_seconds == 3600
    plan = scheduling.plan_install(
        UpdateType.URGENT,
        now=clock.now,
        timezone="America/New_York",
        device_uuid=device.device_uuid,
    )
    assert (directive.install_at, directive.window_end) == (plan.install_at, plan.window_end)
    assert directive.download_url == f"/api/v1/updates/{directive.update_id}/download"


def test_instant_publish_reaches_only_devices_seen_within_300_seconds_inclusive(
    service, clock, register, beat, make_package
):
    edge, _ = register()
    late, _ = register()
    never, _ = register()
    beat(late)
    clock.advance(seconds=1)
    beat(edge)
    clock.advance(seconds=300)  # edge: seen exactly 300 s ago; late: 301 s ago

    update = service.publish_update(make_package("v1.1.0", "instant").upload(), now=clock.now)

    assert statuses(service, update.version) == {edge.device_uuid: UpdateStatus.PENDING}
    row = service.update_devices(update.id).items[0]
    assert row.scheduled_for == clock.now
    # The devices that were offline get it at their next heartbeat, to install at once.
    clock.advance(minutes=42)
    directive = beat(never).update
    assert directive is not None and str(directive.version) == "v1.1.0"
    assert directive.update_type is UpdateType.INSTANT
    assert directive.install_at == clock.now
    assert set(statuses(service, "v1.1.0")) == {edge.device_uuid, never.device_uuid}


def test_publish_with_targets_touches_only_those_devices(
    service, clock, register, beat, make_package
):
    chosen, _ = register()
    other, _ = register()
    update = service.publish_update(
        make_package("v1.1.0").upload(),
        now=clock.now,
        targets=[chosen.device_uuid, chosen.device_uuid],
    )
    assert update.targets == [chosen.device_uuid]
    assert set(statuses(service, "v1.1.0")) == {chosen.device_uuid}
    # The other device is not reconciled either: the update is not meant for it.
    assert beat(other).update is None


def test_unknown_target_refuses_the_publish_and_keeps_nothing(
    service, clock, register, make_package, settings
):
    register()
    package = make_package("v1.1.0")
    stranger = uuid.uuid4()
    with pytest.raises(NotFoundError, match=str(stranger)):
        service.publish_update(package.upload(), now=clock.now, targets=[stranger])
    assert service.list_updates().total == 0
    assert not any((settings.data_dir / "packages").rglob("*.tar.gz"))


def test_empty_target_list_is_refused(service, clock, make_package):
    with pytest.raises(InvalidRequestError, match="omit targets"):
        service.publish_update(make_package().upload(), now=clock.now, targets=[])


@pytest.mark.parametrize("bad", ["1.2.3", "v1.2", "v01.2.3", "v1.2.3-rc1", " v1.2.3"])
def test_publish_refuses_a_bad_version_showing_the_expected_form(service, clock, make_package, bad):
    with pytest.raises(ManifestError, match=r"vX\.Y\.Z"):
        service.publish_update(make_package(bad).upload(), now=clock.now)


def test_version_numbers_beyond_the_database_range_are_refused(service, clock, make_package):
    with pytest.raises(ValueError, match=r"vX\.Y\.Z"):
        service.publish_update(make_package(f"v{2**63}.0.0").upload(), now=clock.now)


def test_duplicate_version_is_a_conflict_naming_the_existing_update(service, clock, make_package):
    first = service.publish_update(make_package("v1.2.3").upload(), now=clock.now)
    with pytest.raises(ConflictError) as caught:
        service.publish_update(make_package("v1.2.3").upload(), now=clock.now)
    assert str(caught.value) == (
        f"version v1.2.3 is already published (update {first.id}); publish a higher version"
    )


def test_payload_that_does_not_match_the_manifest_is_refused_with_expected_and_actual(
    service, clock, make_package, settings
):
    package = make_package("v1.1.0", payload_override=b"not the signed payload")
    upload = package.upload()
    with pytest.raises(PackageError) as caught:
        service.publish_update(upload, now=clock.now)
    message = str(caught.value)
    assert "size is 22 bytes, the manifest says" in message
    assert "sha256 is" in message and "the manifest says" in message
    assert not upload.payload_path.exists()  # consumed even when refused
    assert service.list_updates().total == 0


def test_requested_type_must_equal_the_signed_type(service, clock, make_package):
    with pytest.raises(PackageError, match="signed manifest says scheduled"):
        service.publish_update(
            make_package("v1.1.0", "scheduled").upload(),
            now=clock.now,
            update_type=UpdateType.INSTANT,
        )


def test_malformed_signature_file_is_refused(service, clock, make_package):
    package = make_package("v1.1.0")
    package.signature = b'{"algorithm": "rsa"}'
    with pytest.raises(SignatureError):
        service.publish_update(package.upload(), now=clock.now)


def test_server_side_keyring_refuses_an_untrusted_signature(backend, settings, clock, make_package):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from javia_core.manifest import key_id_for

    other = Ed25519PrivateKey.generate().public_key()
    strict = UpdateService(backend, settings, keyring={key_id_for(other): other})
    with pytest.raises(SignatureError, match="not in the keyring"):
        strict.publish_update(make_package("v1.1.0").upload(), now=clock.now)


def test_server_side_keyring_accepts_the_trusted_key(
    backend, settings, clock, make_package, signing_key
):
    from javia_core.manifest import key_id_for

    public = signing_key.public_key()
    strict = UpdateService(backend, settings, keyring={key_id_for(public): public})
    update = strict.publish_update(make_package("v1.1.0").upload(), now=clock.now)
    assert update.key_id == key_id_for(public)


def test_publish_stores_the_exact_manifest_and_signature(service, clock, make_package):
    package = make_package("v1.1.0")
    update = service.publish_update(package.upload(), now=clock.now)
    record = service.resolve_update(update.id)
    assert service.package_documents(record) == (package.manifest, package.signature)
    assert b"".join(service.payload_range(record, 0, record.archive_size)) == package.payload


# --------------------------------------------------------------------------- heartbeat rules


def test_device_registered_after_a_scheduled_publish_is_reconciled_at_its_heartbeat(
    service, clock, register, beat, make_package
):
    service.publish_update(make_package("v1.1.0", "scheduled").upload(), now=clock.now)
    clock.advance(hours=3)
    late, _ = register(timezone="Europe/Berlin")

    directive = beat(late).update

    assert directive is not None and str(directive.version) == "v1.1.0"
    expected = scheduling.plan_install(
        UpdateType.SCHEDULED, now=clock.now, timezone="Europe/Berlin", device_uuid=late.device_uuid
    )
    assert directive.install_at == expected.install_at
    assert directive.update_type is UpdateType.SCHEDULED


def test_reconciliation_offers_only_the_newest_update_that_targets_the_device(
    service, clock, register, beat, make_package
):
    service.publish_update(make_package("v1.1.0").upload(), now=clock.now)
    service.publish_update(make_package("v1.2.0").upload(), now=clock.now)
    late, _ = register()

    assert str(beat(late).update.version) == "v1.2.0"
    history = service.device_history(late.device_uuid)
    assert [(row.version, row.status) for row in history.items] == [
        ("v1.2.0", UpdateStatus.PENDING)
    ]


def test_no_reconciliation_for_a_version_the_device_already_runs(
    service, clock, register, beat, make_package
):
    service.publish_update(make_package("v1.1.0").upload(), now=clock.now)
    late, _ = register()
    assert beat(late, "v1.1.0").update is None
    assert service.device_history(late.device_uuid).total == 0


def test_highest_pending_version_wins_with_the_most_urgent_timing(
    service, clock, register, beat, make_package
):
    device, _ = register(timezone="Europe/Berlin")
    beat(device)
    service.publish_update(make_package("v1.1.0", "instant").upload(), now=clock.now)
    clock.advance(seconds=30)
    service.publish_update(make_package("v1.2.0", "scheduled").upload(), now=clock.now)
    clock.advance(seconds=30)

    directive = beat(device).update

    assert str(directive.version) == "v1.2.0"
    assert directive.update_type is UpdateType.INSTANT  # inherited from the superseded v1.1.0
    assert directive.install_at <= clock.now
    assert statuses(service, "v1.1.0")[device.device_uuid] is UpdateStatus.SUPERSEDED
    # The inherited timing is stored: the next heartbeat still says instant.
    clock.advance(minutes=5)
    assert beat(device).update.update_type is UpdateType.INSTANT


def test_urgent_beats_scheduled_in_supersession(service, clock, register, beat, make_package):
    device, _ = register()
    beat(device)
    service.publish_update(make_package("v1.1.0", "urgent").upload(), now=clock.now)
    service.publish_update(make_package("v1.2.0", "scheduled").upload(), now=clock.now)

    directive = beat(device).update

    assert (str(directive.version), directive.update_type) == ("v1.2.0", UpdateType.URGENT)
    assert directive.idle_seconds_required == 3600


def test_pending_row_for_a_version_the_device_already_runs_is_superseded(
    service, clock, register, beat, make_package
):
    device, _ = register()
    beat(device)
    service.publish_update(make_package("v1.1.0").upload(), now=clock.now)
    # Installed by other means (USB stick, `javia agent install`).
    assert beat(device, "v1.1.0").update is None
    assert statuses(service, "v1.1.0")[device.device_uuid] is UpdateStatus.SUPERSEDED


def test_update_in_flight_finishes_before_a_newer_one_is_offered(
    service, clock, register, beat, make_package
):
    device, _ = register()
    beat(device)
    service.publish_update(make_package("v1.1.0", "instant").upload(), now=clock.now)
    first = beat(device).update
    report(service, device, first, UpdateStatus.DOWNLOADING, clock)
    service.publish_update(make_package("v1.2.0", "instant").upload(), now=clock.now)

    during = beat(device).update
    assert (str(during.version), during.status) == ("v1.1.0", UpdateStatus.DOWNLOADING)
    assert statuses(service, "v1.2.0")[device.device_uuid] is UpdateStatus.PENDING

    report(service, device, first, UpdateStatus.COMPLETED, clock)
    after = beat(device, "v1.1.0").update
    assert (str(after.version), after.status) == ("v1.2.0", UpdateStatus.PENDING)


def test_missed_window_is_replanned_for_the_next_one(service, clock, register, beat, make_package):
    device, _ = register(timezone="Europe/Berlin")
    beat(device)
    service.publish_update(make_package("v1.1.0", "scheduled").upload(), now=clock.now)
    first = beat(device).update
    clock.now = first.window_end + timedelta(minutes=1)  # the device slept through its window

    second = beat(device).update

    assert second.install_at == first.install_at + timedelta(days=1)
    assert second.window_end == first.window_end + timedelta(days=1)
    stored = service.update_devices("v1.1.0").items[0]
    assert stored.scheduled_for == second.install_at


def test_inside_its_window_a_late_device_keeps_its_plan(
    service, clock, register, beat, make_package
):
    device, _ = register()
    beat(device)
    service.publish_update(make_package("v1.1.0", "scheduled").upload(), now=clock.now)
    first = beat(device).update
    clock.now = first.window_end - timedelta(seconds=1)
    assert beat(device).update.install_at == first.install_at


@pytest.mark.parametrize("final", [UpdateStatus.FAILED, UpdateStatus.ROLLED_BACK])
def test_failed_version_is_never_offered_again_but_a_newer_one_is(
    service, clock, register, beat, make_package, final
):
    device, _ = register()
    beat(device)
    service.publish_update(make_package("v1.1.0", "instant").upload(), now=clock.now)
    directive = beat(device).update
    report(service, device, directive, UpdateStatus.INSTALLING, clock)
    report(service, device, directive, final, clock, message="health check failed")

    for _ in range(3):
        clock.advance(minutes=5)
        assert beat(device).update is None

    service.publish_update(make_package("v1.1.1", "instant").upload(), now=clock.now)
    assert str(beat(device).update.version) == "v1.1.1"


def test_heartbeat_records_last_seen_version_status_and_merges_metadata(service, clock):
    registered = service.register_device(
        DeviceRegisterRequest(device_name="kitchen", metadata={"room": "kitchen"}), now=clock.now
    )
    device = service.find_device(registered.device_uuid)
    clock.advance(seconds=10)
    response = service.heartbeat(
        device,
        HeartbeatRequest(
            current_version="v1.0.3", status=DeviceStatus.UPDATING, metadata={"cpu": 41}
        ),
        now=clock.now,
    )
    assert response.server_time == clock.now
    assert response.heartbeat_interval_seconds == 300
    stored = service.get_device(device.device_uuid, now=clock.now)
    assert stored.last_seen == clock.now
    assert stored.current_version == "v1.0.3"
    assert stored.status is DeviceStatus.UPDATING
    assert stored.metadata == {"room": "kitchen", "cpu": 41}


def test_metadata_larger_than_64_kib_is_refused(service, clock, register):
    # Refused where the request is parsed (the API's 422), before the service sees it.
    register()
    with pytest.raises(ValidationError, match="at most 65536"):
        HeartbeatRequest(metadata={"blob": "x" * 70_000})


# --------------------------------------------------------------------------- status reports


def test_status_moves_forward_and_repeats_are_idempotent(
    service, clock, register, beat, make_package
):
    device, _ = register()
    beat(device)
    service.publish_update(make_package("v1.1.0", "instant").upload(), now=clock.now)
    directive = beat(device).update

    started = clock.now
    first = report(service, device, directive, UpdateStatus.DOWNLOADING, clock)
    again = report(service, device, directive, UpdateStatus.DOWNLOADING, clock)
    assert (first.changed, again.changed) == (True, False)
    assert again.status is UpdateStatus.DOWNLOADING

    clock.advance(minutes=2)
    done = report(service, device, directive, UpdateStatus.COMPLETED, clock)
    assert done.changed and done.status is UpdateStatus.COMPLETED

    # Late or duplicated reports never move a finished row backwards.
    for late in (UpdateStatus.DOWNLOADING, UpdateStatus.INSTALLING, UpdateStatus.FAILED):
        result = report(service, device, directive, late, clock)
        assert (result.changed, result.status) == (False, UpdateStatus.COMPLETED)

    row = service.device_history(device.device_uuid).items[0]
    assert row.started_at == started
    assert row.completed_at == clock.now
    # Completion raises the device's recorded version.
    assert service.get_device(device.device_uuid, now=clock.now).current_version == "v1.1.0"


def test_installing_then_downloading_is_ignored(service, clock, register, beat, make_package):
    device, _ = register()
    beat(device)
    service.publish_update(make_package("v1.1.0", "instant").upload(), now=clock.now)
    directive = beat(device).update
    report(service, device, directive, UpdateStatus.INSTALLING, clock)
    late = report(service, device, directive, UpdateStatus.DOWNLOADING, clock)
    assert (late.changed, late.status) == (False, UpdateStatus.INSTALLING)


def test_report_for_an_update_the_device_has_no_row_for_is_not_found(
    service, clock, register, beat, make_package
):
    device, _ = register()
    update = service.publish_update(
        make_package("v1.1.0").upload(), now=clock.now, targets=[register()[0].device_uuid]
    )
    with pytest.raises(NotFoundError, match="not assigned"):
        service.report_status(
            device, update.id, StatusReport(status=UpdateStatus.DOWNLOADING), now=clock.now
        )


# --------------------------------------------------------------------------- derived status


def test_device_is_offline_after_more_than_three_heartbeat_intervals(
    service, clock, register, beat
):
    device, _ = register()
    assert (
        service.get_device(device.device_uuid, now=clock.now).status is DeviceStatus.OFFLINE
    )  # never seen
    beat(device)
    seen = clock.now
    interval = service.settings.heartbeat_interval_seconds

    at_limit = seen + timedelta(seconds=3 * interval)
    assert service.get_device(device.device_uuid, now=at_limit).status is DeviceStatus.ONLINE
    past = at_limit + timedelta(seconds=1)
    assert service.get_device(device.device_uuid, now=past).status is DeviceStatus.OFFLINE

    # The list filters agree with the derived status, at the same instants.
    assert service.list_devices(now=at_limit, status=DeviceStatus.ONLINE).total == 1
    assert service.list_devices(now=past, status=DeviceStatus.OFFLINE).total == 1
    assert service.list_devices(now=past, online=True).total == 0
    assert service.list_devices(now=at_limit, online=False).total == 0


def test_derive_status_keeps_the_reported_status_while_fresh(service, clock, register, beat):
    device, _ = register()
    service.heartbeat(device, HeartbeatRequest(status=DeviceStatus.UPDATING), now=clock.now)
    fresh = service.find_device(device.device_uuid)
    assert (
        derive_status(fresh, now=clock.now, heartbeat_interval_seconds=300) is DeviceStatus.UPDATING
    )


# --------------------------------------------------------------------------- plans


def test_dry_run_plan_shows_who_installs_when(service, clock, register, beat):
    online, _ = register(timezone="Europe/Berlin")
    offline, _ = register()
    current, _ = register()
    beat(online)
    beat(current, "v2.0.0")

    plan = {
        entry.device_uuid: entry
        for entry in service.plan_new_update(UpdateType.INSTANT, "v1.1.0", None, now=clock.now)
    }

    assert (
        plan[online.device_uuid].gets_row and plan[online.device_uuid].install_at_utc == clock.now
    )
    assert not plan[offline.device_uuid].gets_row
    assert "next heartbeat" in plan[offline.device_uuid].reason
    assert "already runs v2.0.0" in plan[current.device_uuid].reason
    assert service.list_updates().total == 0  # nothing was published


def test_plan_of_a_published_update_reflects_its_rows(service, clock, register, beat, make_package):
    device, _ = register(timezone="Europe/Berlin")
    later, _ = register()
    beat(device)
    update = service.publish_update(make_package("v1.1.0", "instant").upload(), now=clock.now)
    directive = beat(device).update
    report(service, device, directive, UpdateStatus.INSTALLING, clock)

    plan = {entry.device_uuid: entry for entry in service.plan_published(update.id, now=clock.now)}

    assert plan[device.device_uuid].status is UpdateStatus.INSTALLING
    assert plan[later.device_uuid].gets_row is False and plan[later.device_uuid].status is None


def test_dry_run_refuses_a_published_version(service, clock, make_package):
    service.publish_update(make_package("v1.1.0").upload(), now=clock.now)
    with pytest.raises(ConflictError, match="already published"):
        service.plan_new_update(UpdateType.SCHEDULED, "v1.1.0", None, now=clock.now)


def test_updates_resolve_by_id_or_version(service, clock, make_package):
    update = service.publish_update(make_package("v1.10.0").upload(), now=clock.now)
    assert service.get_update("v1.10.0").id == update.id
    assert service.get_update(str(update.id)).version == "v1.10.0"
    with pytest.raises(NotFoundError):
        service.get_update("99999999999999999999"[:19])
    with pytest.raises(InvalidRequestError, match="v1.2.3"):
        service.get_update("latest")


def test_sub_second_demo_interval_reaches_the_device_and_drives_offline(backend, settings, clock):
    fast = UpdateService(backend, settings.model_copy(update={"heartbeat_interval_seconds": 0.5}))
    registered = fast.register_device(DeviceRegisterRequest(), now=clock.now)
    device = fast.find_device(registered.device_uuid)
    assert (
        fast.heartbeat(device, HeartbeatRequest(), now=clock.now).heartbeat_interval_seconds == 0.5
    )
    assert (
        fast.get_device(device.device_uuid, now=clock.now + timedelta(seconds=1.5)).status
        is DeviceStatus.ONLINE
    )
    assert (
        fast.get_device(device.device_uuid, now=clock.now + timedelta(seconds=1.6)).status
        is DeviceStatus.OFFLINE
    )
