"""Fixtures for the server tests: a settable clock, a migrated local backend,
the service, the ASGI app, and signed packages built in memory."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from javia_updates.backends.local import LocalBackend
from javia_updates.manifest import canonical_json, sign_manifest
from javia_updates.models import DeviceRegisterRequest, HeartbeatRequest
from javia_updates.server import create_app
from javia_updates.service import PackageUpload, UpdateService
from javia_updates.settings import ServerSettings

API_KEY = "test-admin-key-0123456789"
# A Friday noon in winter: UTC+1 in Berlin, no DST change within days.
START = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand (aware UTC)."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No JAVIA_* variable or settings file of the machine running the tests leaks in."""
    import os

    for name in list(os.environ):
        if name.startswith("JAVIA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("JAVIA_CONFIG", str(tmp_path / "no-such-server.toml"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


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


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


# --------------------------------------------------------------------------- packages


@dataclass
class Package:
    """A signed package in memory, plus a file holding its payload."""

    manifest: bytes
    signature: bytes
    payload: bytes
    payload_path: Path

    def upload(self) -> PackageUpload:
        """A fresh PackageUpload (the service consumes the payload file, so copy it)."""
        copy = self.payload_path.with_name(f"{uuid.uuid4().hex}.tar.gz")
        copy.write_bytes(self.payload)
        return PackageUpload(self.manifest, self.signature, copy)

    def files(self) -> dict[str, Any]:
        """The multipart ``files`` argument for a publish request."""
        return {
            "manifest": ("manifest.json", self.manifest, "application/json"),
            "signature": ("manifest.sig", self.signature, "application/json"),
            "payload": ("payload.tar.gz", self.payload, "application/gzip"),
        }


def _payload(files: dict[str, bytes]) -> bytes:
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
    return buffer.getvalue()


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
        files = files or {
            "app.py": f"print('{version}')\n".encode(),
            "VERSION": f"{version}\n".encode(),
        }
        payload = _payload(files)
        manifest: dict[str, Any] = {
            "format": 1,
            "app": "assistant",
            "version": version,
            "created_at": "2027-01-01T00:00:00Z",
            "update_type": update_type,
            "description": f"release {version}",
            "system_packages": [],
            "files": [
                {
                    "path": path,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "mode": 0o644,
                }
                for path, data in sorted(files.items())
            ],
            "archive": {
                "name": "payload.tar.gz",
                "sha256": hashlib.sha256(payload).hexdigest(),
                "size": len(payload),
            },
            "unpacked_size": sum(len(data) for data in files.values()),
        }
        manifest.update(fields)
        manifest_bytes = canonical_json(manifest)
        signature = sign_manifest(manifest_bytes, signing_key).to_bytes()
        body = payload if payload_override is None else payload_override
        path = tmp_path / f"payload-{uuid.uuid4().hex}.tar.gz"
        path.write_bytes(body)
        return Package(manifest_bytes, signature, body, path)

    return build


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
