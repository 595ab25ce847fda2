"""Plans and publish weigh ``staged`` and ``retrying`` rows as the heartbeat does (DESIGN.md section 4).

A row staged ahead of its window waits like a pending one: a higher publish
supersedes it in the publish's own write and takes its timing when more urgent,
and ``updates plan`` says when it installs (its window slot) and that a pause
holds it, as it does for a row the device is retrying. The dry run, the
publish, the plan and the heartbeat must agree.
"""

from __future__ import annotations

import pytest

from javia_core.models import StatusReport, UpdateStatus, UpdateType

TYPES = [UpdateType.SCHEDULED, UpdateType.URGENT, UpdateType.INSTANT]


def _publish(service, clock, make_package, version, update_type):  # type: ignore[no-untyped-def]
    return service.publish_update(make_package(version, update_type.value).upload(), now=clock.now)


def _entry(entries, device):  # type: ignore[no-untyped-def]
    (entry,) = [entry for entry in entries if entry.device_uuid == device.device_uuid]
    return entry


def _report(service, clock, device, update_id, *statuses):  # type: ignore[no-untyped-def]
    for status in statuses:
        service.report_status(
            service.find_device(device.device_uuid),
            update_id,
            StatusReport(status=status),
            now=clock.now,
        )


@pytest.mark.parametrize("first", [UpdateType.SCHEDULED, UpdateType.URGENT])
@pytest.mark.parametrize("second", TYPES)
def test_a_staged_row_is_superseded_at_publish_and_lends_its_timing(
    service, clock, register, beat, make_package, first: UpdateType, second: UpdateType
) -> None:
    device, _ = register(timezone="Europe/Berlin")
    beat(device)
    older = _publish(service, clock, make_package, "v1.1.0", first)
    beat(device)
    _report(service, clock, device, older.id, UpdateStatus.DOWNLOADING, UpdateStatus.STAGED)
    clock.advance(minutes=1)

    dry = _entry(service.plan_new_update(second, "v1.2.0", None, now=clock.now), device)
    newer = _publish(service, clock, make_package, "v1.2.0", second)

    superseded = service.store.get_device_update(device.id, older.id)
    assert (superseded.status, superseded.error_message) == (
        UpdateStatus.SUPERSEDED,
        "superseded by v1.2.0",
    )
    winner = service.store.get_device_update(device.id, newer.id)
    strongest = max(first, second, key=TYPES.index)
    assert winner.install_type is strongest
    assert "supersedes staged v1.1.0" in dry.reason
    assert dry.install_at_utc == winner.scheduled_for
    published = _entry(service.plan_published("v1.2.0", now=clock.now), device)
    assert published.install_at_utc == winner.scheduled_for

    directive = beat(device).update
    assert (str(directive.version), directive.update_type) == ("v1.2.0", strongest)
    assert directive.install_at == dry.install_at_utc


def test_the_plan_of_a_staged_row_shows_its_window_slot_and_that_a_pause_holds_it(
    service, clock, register, beat, make_package
) -> None:
    device, _ = register(timezone="Europe/Berlin")
    beat(device)
    update = _publish(service, clock, make_package, "v1.1.0", UpdateType.SCHEDULED)
    offer = beat(device).update
    clock.advance(minutes=5)
    _report(service, clock, device, update.id, UpdateStatus.DOWNLOADING, UpdateStatus.STAGED)

    staged = _entry(service.plan_published("v1.1.0", now=clock.now), device)
    assert staged.status is UpdateStatus.STAGED and staged.gets_row
    assert staged.install_at_utc == offer.install_at  # its slot, not when it downloaded
    assert staged.reason.startswith("staged: ")

    service.rollout_command(update.id, "pause", reason="ops", now=clock.now)
    paused = _entry(service.plan_published("v1.1.0", now=clock.now), device)
    assert paused.reason.startswith("paused, then staged: ") and paused.install_at_utc is None


def test_the_plan_of_a_retrying_row_says_a_pause_holds_it(
    service, clock, register, beat, make_package
) -> None:
    device, _ = register()
    beat(device)
    update = _publish(service, clock, make_package, "v1.1.0", UpdateType.SCHEDULED)
    beat(device)
    _report(service, clock, device, update.id, UpdateStatus.DOWNLOADING, UpdateStatus.RETRYING)

    service.rollout_command(update.id, "pause", reason="ops", now=clock.now)
    paused = _entry(service.plan_published("v1.1.0", now=clock.now), device)
    assert paused.reason.startswith("paused, then retrying") and paused.install_at_utc is None
