"""Helpers shared by the server, backend and security tests: a hand-moved clock,
isolation from the machine's settings, signed packages built in memory, and a
real server process on a free loopback port."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from javia_core.manifest import canonical_json, sign_manifest
from javia_core.models import UpdateType
from javia_core.versioning import Version
from javia_devtools.server_process import (
    SERVER_MODULE_COMMAND,
    ServerProcess,
    ServerStartError,
)
from javia_updates.backends.base import AuditEntry, NewDeviceUpdate, NewUpdate, Store, UpdateRecord
from javia_updates.service import PackageUpload


class Clock:
    """A clock the test moves by hand (aware UTC)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def isolate_javia_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No JAVIA_* variable or server settings file of the machine running the tests leaks in."""
    for name in list(os.environ):
        if name.startswith("JAVIA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("JAVIA_CONFIG", str(tmp_path / "no-such-server.toml"))


def bearer(token: str) -> dict[str, str]:
    """The ``Authorization`` header carrying a device or enrollment token."""
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- packages


@dataclass
class Package:
    """A signed package in memory, plus (when built with a directory) a file holding its payload."""

    manifest: bytes
    signature: bytes
    payload: bytes
    payload_path: Path | None = None

    def upload(self) -> PackageUpload:
        """A fresh PackageUpload (the service consumes the payload file, so copy it)."""
        if self.payload_path is None:
            raise ValueError("this package was built without a directory for its payload file")
        copy = self.payload_path.with_name(f"payload-{uuid.uuid4().hex}.tar.gz")
        copy.write_bytes(self.payload)
        return PackageUpload(self.manifest, self.signature, copy)

    def files(self) -> dict[str, Any]:
        """The multipart ``files`` argument of a publish request."""
        return {
            "manifest": ("manifest.json", self.manifest, "application/json"),
            "signature": ("manifest.sig", self.signature, "application/json"),
            "payload": ("payload.tar.gz", self.payload, "application/gzip"),
        }


def app_files(version: str) -> dict[str, bytes]:
    """The two files of the test application at ``version`` (relative path -> content)."""
    return {"app.py": f"print('{version}')\n".encode(), "VERSION": f"{version}\n".encode()}


def tar_gz(files: dict[str, bytes]) -> bytes:
    """A reproducible gzipped tar of ``files`` (sorted, mtime 0, mode 0644)."""
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


def build_package(
    version: str,
    update_type: str,
    *,
    signing_key: Ed25519PrivateKey,
    files: dict[str, bytes] | None = None,
    directory: Path | None = None,
    payload_override: bytes | None = None,
    created_at: str = "2027-01-01T00:00:00Z",
    **fields: Any,
) -> Package:
    """A package of ``files`` (default :func:`app_files`) signed with ``signing_key``.

    ``fields`` override manifest fields (even with invalid values);
    ``payload_override`` replaces the payload after signing. With ``directory``
    the payload is also written to a file there (``Package.payload_path``).
    """
    files = files or app_files(version)
    payload = tar_gz(files)
    manifest: dict[str, Any] = {
        "format": 1,
        "app": "assistant",
        "version": version,
        "created_at": created_at,
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
    path = None
    if directory is not None:
        path = directory / f"payload-{uuid.uuid4().hex}.tar.gz"
        path.write_bytes(body)
    return Package(manifest_bytes, signature, body, path)


def store_update(
    store: Store,
    version: str,
    *,
    now: datetime,
    update_type: UpdateType = UpdateType.SCHEDULED,
    rows: Sequence[NewDeviceUpdate] = (),
) -> UpdateRecord:
    """Write an update row (and its device rows) straight through the store.

    Unlike publishing through the service, this skips the package objects and
    the rule that a new version must be above every published one, so a test
    can insert versions in any order. The package documents are placeholders.
    """
    numbers = Version.parse(version)
    update = NewUpdate(
        version=version,
        version_numbers=(numbers.major, numbers.minor, numbers.patch),
        update_type=update_type,
        description="",
        package_url=f"{version}/0000",
        system_packages=(),
        app="assistant",
        key_id="0" * 16,
        archive_size=10,
        archive_sha256="0" * 64,
        manifest=b"{}",
        signature=b"{}",
        targets=None,
    )
    return store.create_update(
        update, list(rows), now=now, audit=AuditEntry("admin", "update.publish")
    )


# --------------------------------------------------------------------------- server processes


@contextmanager
def server_process(tmp_path: Path, api_key: str) -> Iterator[tuple[str, Path]]:
    """A ``python -m javia_updates.server`` process on a free loopback port.

    It reads no JAVIA_* variable or settings file of the machine, keeps its data
    in ``tmp_path/data`` and logs to ``tmp_path/server.log``. Yields (base URL,
    log file); terminated on exit (killed after 10 s).
    """
    server = ServerProcess(
        tmp_path / "data",
        api_key,
        log_path=tmp_path / "server.log",
        command=SERVER_MODULE_COMMAND,
        config_path=tmp_path / "absent.toml",
    )
    try:
        server.start()
    except ServerStartError as error:
        raise AssertionError(f"server did not come up:\n{error}") from None
    try:
        yield server.url, server.log
    finally:
        server.stop()
