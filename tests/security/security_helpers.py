"""Helpers for the security tests: signed packages built in memory (with the
session's own key), and a small world of devices and credentials (the
authorization matrix's)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from shared_helpers import Package, bearer, build_package

API_KEY = "security-test-admin-key-0123456789"
START = datetime(2027, 3, 10, 12, 0, tzinfo=UTC)


ADMIN = {"X-API-Key": API_KEY}


# --------------------------------------------------------------------------- packages


SIGNING_KEY = Ed25519PrivateKey.generate()


def make_package(version: str, update_type: str = "scheduled", **fields: Any) -> Package:
    """A signed package of a two-file application at ``version``."""
    return build_package(
        version, update_type, signing_key=SIGNING_KEY, created_at="2027-03-01T00:00:00Z", **fields
    )


# --------------------------------------------------------------------------- a small world


@dataclass
class World:
    """Devices A and B (A has an update row, B none), C whose token is revoked, and an
    enrollment token; every credential of the authorization matrix."""

    client: TestClient
    device_a: str
    token_a: str
    device_b: str
    token_b: str
    device_c: str
    revoked_token: str
    update_id: int
    enrollment_id: int
    enrollment_token: str

    def credentials(self) -> dict[str, dict[str, str]]:
        return {
            "none": {},
            "wrong_admin_key": {"X-API-Key": API_KEY + "-wrong"},
            "device_a": bearer(self.token_a),
            "device_b": bearer(self.token_b),
            "revoked_token": bearer(self.revoked_token),
            "enrollment_token": bearer(self.enrollment_token),
            "admin": dict(ADMIN),
        }


def register(client: TestClient, name: str) -> tuple[str, str]:
    response = client.post("/api/v1/devices/register", json={"device_name": name}, headers=ADMIN)
    assert response.status_code == 201, response.text
    body = response.json()
    return body["device_uuid"], body["device_token"]


def build_world(client: TestClient) -> World:
    """Register A, B and C, revoke C, publish v1.1.0 to A only, create an enrollment token."""
    device_a, token_a = register(client, "kitchen")
    device_b, token_b = register(client, "hallway")
    device_c, token_c = register(client, "attic")
    for device, token in ((device_a, token_a), (device_b, token_b)):
        response = client.post(
            f"/api/v1/devices/{device}/heartbeat",
            json={"current_version": "v1.0.0"},
            headers=bearer(token),
        )
        assert response.status_code == 200, response.text
    assert client.post(f"/api/v1/devices/{device_c}/revoke", headers=ADMIN).status_code == 200
    published = client.post(
        "/api/v1/updates/",
        files=make_package("v1.1.0").files(),
        data={"targets": device_a},
        headers=ADMIN,
    )
    assert published.status_code == 201, published.text
    enrollment = client.post(
        "/api/v1/enrollment-tokens/", json={"max_uses": 100, "label": "world"}, headers=ADMIN
    )
    assert enrollment.status_code == 201, enrollment.text
    return World(
        client=client,
        device_a=device_a,
        token_a=token_a,
        device_b=device_b,
        token_b=token_b,
        device_c=device_c,
        revoked_token=token_c,
        update_id=published.json()["id"],
        enrollment_id=enrollment.json()["id"],
        enrollment_token=enrollment.json()["token"],
    )


def assert_detail(response: Any, status: int, *fragments: str) -> str:
    """The response has ``status`` and a one-string ``detail`` holding every fragment."""
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body.get("detail"), str) and body["detail"], body
    for fragment in fragments:
        assert fragment in body["detail"], body["detail"]
    return body["detail"]


def random_uuid() -> str:
    return str(uuid.uuid4())
