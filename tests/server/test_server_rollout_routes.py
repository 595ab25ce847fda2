"""The rollout routes and publish's policy fields over HTTP: 200/409/422 with one clear line."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("phases", "10,5,100", "phases: phases must increase: 5 follows 10"),
        ("phases", "1,50", "phases: the last phase must be 100"),
        ("phase_soak_seconds", "99999999", "phase_soak_seconds: phase soak '99999999' is too long"),
        ("phase_soak_seconds", "31d", "phase soak '31d' is too long: at most 30d"),
        ("phase_soak_seconds", "soon", "phase_soak_seconds: invalid duration 'soon'"),
        ("halt_failure_rate", "0", "halt failure rate must be a percentage above 0"),
        ("halt_failure_rate", "ten", "halt_failure_rate: 'ten' is not a percentage"),
        ("halt_min_devices", "0", "halt_min_devices: halt minimum must be a whole number"),
        (
            "halt_min_devices",
            "99999999999999999999999",
            "halt_min_devices: halt minimum must be a whole number of devices from 1 to 1000000",
        ),
        ("halt_failure_rate", "nan", "halt_failure_rate: halt failure rate must be a percentage"),
        ("require_approval", "maybe", "require_approval: 'maybe' is not a boolean"),
    ],
)
def test_bad_policy_fields_are_422_naming_the_field_and_nothing_is_published(
    client: Any, admin: dict[str, str], publish: Any, field: str, value: str, expected: str
) -> None:
    response, _ = publish(data={field: value})
    assert response.status_code == 422, response.text
    assert expected in response.json()["detail"]
    assert client.get("/api/v1/updates/", headers=admin).json()["total"] == 0


def test_commands_answer_the_update_with_its_rollout_and_refusals_are_409(
    client: Any, admin: dict[str, str], publish: Any, device: dict[str, Any]
) -> None:
    response, _ = publish(
        data={"phases": "5,50,100", "phase_soak_seconds": "30m", "require_approval": "true"}
    )
    assert response.status_code == 201, response.text
    rollout = response.json()["rollout"]
    assert (rollout["state"], rollout["phases"], rollout["phase_soak_seconds"]) == (
        "awaiting_approval",
        [5, 50, 100],
        1800,
    )
    refused = client.post("/api/v1/updates/v1.1.0/resume", json={}, headers=admin)
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        "v1.1.0: resume refused: the rollout is not paused: it awaits approval"
    )

    approved = client.post(
        "/api/v1/updates/v1.1.0/approve", json={"reason": "release notes read"}, headers=admin
    )
    assert approved.status_code == 200
    assert approved.json()["rollout"]["state"] == "active"
    paused = client.post("/api/v1/updates/1/pause", json={"reason": None}, headers=admin)
    assert paused.json()["rollout"]["state"] == "paused"
    shown = client.get("/api/v1/updates/v1.1.0", headers=admin).json()["rollout"]
    assert shown["state"] == "paused" and len(shown["phase_counts"]) == 3
    listed = client.get("/api/v1/updates/", headers=admin).json()["items"]
    assert listed[0]["rollout"]["state"] == "paused"
    audit = client.get("/api/v1/audit/", headers=admin).json()["items"]
    approve = next(line for line in audit if line["action"] == "rollout.approve")
    assert approve["details"]["reason"] == "release notes read"


def test_unknown_command_and_unknown_update_are_refused(
    client: Any, admin: dict[str, str], publish: Any
) -> None:
    publish()
    assert client.post("/api/v1/updates/v1.1.0/explode", json={}, headers=admin).status_code == 422
    assert client.post("/api/v1/updates/v9.9.9/pause", json={}, headers=admin).status_code == 404
    assert client.post("/api/v1/updates/v1.1.0/pause", json={}).status_code == 401


def test_a_failure_reported_over_http_halts_and_the_next_device_gets_no_offer(
    client: Any, admin: dict[str, str], publish: Any
) -> None:
    devices = []
    for name in ("first", "second"):
        body = client.post(
            "/api/v1/devices/register", json={"device_name": name}, headers=admin
        ).json()
        headers = {"Authorization": f"Bearer {body['device_token']}"}
        devices.append((body["device_uuid"], headers))

    def heartbeat(uid: str, headers: dict[str, str]) -> Any:
        response = client.post(
            f"/api/v1/devices/{uid}/heartbeat", json={"current_version": "v1.0.0"}, headers=headers
        )
        assert response.status_code == 200
        return response.json()["update"]

    for uid, headers in devices:
        heartbeat(uid, headers)
    response, _ = publish(data={"halt_min_devices": "1", "halt_failure_rate": "50"})
    assert response.status_code == 201
    update_id = response.json()["id"]
    (first, first_headers), (second, second_headers) = devices
    assert heartbeat(first, first_headers)["update_id"] == update_id

    reported = client.post(
        f"/api/v1/devices/{first}/updates/{update_id}/status",
        json={"status": "failed", "error_message": "health check failed"},
        headers=first_headers,
    )
    assert reported.status_code == 200
    rollout = client.get(f"/api/v1/updates/{update_id}", headers=admin).json()["rollout"]
    assert rollout["state"] == "halted"
    assert rollout["halt_reason"] == "1 of 1 finished devices failed (100%) >= 50%: 1 failed"
    assert heartbeat(second, second_headers) is None


def test_a_command_with_an_empty_body_has_no_reason(
    client: Any, admin: dict[str, str], publish: Any, device: dict[str, Any]
) -> None:
    publish()
    response = client.post("/api/v1/updates/v1.1.0/pause", headers=admin)  # no body at all
    assert response.status_code == 200, response.text
    assert response.json()["rollout"]["state"] == "paused"
    audit = client.get("/api/v1/audit/", headers=admin).json()["items"]
    pause = next(line for line in audit if line["action"] == "rollout.pause")
    assert pause["details"]["reason"] is None


@pytest.mark.parametrize("reason", ["two\nlines", "bell\x07", "escape \x1b[2J"])
def test_a_reason_must_be_one_line_of_printable_text(
    client: Any, admin: dict[str, str], publish: Any, reason: str
) -> None:
    publish()
    response = client.post("/api/v1/updates/v1.1.0/pause", json={"reason": reason}, headers=admin)
    assert response.status_code == 422
    assert "reason contains the control character" in response.json()["detail"]
    audit = client.get("/api/v1/audit/", headers=admin).json()["items"]
    assert not [line for line in audit if line["action"] == "rollout.pause"]
