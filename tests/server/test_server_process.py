"""One real server process on a loopback port: register → publish → heartbeat → download."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from javia_core.manifest import key_id_for, verify_manifest
from javia_core.models import UpdateType
from javia_core.versioning import Version
from javia_updates import __version__
from javia_updates.packaging import build_package
from shared_helpers import server_process

API_KEY = "process-test-admin-key"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A `python -m javia_updates.server` process on a free loopback port; (base URL, log file)."""
    with server_process(tmp_path, API_KEY) as running:
        yield running


def test_register_publish_heartbeat_download_over_real_http(server, tmp_path):
    base, log_path = server
    key = Ed25519PrivateKey.generate()
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "main.py").write_text("print('hello from the assistant')\n")
    (app_dir / "model.bin").write_bytes(os.urandom(300_000))
    package = build_package(
        app_dir,
        tmp_path / "package",
        version=Version.parse("v1.1.0"),
        update_type=UpdateType.INSTANT,
        description="first release",
        system_packages=[],
        private_key=key,
        now=datetime.now(UTC),
        write_version_file=False,
    )

    with httpx.Client(base_url=base, timeout=30) as http:
        admin = {"X-API-Key": API_KEY}
        registered = http.post(
            "/api/v1/devices/register", json={"device_name": "pi"}, headers=admin
        )
        assert registered.status_code == 201
        uid, token = registered.json()["device_uuid"], registered.json()["device_token"]
        device = {"Authorization": f"Bearer {token}"}
        first = http.post(
            f"/api/v1/devices/{uid}/heartbeat", json={"current_version": "v1.0.0"}, headers=device
        )
        assert first.status_code == 200 and first.json()["update"] is None

        with open(package.payload_path, "rb") as payload:
            published = http.post(
                "/api/v1/updates/",
                files={
                    "manifest": ("manifest.json", package.manifest_bytes, "application/json"),
                    "signature": ("manifest.sig", package.signature_bytes, "application/json"),
                    "payload": ("payload.tar.gz", payload, "application/gzip"),
                },
                headers=admin,
            )
        assert published.status_code == 201, published.text
        assert published.json()["status_counts"] == {"pending": 1}

        directive = http.post(
            f"/api/v1/devices/{uid}/heartbeat", json={"current_version": "v1.0.0"}, headers=device
        ).json()["update"]
        assert directive["version"] == "v1.1.0" and directive["update_type"] == "instant"

        manifest = http.get(directive["manifest_url"], headers=device).content
        signature = http.get(directive["signature_url"], headers=device).content
        trusted = verify_manifest(
            manifest, signature, {key_id_for(key.public_key()): key.public_key()}
        )
        # Download in two parts, as a resumed download would.
        cut = directive["size"] // 2
        head = http.get(
            directive["download_url"], headers={**device, "Range": f"bytes=0-{cut - 1}"}
        )
        tail = http.get(directive["download_url"], headers={**device, "Range": f"bytes={cut}-"})
        assert (head.status_code, tail.status_code) == (206, 206)
        archive = head.content + tail.content
        assert len(archive) == trusted.archive.size
        assert hashlib.sha256(archive).hexdigest() == trusted.archive.sha256

        done = http.post(
            f"/api/v1/devices/{uid}/updates/{directive['update_id']}/status",
            json={"status": "completed"},
            headers=device,
        )
        assert done.json()["changed"] is True
        shown = http.get(f"/api/v1/devices/{uid}", headers=admin).json()
        assert shown["current_version"] == "v1.1.0"

    assert f"javia server {__version__} at {base}" in log_path.read_text()
