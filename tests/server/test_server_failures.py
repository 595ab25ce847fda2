"""Why devices failed: stored failure details, retrying reasons, grouping by cause."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from javia_core.failures import FailureClass, fit_failure
from javia_core.models import StatusReport, UpdateStatus

FLEET = 1_000


def _report(service, device, update_id, status, clock, message=None, failure=None):  # type: ignore[no-untyped-def]
    fresh = service.find_device(device.device_uuid)
    return service.report_status(
        fresh,
        update_id,
        StatusReport(status=status, error_message=message, failure=failure),
        now=clock.now,
    )


def _cause(index: int) -> tuple[UpdateStatus, str, Any]:
    """Four causes, each with details that differ from device to device."""
    kind = index % 10
    if kind < 6:  # the pip index is gone for good: a package that does not exist
        reason = f"installing requirements.txt failed with status 1 after {index}.5 s"
        tail = f"ERROR: No matching distribution found for voice-engine==9.{index}"
        failure = fit_failure(FailureClass.DEPENDENCIES, "staging", reason, output_tail=tail)
        return UpdateStatus.FAILED, reason, failure
    if kind < 9:  # the new release crashes on start
        reason = f"v1.1.0 stopped running {index / 100:.1f} s into its 30 s health check"
        tail = f"pid {1000 + index}: RuntimeError: no microphone at 10.0.{index % 255}.1"
        failure = fit_failure(
            FailureClass.CRASH_AFTER_START, "health_check", reason, exit_code=3, output_tail=tail
        )
        return UpdateStatus.ROLLED_BACK, reason, failure
    if index % 20 == 9:  # an older agent: a message, no failure object
        return UpdateStatus.FAILED, f"not enough disk space: needs {index} bytes", None
    reason = "the health command exited with status 2"
    failure = fit_failure(
        FailureClass.HEALTH_CHECK,
        "health_check",
        reason,
        health_output_tail=f"probe {index} failed",
    )
    return UpdateStatus.ROLLED_BACK, reason, failure


def _insert_fleet(backend, clock, count: int) -> list[uuid.UUID]:  # type: ignore[no-untyped-def]
    """``count`` registered devices in one transaction (the store's tables, no HTTP)."""
    store = backend.store
    uuids = [uuid.uuid4() for _ in range(count)]
    with store.engine.begin() as connection:
        connection.execute(
            store.tables.devices.insert(),
            [
                {
                    "device_uuid": str(device_uuid),
                    "device_name": f"pi-{index}",
                    "registered_at": clock.now,
                    "timezone": "UTC",
                    "status": "offline",
                    "metadata": {},
                    "token_hash": f"{index:064x}",
                    "tags": [],
                    "created_at": clock.now,
                    "updated_at": clock.now,
                }
                for index, device_uuid in enumerate(uuids)
            ],
        )
    return uuids


def _record_failures(backend, update_id: int, uuids: list[uuid.UUID], clock) -> None:  # type: ignore[no-untyped-def]
    """Each device's row moved to its cause's final status, as the status route stores it."""
    from sqlalchemy import bindparam

    store = backend.store
    du, d = store.tables.device_updates, store.tables.devices
    ids = dict(
        store.engine.connect().execute(d.select().with_only_columns(d.c.device_uuid, d.c.id)).all()
    )
    values = []
    for index, device_uuid in enumerate(uuids):
        status, message, failure = _cause(index)
        values.append(
            {
                "row_device": ids[str(device_uuid)],
                "new_status": status.value,
                "message": message,
                "failure_json": None if failure is None else failure.model_dump(mode="json"),
                "at": clock.now + timedelta(seconds=index),
            }
        )
    statement = (
        du.update()
        .where(du.c.device_id == bindparam("row_device"), du.c.update_id == update_id)
        .values(
            status=bindparam("new_status"),
            error_message=bindparam("message"),
            failure=bindparam("failure_json", type_=du.c.failure.type),
            updated_at=bindparam("at"),
        )
    )
    with store.engine.begin() as connection:
        connection.execute(statement, values)


def test_a_thousand_failures_collapse_into_their_causes(
    backend, service, clock, make_package, client, admin
):
    uuids = _insert_fleet(backend, clock, FLEET)
    update = service.publish_update(make_package("v1.1.0", "scheduled").upload(), now=clock.now)
    _record_failures(backend, update.id, uuids, clock)

    grouped = service.update_failures("v1.1.0")

    assert grouped.total == FLEET
    summary = {(group.failure_class, group.count) for group in grouped.groups}
    assert summary == {
        ("dependencies", 600),
        ("crash_after_start", 300),
        ("unknown", 50),
        ("health_check", 50),
    }
    assert [group.count for group in grouped.groups] == [600, 300, 50, 50]
    crash = grouped.groups[1]
    assert crash.statuses == {"rolled_back": 300}
    assert crash.example is not None and crash.example.exit_code == 3
    assert "RuntimeError: no microphone at <address>" in crash.cause
    # The example is the latest device to report that cause.
    assert uuid.UUID(crash.example_device_uuid) == uuids[998]

    # The same through the API, as the CLI reads it.
    answer = client.get("/api/v1/updates/v1.1.0/failures", headers=admin)
    assert answer.status_code == 200, answer.text
    assert [group["count"] for group in answer.json()["groups"]] == [600, 300, 50, 50]


def test_failure_details_are_stored_and_shown_with_the_row(service, clock, register, make_package):
    device, _ = register(name="kitchen")
    update = service.publish_update(make_package("v1.1.0", "scheduled").upload(), now=clock.now)
    failure = fit_failure(
        FailureClass.CRASH_AFTER_START,
        "health_check",
        "v1.1.0 stopped running",
        signal=9,
        output_tail="starting\nKilled",
        output_source="app_log",
    )
    _report(service, device, update.id, UpdateStatus.INSTALLING, clock)
    _report(service, device, update.id, UpdateStatus.ROLLED_BACK, clock, "stopped", failure)

    (row,) = service.update_devices("v1.1.0").items
    assert row.failure == failure
    (history,) = service.device_history(device.device_uuid).items
    assert history.failure == failure


def test_a_new_reason_on_a_retrying_row_is_stored(service, clock, register, make_package):
    device, _ = register()
    update = service.publish_update(make_package("v1.1.0", "scheduled").upload(), now=clock.now)
    first = _report(service, device, update.id, UpdateStatus.RETRYING, clock, "pip index down")
    again = _report(service, device, update.id, UpdateStatus.RETRYING, clock, "pip index down")
    other = _report(service, device, update.id, UpdateStatus.RETRYING, clock, "disk full")

    assert (first.changed, again.changed, other.changed) == (True, False, True)
    (row,) = service.update_devices("v1.1.0").items
    assert (row.status, row.error_message) == (UpdateStatus.RETRYING, "disk full")
    completed = _report(service, device, update.id, UpdateStatus.COMPLETED, clock)
    assert completed.changed and completed.status is UpdateStatus.COMPLETED


def test_hostile_failure_objects_are_refused_naming_the_field(client, admin, device, publish):
    response, _ = publish("v1.1.0", "instant")
    update_id = response.json()["id"]
    url = f"/api/v1/devices/{device['uuid']}/updates/{update_id}/status"
    base = {"failure_class": "start", "step": "switching", "reason": "did not start"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"status": "failed", "failure": {**base, "reason": "a\x00b"}}, "reason"),
        ({"status": "failed", "failure": {**base, "step": "<script>"}}, "step"),
        ({"status": "failed", "failure": {**base, "exit_code": -1}}, "exit_code"),
        ({"status": "failed", "failure": {**base, "failure_class": "x"}}, "failure_class"),
        ({"status": "failed", "failure": {**base, "extra": 1}}, "extra"),
        ({"status": "downloading", "failure": base}, "failure"),
    ]
    for body, field in cases:
        answer = client.post(url, json=body, headers=device["headers"])
        assert answer.status_code == 422, (body, answer.text)
        assert field in answer.text
    accepted = client.post(
        url, json={"status": "failed", "failure": base}, headers=device["headers"]
    )
    assert accepted.status_code == 200, accepted.text
    rows = client.get(f"/api/v1/updates/{update_id}/devices", headers=admin).json()["items"]
    assert rows[0]["failure"]["failure_class"] == "start"
