"""DeviceClient: downloads against a real local HTTP server, errors, URL safety."""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path

import httpx
import pytest

from javia_agent.client import DeviceClient
from javia_agent.errors import (
    AuthenticationError,
    ConfigError,
    DownloadError,
    DownloadTooLargeError,
    NetworkError,
    ServerError,
)
from javia_updates.models import HeartbeatRequest, StatusReport, UpdateStatus

from .helpers import FileServer

UUID = "00000000-0000-0000-0000-0000000000c1"
DATA = random.Random(7).randbytes(250_000)
PATH = "/api/v1/updates/1/download"


@pytest.fixture
def client(file_server: FileServer):
    with DeviceClient(file_server.url, device_uuid=UUID, token="secret-token") as client:
        yield client


def _downloads(server: FileServer) -> list[str | None]:
    return [range_ for path, range_ in server.requests if path == PATH]


def test_cut_download_resumes_with_range_and_the_file_is_exact(
    client: DeviceClient, file_server: FileServer, tmp_path: Path
) -> None:
    file_server.add(PATH, DATA, cut_after=80_000)
    dest = tmp_path / "payload.tar.gz"
    with pytest.raises(NetworkError) as error:
        client.download_payload(PATH, dest, len(DATA))
    assert error.value.status_code is None
    assert not dest.exists()
    assert (tmp_path / "payload.tar.gz.partial").read_bytes() == DATA[:80_000]

    assert client.download_payload(PATH, dest, len(DATA)) == dest
    assert dest.read_bytes() == DATA
    assert not (tmp_path / "payload.tar.gz.partial").exists()
    assert _downloads(file_server) == [None, "bytes=80000-"]


def test_a_resume_answered_with_200_starts_over_instead_of_appending(
    client: DeviceClient, file_server: FileServer, tmp_path: Path
) -> None:
    file_server.add(PATH, DATA, honour_range=False)
    dest = tmp_path / "payload.tar.gz"
    (tmp_path / "payload.tar.gz.partial").write_bytes(DATA[:100_000])

    client.download_payload(PATH, dest, len(DATA))

    assert _downloads(file_server) == ["bytes=100000-"]
    assert dest.read_bytes() == DATA  # not 100,000 bytes of it twice


def test_a_stale_partial_longer_than_the_signed_size_is_discarded(
    client: DeviceClient, file_server: FileServer, tmp_path: Path
) -> None:
    file_server.add(PATH, DATA)
    (tmp_path / "payload.tar.gz.partial").write_bytes(b"x" * (len(DATA) + 10))
    client.download_payload(PATH, tmp_path / "payload.tar.gz", len(DATA))
    assert (tmp_path / "payload.tar.gz").read_bytes() == DATA
    assert _downloads(file_server) == [None]


@pytest.mark.parametrize("send_length", [True, False], ids=["announced", "unannounced"])
def test_a_body_larger_than_the_signed_size_is_stopped_and_discarded(
    client: DeviceClient, file_server: FileServer, tmp_path: Path, send_length: bool
) -> None:
    file_server.add(PATH, DATA + b"\0" * 100_000, send_length=send_length)
    dest = tmp_path / "payload.tar.gz"
    with pytest.raises(DownloadTooLargeError, match=f"signed size.*{len(DATA)}"):
        client.download_payload(PATH, dest, len(DATA))
    assert not dest.exists()
    assert not (tmp_path / "payload.tar.gz.partial").exists()


def test_a_short_body_keeps_the_partial_for_a_resume(
    client: DeviceClient, file_server: FileServer, tmp_path: Path
) -> None:
    file_server.add(PATH, DATA[:1000], send_length=False)
    with pytest.raises(DownloadError, match="1000 of"):
        client.download_payload(PATH, tmp_path / "payload.tar.gz", len(DATA))
    assert (tmp_path / "payload.tar.gz.partial").stat().st_size == 1000


def test_should_stop_pauses_the_download(
    client: DeviceClient, file_server: FileServer, tmp_path: Path
) -> None:
    file_server.add(PATH, DATA)
    with pytest.raises(DownloadError, match="will resume"):
        client.download_payload(PATH, tmp_path / "p", len(DATA), should_stop=lambda: True)
    kept = (tmp_path / "p.partial").stat().st_size
    assert 0 < kept < len(DATA)
    client.download_payload(PATH, tmp_path / "p", len(DATA))
    assert (tmp_path / "p").read_bytes() == DATA


def test_oversized_signature_is_refused(client: DeviceClient, file_server: FileServer) -> None:
    file_server.add("/api/v1/updates/1/signature", b"{" + b" " * 10_000 + b"}")
    with pytest.raises(DownloadTooLargeError, match="4096 bytes"):
        client.download_signature("/api/v1/updates/1/signature")


def test_http_errors_carry_the_status_code(
    client: DeviceClient, file_server: FileServer, tmp_path: Path
) -> None:
    with pytest.raises(ServerError) as missing:
        client.download_manifest("/api/v1/updates/404/manifest")
    assert missing.value.status_code == 404
    assert "no route" in str(missing.value)
    file_server.add("/api/v1/updates/2/manifest", b"", status=403)
    with pytest.raises(AuthenticationError) as refused:
        client.download_manifest("/api/v1/updates/2/manifest")
    assert refused.value.status_code == 403


def test_unreachable_server_is_a_network_error_without_status() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connection refused
        with (
            DeviceClient(f"http://127.0.0.1:{port}", device_uuid=UUID, token="t") as client,
            pytest.raises(NetworkError) as error,
        ):
            client.heartbeat(HeartbeatRequest())
    assert error.value.status_code is None
    assert f"127.0.0.1:{port}" in str(error.value)


def test_download_urls_on_another_host_are_refused(client: DeviceClient, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="refusing to download"):
        client.download_payload("https://elsewhere.example/payload", tmp_path / "p", 10)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://updates.example.org", True),
        ("http://127.0.0.1:8000", True),
        ("http://localhost:8000", True),
        ("http://[::1]:8000", True),
        ("http://192.168.1.10:8000", False),
        ("http://updates.example.org", False),
        ("ftp://updates.example.org", False),
    ],
)
def test_plain_http_only_to_loopback_unless_allowed(url: str, allowed: bool) -> None:
    if allowed:
        DeviceClient(url).close()
    else:
        with pytest.raises(ConfigError):
            DeviceClient(url).close()
    if url.startswith("http://"):
        DeviceClient(url, allow_insecure_http=True).close()


def test_device_calls_carry_the_bearer_token_and_parse_answers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/heartbeat"):
            return httpx.Response(
                200, json={"server_time": "2025-06-01T12:00:00Z", "heartbeat_interval_seconds": 120}
            )
        return httpx.Response(
            200,
            json={"update_id": 5, "device_uuid": UUID, "status": "downloading", "changed": True},
        )

    with DeviceClient(
        "https://updates.example.org",
        device_uuid=UUID,
        token="tok",
        transport=httpx.MockTransport(handler),
    ) as client:
        answer = client.heartbeat(HeartbeatRequest(current_version="v1.0.0"))
        result = client.report_status(5, StatusReport(status=UpdateStatus.DOWNLOADING))

    assert answer.heartbeat_interval_seconds == 120 and answer.update is None
    assert result.changed
    assert [r.url.path for r in seen] == [
        f"/api/v1/devices/{UUID}/heartbeat",
        f"/api/v1/devices/{UUID}/updates/5/status",
    ]
    assert all(r.headers["Authorization"] == "Bearer tok" for r in seen)
    assert json.loads(seen[0].content)["current_version"] == "v1.0.0"


def test_a_malformed_answer_is_a_server_error() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"unexpected": True}))
    with (
        DeviceClient(
            "https://u.example.org", device_uuid=UUID, token="t", transport=transport
        ) as client,
        pytest.raises(ServerError, match="unexpected answer"),
    ):
        client.heartbeat(HeartbeatRequest())
