"""Fixtures for the server tests: a settable clock, a migrated local backend,
the service, the ASGI app, and signed packages built in memory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from javia_core.models import DeviceRegisterRequest, HeartbeatRequest
from javia_updates.backends.local import LocalBackend
from javia_updates.server import create_app
from javia_updates.service import UpdateService
from javia_updates.settings import ServerSettings
from shared_helpers import Clock, Package, bearer, build_package, isolate_javia_environment

API_KEY = "test-admin-key-0123456789"
# A Friday noon in winter: UTC+1 in Berlin, no DST change within days.
START = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No JAVIA_* variable or settings file of the machine running the tests leaks in."""
    isolate_javia_environment(monkeypatch, tmp_path)


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def settings(tmp_path: Path) -> ServerSettings:
    return ServerSettings(api_key=API_KEY, data_dir=tmp_path / "data")


@pytest.fixture
def backend(settings: ServerSettings) -> Iterator[LocalBackend]:
    backend = LocalBackend.from_settings(settings)
    backend.prepare()
    yield backend
    backend.close()


@pytest.fixture
def service(backend: LocalBackend, settings: ServerSettings) -> UpdateService:
    return UpdateService(backend, settings)


@pytest.fixture
def app(settings: ServerSettings, clock: Clock):  # type: ignore[no-untyped-def]
    return create_app(settings, clock=clock)


@pytest.fixture
def client(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def admin() -> dict[str, str]:
    return {"X-API-Key": API_KEY}


# --------------------------------------------------------------------------- packages


@pytest.fixture
def make_package(tmp_path: Path, signing_key: Ed25519PrivateKey) -> Callable[..., Package]:
    """Build a signed package; ``fields`` override manifest fields (even invalid ones)."""

    def build(
        version: str = "v1.0.0",
        update_type: str = "scheduled",
        *,
        files: dict[str, bytes] | None = None,
        payload_override: bytes | None = None,
        **fields: Any,
    ) -> Package:
        return build_package(
            version,
            update_type,
            signing_key=signing_key,
            files=files,
            directory=tmp_path,
            payload_override=payload_override,
            **fields,
        )

    return build


# --------------------------------------------------------------------------- HTTP helpers


@pytest.fixture
def device(client, admin) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """A registered device that has sent one heartbeat (so it is online)."""
    body = client.post(
        "/api/v1/devices/register", json={"device_name": "kitchen"}, headers=admin
    ).json()
    uid, token = body["device_uuid"], body["device_token"]
    response = client.post(
        f"/api/v1/devices/{uid}/heartbeat",
        json={"current_version": "v1.0.0"},
        headers=bearer(token),
    )
    assert response.status_code == 200
    return {"uuid": uid, "token": token, "headers": bearer(token)}


@pytest.fixture
def publish(client, admin, make_package):  # type: ignore[no-untyped-def]
    """publish(version="v1.1.0", update_type="instant", data=None, **fields) -> (response, Package).

    Publishes a package built by ``make_package`` through the HTTP API as the admin.
    """

    def do(
        version: str = "v1.1.0",
        update_type: str = "instant",
        data: dict | None = None,
        **kwargs: Any,
    ):
        package = make_package(version, update_type, **kwargs)
        response = client.post(
            "/api/v1/updates/", files=package.files(), data=data or {}, headers=admin
        )
        return response, package

    return do


# --------------------------------------------------------------------------- service helpers


@pytest.fixture
def register(service: UpdateService, clock: Clock) -> Callable[..., Any]:
    """register(timezone="UTC", name=None) -> (DeviceRecord, token), through the service."""

    def register_device(*, timezone: str = "UTC", name: str | None = None) -> Any:
        registered = service.register_device(
            DeviceRegisterRequest(device_name=name, timezone=timezone), now=clock.now
        )
        return service.find_device(registered.device_uuid), registered.device_token

    return register_device


@pytest.fixture
def beat(service: UpdateService, clock: Clock) -> Callable[..., Any]:
    """beat(device, version="v1.0.0") -> HeartbeatResponse, through the service at clock.now."""

    def heartbeat(device: Any, version: str | None = "v1.0.0") -> Any:
        fresh = service.find_device(device.device_uuid)
        return service.heartbeat(fresh, HeartbeatRequest(current_version=version), now=clock.now)

    return heartbeat
