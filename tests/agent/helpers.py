"""Helpers for the agent tests: the test app, packages, devices and a local HTTP server."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from javia_agent.clock import Clock
from javia_agent.config import AgentPaths
from javia_agent.installer import Installer
from javia_agent.services import CommandService
from javia_core.keys import load_keyring
from javia_core.models import UpdateStatus
from javia_updates.packaging import BuiltPackage

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

#: The test application: reads VERSION from its cwd (the release directory),
#: exits 1 at once if the release ships a FAIL file, else writes
#: {"version", "pid", "python", "imports", ...} to $TEST_APP_STATUS (imports:
#: the VERSION of each module named in $TEST_APP_IMPORT, None if it cannot be
#: imported) and runs until SIGTERM.
APP_SOURCE = """\
import json, os, signal, sys, time
from pathlib import Path

release = Path.cwd()
version = (release / "VERSION").read_text().strip()
if (release / "FAIL").exists():
    sys.exit(1)
status = os.environ["TEST_APP_STATUS"]
record = {
    "version": version,
    "pid": os.getpid(),
    "release_dir": os.environ.get("JAVIA_RELEASE_DIR"),
    "activity_file": os.environ.get("JAVIA_ACTIVITY_FILE"),
    "javia_python": os.environ.get("JAVIA_PYTHON"),
    "python": sys.executable,
    "prefix": sys.prefix,
    "imports": {},
}
for name in filter(None, os.environ.get("TEST_APP_IMPORT", "").split(",")):
    try:
        record["imports"][name] = getattr(__import__(name), "VERSION", "?")
    except ImportError:
        record["imports"][name] = None
Path(status + ".tmp").write_text(json.dumps(record))
os.replace(status + ".tmp", status)
signal.signal(signal.SIGTERM, lambda *args: sys.exit(0))
while True:
    time.sleep(0.05)
"""


@dataclass
class Signer:
    """A signing key and a keyring directory trusting it."""

    private_key: Ed25519PrivateKey
    keyring_dir: Path
    key_id: str

    def keyring(self) -> dict[str, Any]:
        return load_keyring(self.keyring_dir)


PackageFactory = Callable[..., BuiltPackage]


@dataclass
class Device:
    """One simulated device: layout, app service, reports sent, and the app's own status."""

    root: Path
    paths: AgentPaths
    service: CommandService
    status_file: Path
    reports: list[tuple[int, UpdateStatus, str | None]] = field(default_factory=list)
    failures: list[Any] = field(default_factory=list)

    def app_status(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return None

    def wait_for_app(self, version: str, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until the running app reports ``version``; return its status record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.app_status()
            running = status and status["version"] == version and self.service.is_active()
            if running and self.service.pid() == status["pid"]:
                return status
            time.sleep(0.02)
        raise AssertionError(f"app {version} did not come up; status {self.app_status()}")

    def reporter(
        self, update_id: int, status: UpdateStatus, message: str | None, failure: Any = None
    ) -> None:
        self.reports.append((update_id, status, message))
        if failure is not None:
            self.failures.append(failure)

    def statuses(self) -> list[UpdateStatus]:
        return [status for _, status, _ in self.reports]

    def current(self) -> str | None:
        link = self.paths.current_link
        return Path(link.readlink()).name if link.is_symlink() else None


def make_installer(device: Device, signer: Signer, **overrides: Any) -> Installer:
    """An installer for ``device`` with a short health window."""
    settings: dict[str, Any] = {
        "paths": device.paths,
        "service": device.service,
        "keyring": signer.keyring,
        "reporter": device.reporter,
        "clock": Clock(),
        "health_seconds": 0.6,
        "health_poll_seconds": 0.02,
    }
    settings.update(overrides)
    return Installer(**settings)


# -- a local HTTP server that honours Range and can misbehave -----------------------


@dataclass
class Route:
    """What the server answers for one path."""

    data: bytes
    content_type: str = "application/octet-stream"
    honour_range: bool = True
    cut_after: int | None = None  # close the connection after this many body bytes (once)
    send_length: bool = True  # False: no Content-Length, the body ends when the connection closes
    status: int = 200
    #: Absolute offsets in ``data``: an answer starting before the first one
    #: stops there and closes the connection; each cut is used once.
    cuts: list[int] = field(default_factory=list)
    #: Answers given before serving the data: (status, headers), used once each.
    refusals: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    sent: int = 0  # body bytes written for this route, all answers together
    #: Every answer stops at this absolute offset and closes the connection
    #: (a payload that can never be downloaded completely).
    stall_at: int | None = None


@dataclass
class FileServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 serving :class:`Route` objects."""

    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, path: str, data: bytes, **options: Any) -> Route:
        route = Route(data=data, **options)
        self.routes[path] = route
        return route


def handler_for(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # silence
            return

        def do_GET(self) -> None:
            range_header = self.headers.get("Range")
            server.requests.append((self.path, range_header))
            route = server.routes.get(self.path)
            if route is None:
                body = json.dumps({"detail": f"no route {self.path}"}).encode()
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if route.status >= 400 or route.refusals:
                status, headers = route.refusals.pop(0) if route.refusals else (route.status, {})
                body = json.dumps({"detail": "refused by the test server"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
                return
            data = route.data
            start = 0
            if range_header and route.honour_range and range_header.startswith("bytes="):
                start = int(range_header[len("bytes=") :].split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Type", route.content_type)
            if route.send_length:
                self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            upcoming = [cut for cut in sorted(route.cuts) if cut > start]
            cut_here = route.cut_after
            if upcoming:
                cut_here = upcoming[0] - start
                route.cuts.remove(upcoming[0])
            if route.stall_at is not None:
                cut_here = max(0, route.stall_at - start)
            if cut_here is not None or not route.send_length:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if cut_here is not None:
                self.wfile.write(body[:cut_here])
                route.sent += len(body[:cut_here])
                self.wfile.flush()
                route.cut_after = None  # only the first answer is cut
                self.close_connection = True
                return
            self.wfile.write(body)
            route.sent += len(body)

    return Handler


def serve_package(
    server: FileServer, update_id: int, package: BuiltPackage, **payload_options: Any
) -> dict[str, Any]:
    """Serve ``package`` under the API paths; return the directive's fields."""
    base = f"/api/v1/updates/{update_id}"
    server.add(f"{base}/manifest", package.manifest_bytes, content_type="application/json")
    server.add(f"{base}/signature", package.signature_bytes, content_type="application/json")
    server.add(f"{base}/download", package.payload_path.read_bytes(), **payload_options)
    return {
        "update_id": update_id,
        "version": package.manifest.version,
        "update_type": "instant",
        "status": "pending",
        "install_at": NOW.isoformat(),
        "size": package.manifest.archive.size,
        "manifest_url": f"{base}/manifest",
        "signature_url": f"{base}/signature",
        "download_url": f"{base}/download",
    }


class Crash(BaseException):
    """Simulates the agent process dying at an exact point (not caught by the installer)."""


class CrashingService:
    """Wraps a real service; raises :class:`Crash` on chosen calls (``{"start": 1}``: the 1st start)."""

    def __init__(self, inner: CommandService, crash_on: dict[str, int]) -> None:
        self.inner = inner
        self.crash_on = dict(crash_on)
        self.calls: dict[str, int] = {}

    def _call(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.crash_on.get(name) == self.calls[name]:
            raise Crash(f"crash at {name} #{self.calls[name]}")

    def stop(self) -> None:
        self._call("stop")
        self.inner.stop()

    def start(self) -> None:
        self.inner.start()
        self._call("start")  # after the start: the new release runs, as after a real crash

    def is_active(self) -> bool:
        self._call("is_active")
        return self.inner.is_active()


def deep_tree(
    root: Path, depth: int, *, file_each_level: bool = False, link_to: Path | None = None
) -> None:
    """``root/deep/deep/...`` ``depth`` levels with ``leaf.txt`` at the bottom, made
    through directory descriptors (the absolute path is far longer than PATH_MAX).

    Args:
        file_each_level: also write ``leaf.txt`` at every level.
        link_to: every 100 levels, a symlink ``outside`` pointing there.
    """
    root.mkdir()
    descriptor = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(depth):
            os.mkdir("deep", dir_fd=descriptor)
            child = os.open("deep", os.O_RDONLY | os.O_DIRECTORY, dir_fd=descriptor)
            os.close(descriptor)
            descriptor = child
            if file_each_level or level == depth - 1:
                leaf = os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=descriptor)
                os.write(leaf, b"leaf")
                os.close(leaf)
            if link_to is not None and level % 100 == 0:
                os.symlink(link_to, "outside", dir_fd=descriptor)
    finally:
        os.close(descriptor)
