"""A real server process and a few devices over HTTP, for the metrics and webhook tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.shared_helpers import bearer, build_package

from javia_devtools.server_process import ServerProcess

API_KEY = "observability-admin-key-0123456789"


def server_for(tmp_path: Path, **env: str) -> ServerProcess:
    """A ``javia server`` (not started: ``with`` starts it) with its data in ``tmp_path`` and ``env``."""
    server = ServerProcess(
        tmp_path / "data",
        API_KEY,
        log_path=tmp_path / "server.log",
        config_path=tmp_path / "absent.toml",
        env=env,
    )
    return server


#: Seconds a server may take to start: generous, the test machine is shared.
START_SECONDS = 120.0


@contextmanager
def running(tmp_path: Path, **env: str) -> Iterator[ServerProcess]:
    """:func:`server_for`, started (waiting up to :data:`START_SECONDS`), stopped afterwards."""
    server = server_for(tmp_path, **env)
    server.start(timeout=START_SECONDS)
    try:
        yield server
    finally:
        server.stop()


class Operator:
    """The admin's HTTP calls against one server."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=10)

    def register(self, name: str) -> tuple[str, str]:
        """Register a device: ``(uuid, token)``."""
        body = self.http.post("/api/v1/devices/register", json={"device_name": name}).json()
        return body["device_uuid"], body["device_token"]

    def publish(
        self, signing_key: Ed25519PrivateKey, version: str, update_type: str = "instant"
    ) -> dict[str, Any]:
        """Publish a small signed package to every device; the update's JSON."""
        package = build_package(version, update_type, signing_key=signing_key)
        response = self.http.post("/api/v1/updates/", files=package.files())
        assert response.status_code == 201, response.text
        answer: dict[str, Any] = response.json()
        answer["payload_size"] = len(package.payload)
        return answer


class Device:
    """One registered device's HTTP calls."""

    def __init__(self, url: str, uuid: str, token: str) -> None:
        self.uuid = uuid
        self.http = httpx.Client(base_url=url, headers=bearer(token), timeout=10)

    def heartbeat(self, version: str | None = None) -> dict[str, Any]:
        response = self.http.post(
            f"/api/v1/devices/{self.uuid}/heartbeat", json={"current_version": version}
        )
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def report(self, update_id: int, status: str, error: str | None = None) -> None:
        response = self.http.post(
            f"/api/v1/devices/{self.uuid}/updates/{update_id}/status",
            json={"status": status, "error_message": error},
        )
        assert response.status_code == 200, response.text

    def download(self, update_id: int) -> bytes:
        response = self.http.get(f"/api/v1/updates/{update_id}/download")
        assert response.status_code == 200, response.text
        return response.content


class Receiver:
    """A webhook receiver on 127.0.0.1 in a thread: records every request, answers as told.

    ``statuses`` are the answers to the first requests in order (then 200);
    with ``stall_first`` the first request waits until :meth:`release`.
    """

    def __init__(self, statuses: Sequence[int] = (), *, stall_first: bool = False) -> None:
        self.requests: list[tuple[dict[str, str], bytes, float]] = []
        self.statuses = list(statuses)
        self.stall = threading.Event() if stall_first else None
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.arrived:
                    receiver.requests.append((dict(self.headers), body, time.monotonic()))
                    first = len(receiver.requests) == 1
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.arrived.notify_all()
                if first and receiver.stall is not None:
                    receiver.stall.wait(30)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/javia"

    def wait_for(
        self, count: int, timeout: float = 60
    ) -> list[tuple[dict[str, str], bytes, float]]:
        """The requests once at least ``count`` arrived (AssertionError after ``timeout`` s)."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"{len(self.requests)} webhook request(s), expected {count}")
            return list(self.requests)

    def release(self) -> None:
        if self.stall is not None:
            self.stall.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
