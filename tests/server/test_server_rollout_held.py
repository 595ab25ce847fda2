# ruff: noqa: F811 (the fleet fixture, imported from test_server_rollouts, is the tests' argument)
"""Rollouts and the devices that took the offer without installing yet: ``staged`` and ``retrying``.

On SQLite and PostgreSQL (docs/rollouts.md, "Device statuses"): such devices
are in the exposed cohort; a pause holds them (no directive, ``held`` names the
update so the device keeps its work), a resume offers them again, and a halt
or a cancel stops them (nothing held: the device deletes its work).
"""

from __future__ import annotations

from test_server_rollouts import (  # noqa: F401 (fixtures)
    Fleet,
    database_url,
    fleet,
    fleet_service,
)

from javia_core.models import HeartbeatRequest, UpdateStatus


def _answer(fleet: Fleet, device: object) -> object:
    fresh = fleet.service.find_device(device.device_uuid)  # type: ignore[attr-defined]
    return fleet.service.heartbeat(
        fresh, HeartbeatRequest(current_version="v1.0.0"), now=fleet.clock.now
    )


def _took_offer(fleet: Fleet, update_id: int, *statuses: UpdateStatus) -> None:
    fleet.beat_all()
    for device, status in zip(fleet.devices, statuses, strict=False):
        fleet.report(device, update_id, UpdateStatus.DOWNLOADING)
        if status is not UpdateStatus.DOWNLOADING:
            fleet.report(device, update_id, status)


def test_staged_and_retrying_devices_are_in_the_exposed_cohort(fleet: Fleet) -> None:
    fleet.register(4)
    update_id = fleet.publish()
    _took_offer(
        fleet, update_id, UpdateStatus.DOWNLOADING, UpdateStatus.STAGED, UpdateStatus.RETRYING
    )

    view = fleet.rollout(update_id)
    assert view.phase_counts[0] == {"downloading": 1, "staged": 1, "retrying": 1, "pending": 1}
    assert (view.health.exposed.devices, view.health.exposed.finished) == (3, 0)
    assert view.health.previous.devices == 1  # only the pending device waits on the old release


def test_a_pause_holds_staged_and_retrying_devices_and_a_resume_offers_them_again(
    fleet: Fleet,
) -> None:
    fleet.register(3)
    update_id = fleet.publish()
    staged, retrying, waiting = fleet.devices
    _took_offer(fleet, update_id, UpdateStatus.STAGED, UpdateStatus.RETRYING)

    fleet.service.rollout_command(update_id, "pause", reason="ops", now=fleet.clock.now)
    for device in (staged, retrying):
        answer = _answer(fleet, device)
        assert answer.update is None  # type: ignore[attr-defined]
        held = answer.held  # type: ignore[attr-defined]
        assert held is not None and (held.update_id, str(held.version)) == (update_id, "v1.1.0")
    waiting_answer = _answer(fleet, waiting)
    assert waiting_answer.update is None and waiting_answer.held is None  # type: ignore[attr-defined]

    fleet.service.rollout_command(update_id, "resume", reason=None, now=fleet.clock.now)
    for device, status in ((staged, UpdateStatus.STAGED), (retrying, UpdateStatus.RETRYING)):
        answer = _answer(fleet, device)
        assert answer.held is None  # type: ignore[attr-defined]
        assert answer.update is not None and answer.update.status is status  # type: ignore[attr-defined]


def test_a_halt_stops_a_retrying_device_and_holds_nothing(fleet: Fleet) -> None:
    fleet.register(3)
    update_id = fleet.publish(halt_failure_rate=50, halt_min_devices=1)
    failing, retrying, staged = fleet.devices
    fleet.beat_all()
    fleet.report(retrying, update_id, UpdateStatus.RETRYING)
    fleet.report(staged, update_id, UpdateStatus.STAGED)
    fleet.report(failing, update_id, UpdateStatus.FAILED)
    assert fleet.rollout(update_id).state == "halted"

    for device in (retrying, staged):
        answer = _answer(fleet, device)
        assert answer.update is None and answer.held is None  # type: ignore[attr-defined]


def test_a_cancel_ends_staged_and_retrying_rows_and_holds_nothing(fleet: Fleet) -> None:
    fleet.register(2)
    update_id = fleet.publish()
    _took_offer(fleet, update_id, UpdateStatus.STAGED, UpdateStatus.RETRYING)
    fleet.service.rollout_command(update_id, "pause", reason="ops", now=fleet.clock.now)

    out = fleet.service.rollout_command(update_id, "cancel", reason="bad", now=fleet.clock.now)
    assert out.status_counts == {"cancelled": 2}
    for device in fleet.devices:
        answer = _answer(fleet, device)
        assert answer.update is None and answer.held is None  # type: ignore[attr-defined]
