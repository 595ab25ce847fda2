"""Fixtures for the agent tests: real packages, a real app process, a local HTTP server.

Everything runs on the real file system under ``tmp_path``; the application
is a real Python process started by :class:`CommandService`; downloads come
from an ``http.server`` on 127.0.0.1 that honours ``Range`` and can be told to
misbehave (cut the connection, ignore ``Range``, send too much).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from javia_agent.config import AgentPaths
from javia_agent.services import CommandService
from javia_core.models import UpdateType
from javia_core.versioning import Version
from javia_updates.keys import generate_keypair, load_private_key
from javia_updates.packaging import BuiltPackage, build_package

from .fleet import CrashFleet
from .helpers import APP_SOURCE, NOW, Device, FileServer, PackageFactory, Signer, handler_for


@pytest.fixture(scope="session")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    directory = tmp_path_factory.mktemp("signing")
    pair = generate_keypair(directory / "private", name="test-signing")
    keyring_dir = directory / "keyring"
    keyring_dir.mkdir()
    (keyring_dir / "test-signing.pub").write_bytes(pair.public_path.read_bytes())
    return Signer(load_private_key(pair.private_path), keyring_dir, pair.key_id)


@pytest.fixture(scope="session")
def other_signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    """A key the device does not trust."""
    directory = tmp_path_factory.mktemp("other-signing")
    pair = generate_keypair(directory, name="untrusted")
    return Signer(load_private_key(pair.private_path), directory / "none", pair.key_id)


@pytest.fixture(scope="session")
def make_package(tmp_path_factory: pytest.TempPathFactory, signer: Signer) -> PackageFactory:
    """Build a real signed package of the test app: ``make_package("v1.1.0", fail=True)``."""
    root = tmp_path_factory.mktemp("packages")
    built: dict[tuple[Any, ...], BuiltPackage] = {}

    def factory(
        version: str,
        *,
        fail: bool = False,
        key: Ed25519PrivateKey | None = None,
        extra_files: dict[str, bytes] | None = None,
        system_packages: tuple[str, ...] = (),
    ) -> BuiltPackage:
        cache_key = (
            version,
            fail,
            id(key),
            tuple(sorted((extra_files or {}).items())),
            system_packages,
        )
        if cache_key in built:
            return built[cache_key]
        name = f"{version}-{len(built)}"
        app_dir = root / "src" / name
        app_dir.mkdir(parents=True)
        (app_dir / "app.py").write_text(APP_SOURCE)
        (app_dir / "VERSION").write_text(version + "\n")
        if fail:
            (app_dir / "FAIL").write_text("unhealthy on purpose\n")
        for relative, content in (extra_files or {}).items():
            path = app_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        package = build_package(
            app_dir,
            root / "out" / name,
            version=Version.parse(version),
            update_type=UpdateType.INSTANT,
            description=f"test release {version}",
            system_packages=system_packages,
            private_key=key or signer.private_key,
            now=NOW,
            app_name="assistant",
            write_version_file=False,
        )
        built[cache_key] = package
        return package

    return factory


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    """A device layout with a command-mode app service; the app is stopped afterwards."""
    root = tmp_path / "device"
    paths = AgentPaths(
        install_root=root / "opt" / "app",
        state_dir=root / "var",
        activity_file=root / "var" / "activity.json",
    )
    paths.install_root.mkdir(parents=True)
    paths.state_dir.mkdir(parents=True)
    status_file = root / "app-status.json"
    service = CommandService(
        [sys.executable, "app.py"],
        current_link=paths.current_link,
        pid_file=paths.pid_file,
        log_file=paths.app_log,
        activity_file=paths.activity_file,
        app_env={"TEST_APP_STATUS": str(status_file)},
        stop_timeout_seconds=5.0,
        poll_seconds=0.02,
    )
    dev = Device(root=root, paths=paths, service=service, status_file=status_file)
    try:
        yield dev
    finally:
        service.stop()


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    server = FileServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(server))
    httpd.daemon_threads = True
    server.port = httpd.server_address[1]
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrashFleet]:
    """A real ``javia server`` process shared by this test process's real-process tests.

    Every test provisions its own device and publishes updates that target
    only it, under versions no other test uses, so the tests stay independent
    (and parallel-safe: each xdist worker has its own server).
    """
    fleet = CrashFleet(tmp_path_factory.mktemp("fleet"), heartbeat_seconds=0.5, health_seconds=0.5)
    fleet.generate_key()
    fleet.start_server()
    try:
        yield fleet
    finally:
        fleet.stop()
