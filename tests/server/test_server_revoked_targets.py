"""A device whose token is revoked is left out of new publishes, plans and counted as revoked."""

from __future__ import annotations

from typing import Any

from shared_helpers import bearer


def _online_device(client, admin, name: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    body = client.post("/api/v1/devices/register", json={"device_name": name}, headers=admin).json()
    heartbeat = client.post(
        f"/api/v1/devices/{body['device_uuid']}/heartbeat",
        json={"current_version": "v1.0.0"},
        headers=bearer(body["device_token"]),
    )
    assert heartbeat.status_code == 200
    return body


def test_a_revoked_device_gets_no_row_no_plan_line_and_is_revoked_in_the_metrics(
    client, admin, publish
):  # type: ignore[no-untyped-def]
    kept = _online_device(client, admin, "kept")
    gone = _online_device(client, admin, "gone")
    revoked = client.post(f"/api/v1/devices/{gone['device_uuid']}/revoke", headers=admin)
    assert revoked.status_code == 200, revoked.text

    for targets in (None, [kept["device_uuid"], gone["device_uuid"]]):
        plan = client.post(
            "/api/v1/updates/plan",
            json={"update_type": "scheduled", "version": "v1.1.0", "targets": targets},
            headers=admin,
        )
        assert plan.status_code == 200, plan.text
        lines = {entry["device_uuid"]: entry for entry in plan.json()["items"]}
        assert lines[kept["device_uuid"]]["gets_row"]
        assert not lines[gone["device_uuid"]]["gets_row"]
        assert "token revoked" in lines[gone["device_uuid"]]["reason"]

    response, _ = publish("v1.1.0", "scheduled")
    assert response.status_code in (200, 201), response.text
    rows = client.get(f"/api/v1/updates/{response.json()['id']}/devices", headers=admin).json()
    assert [row["device_uuid"] for row in rows["items"]] == [kept["device_uuid"]]

    metrics = client.get("/metrics", headers=admin)
    assert metrics.status_code == 200, metrics.text
    fleet = [line for line in metrics.text.splitlines() if line.startswith("javia_devices{")]
    assert any('status="revoked"' in line and line.endswith(" 1.0") for line in fleet), fleet
    assert any('status="online"' in line and line.endswith(" 1.0") for line in fleet), fleet
    assert not any('status="offline"' in line for line in fleet), fleet
