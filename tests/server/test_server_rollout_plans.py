"""Plans see the rollout: each device's phase and why the rollout holds it back (docs/rollouts.md)."""

from __future__ import annotations

import uuid
from typing import Any

from javia_core.rollouts import phase_of


def _devices(client: Any, admin: dict[str, str], count: int) -> list[str]:
    """Register ``count`` devices that each sent a heartbeat on v1.0.0 (online); their uuids."""
    uuids = []
    for number in range(count):
        body = client.post(
            "/api/v1/devices/register", json={"device_name": f"pi-{number}"}, headers=admin
        ).json()
        response = client.post(
            f"/api/v1/devices/{body['device_uuid']}/heartbeat",
            json={"current_version": "v1.0.0"},
            headers={"Authorization": f"Bearer {body['device_token']}"},
        )
        assert response.status_code == 200
        uuids.append(body["device_uuid"])
    return uuids


def _dry_run(client: Any, admin: dict[str, str], **policy: Any) -> list[dict[str, Any]]:
    body = {"update_type": "instant", "version": "v1.1.0", **policy}
    response = client.post("/api/v1/updates/plan", json=body, headers=admin)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_a_dry_run_awaiting_approval_says_every_device_waits_for_it(
    client: Any, admin: dict[str, str]
) -> None:
    _devices(client, admin, 3)
    plans = _dry_run(client, admin, require_approval=True)
    assert {plan["phase"] for plan in plans} == {None}  # one phase: nothing to show
    for plan in plans:
        assert plan["reason"] == "waits for approval, then online: installs at its next check"
        assert plan["install_at_utc"] is None
    assert all(p["reason"].startswith("online") for p in _dry_run(client, admin))


def test_a_dry_run_with_phases_gives_each_device_its_phase_and_when_it_opens(
    client: Any, admin: dict[str, str]
) -> None:
    uuids = _devices(client, admin, 4)
    plans = {plan["device_uuid"]: plan for plan in _dry_run(client, admin, phases="1,100")}
    expected = {uid: phase_of(uuid.UUID(uid), "v1.1.0", (1, 100)) for uid in uuids}
    assert {uid: plan["phase"] for uid, plan in plans.items()} == expected
    assert 1 in expected.values()  # four devices all inside the first 1 %: about 1 in 10^8
    for uid, plan in plans.items():
        if expected[uid] == 1:
            assert plan["reason"].startswith("phase 2 of 2, opens after phase 1 soaks, then ")
            assert plan["install_at_utc"] is None
        else:
            assert plan["reason"].startswith("online")


def test_a_dry_run_refuses_a_bad_policy_like_the_publish_form(
    client: Any, admin: dict[str, str]
) -> None:
    response = client.post(
        "/api/v1/updates/plan",
        json={"update_type": "instant", "version": "v1.1.0", "phases": "1,50"},
        headers=admin,
    )
    assert response.status_code == 422
    assert "phases: the last phase must be 100" in response.json()["detail"]


def test_the_plan_of_a_published_rollout_follows_its_state(
    client: Any, admin: dict[str, str], publish: Any
) -> None:
    canary, *uuids = _devices(client, admin, 5)
    tagged = client.post(f"/api/v1/devices/{canary}/tags", json={"add": ["canary"]}, headers=admin)
    assert tagged.status_code == 200, tagged.text  # phase 1 has a device: it does not open at once
    response, _ = publish(data={"phases": "1,100", "require_approval": "true"})
    assert response.status_code == 201, response.text

    def plan() -> dict[str, dict[str, Any]]:
        answer = client.get("/api/v1/updates/v1.1.0/plan", headers=admin)
        assert answer.status_code == 200, answer.text
        return {item["device_uuid"]: item for item in answer.json()["items"]}

    expected = {uid: phase_of(uuid.UUID(uid), "v1.1.0", (1, 100)) for uid in uuids}
    expected[canary] = 0
    awaiting = plan()
    assert {uid: item["phase"] for uid, item in awaiting.items()} == expected
    assert all(item["reason"].startswith("waits for approval, then ") for item in awaiting.values())

    client.post("/api/v1/updates/v1.1.0/approve", json={}, headers=admin)
    approved = plan()
    later = [uid for uid, phase in expected.items() if phase == 1]
    assert later
    for uid in later:
        assert approved[uid]["reason"].startswith("phase 2 of 2, opens after phase 1 soaks")

    assert approved[canary]["reason"] == "instant: installs at its next check"

    client.post("/api/v1/updates/v1.1.0/pause", json={}, headers=admin)
    assert all(plan()[uid]["reason"].startswith("paused, then ") for uid in later)
    client.post("/api/v1/updates/v1.1.0/cancel", json={}, headers=admin)
    assert all(item["reason"].startswith("cancelled") for item in plan().values())
