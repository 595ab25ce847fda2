"""A row the device reported ``staged`` (prepared ahead of its window) is still a waiting row.

The server keeps offering it, counts it, re-plans it when its window passed,
and a newer publish or a cancelled rollout ends it (issue 14, "prepared
before the window"; docs/agent.md, "Staged ahead of the window").
"""

from __future__ import annotations

from datetime import timedelta

from javia_core.models import StatusReport, UpdateStatus


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
