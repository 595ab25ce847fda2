"""Helpers for the security tests: a hand-moved clock, signed packages built in
memory, and a small world of devices and credentials (the authorization matrix's)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from javia_updates.manifest import canonical_json, sign_manifest

API_KEY = "security-test-admin-key-0123456789"
START = datetime(2027, 3, 10, 12, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand (aware UTC)."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


ADMIN = {"X-API-Key": API_KEY}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- packages


@dataclass
class Package:
    """A signed package in memory."""

    manifest: bytes
    signature: bytes
    payload: bytes

    def files(self) -> dict[str, Any]:
        """The multipart ``files`` of a publish request."""
        return {
            "manifest": ("manifest.json", self.manifest, "application/json"),
            "signature": ("manifest.sig", self.signature, "application/json"),
            "payload": ("payload.tar.gz", self.payload, "application/gzip"),
        }


SIGNING_KEY = Ed25519PrivateKey.generate()


def make_package(version: str, update_type: str = "scheduled", **fields: Any) -> Package:
    """A signed package of a two-file application at ``version``."""
    files = {"app.py": f"print('{version}')\n".encode(), "VERSION": f"{version}\n".encode()}
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w") as archive,
    ):
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    payload = buffer.getvalue()
    manifest: dict[str, Any] = {
        "format": 1,
        "app": "assistant",
        "version": version,
        "created_at": "2027-03-01T00:00:00Z",
        "update_type": update_type,
        "description": f"release {version}",
        "system_packages": [],
        "files": [
            {"path": p, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d), "mode": 0o644}
            for p, d in sorted(files.items())
        ],
        "archive": {
            "name": "payload.tar.gz",
            "sha256": hashlib.sha256(payload).hexdigest(),
            "size": len(payload),
        },
        "unpacked_size": sum(len(d) for d in files.values()),
    }
    manifest.update(fields)
    manifest_bytes = canonical_json(manifest)
    return Package(manifest_bytes, sign_manifest(manifest_bytes, SIGNING_KEY).to_bytes(), payload)


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
