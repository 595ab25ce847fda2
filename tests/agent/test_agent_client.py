"""DeviceClient: downloads against a real local HTTP server, errors, URL safety."""

from __future__ import annotations

import gzip
import json
import random
import socket
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from javia_agent.client import DeviceClient
from javia_agent.errors import (
    AuthenticationError,
    ConfigError,
    DownloadCancelledError,
    DownloadError,
    DownloadTooLargeError,
    NetworkError,
    ServerError,
)
from javia_agent.transport import MAX_SERVER_DELAY_SECONDS, RetryPolicy, parse_retry_after
from javia_core.models import HeartbeatRequest, StatusReport, UpdateStatus

from .helpers import FileServer

UUID = "00000000-0000-0000-0000-0000000000c1"
DATA = random.Random(7).randbytes(250_000)
PATH = "/api/v1/updates/1/download"


@pytest.fixture
def client(file_server: FileServer):
    """A client that tries once: each call shows one attempt's behaviour."""
    with DeviceClient(
        file_server.url, device_uuid=UUID, token="secret-token", retry=RetryPolicy(attempts=1)
    ) as client:
        yield client


class FakeTime:
    """A monotonic clock that only moves when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def retrying_client(file_server: FileServer, fake_time: FakeTime):
    """A client with the default retry policy whose waits take no real time."""
    with DeviceClient(
        file_server.url,
        device_uuid=UUID,
        token="secret-token",
        sleep=fake_time.sleep,
        monotonic=fake_time.monotonic,
        rng=random.Random(5),
    ) as client:
        yield client


def _downloads(server: FileServer) -> list[str | None]:
    return [range_ for path, range_ in server.requests if path == PATH]


def test_cut_download_resumes_with_range_and_the_file_is_exact(
    client: DeviceClient, file_server: FileServer, tmp_path: Path
) -> None:
    file_server.add(PATH, DATA, cut_after=80_000)
    dest = tmp_path / "payload.tar.gz"
    with pytest.raises(DownloadError) as error:
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


# -- retries, Retry-After, rate limit ---------------------------------------------------


def test_twenty_cuts_at_random_offsets_end_complete_within_one_call(
    retrying_client: DeviceClient, file_server: FileServer, tmp_path: Path
) -> None:
    cuts = sorted(random.Random(11).sample(range(1, len(DATA)), 20))
    route = file_server.add(PATH, DATA, cuts=list(cuts))
    dest = tmp_path / "payload.tar.gz"

    retrying_client.download_payload(PATH, dest, len(DATA))

    assert dest.read_bytes() == DATA
    assert _downloads(file_server) == [None] + [f"bytes={cut}-" for cut in cuts]
    assert route.sent <= 1.1 * len(DATA)


def test_a_server_ignoring_range_on_resume_costs_a_restart_not_a_corrupt_file(
    retrying_client: DeviceClient, file_server: FileServer, tmp_path: Path
) -> None:
    route = file_server.add(PATH, DATA, cuts=[150_000], honour_range=False)
    dest = tmp_path / "payload.tar.gz"

    retrying_client.download_payload(PATH, dest, len(DATA))

    assert dest.read_bytes() == DATA
    assert _downloads(file_server) == [None, "bytes=150000-"]
    assert route.sent == 150_000 + len(DATA)  # the whole body again, written from byte 0


def test_failures_without_progress_back_off_exponentially_with_jitter_then_give_up(
    retrying_client: DeviceClient, file_server: FileServer, fake_time: FakeTime, tmp_path: Path
) -> None:
    file_server.add(PATH, DATA, status=502)
    with pytest.raises(ServerError) as error:
        retrying_client.download_payload(PATH, tmp_path / "p", len(DATA))
    assert error.value.status_code == 502
    policy = RetryPolicy()
    assert len(_downloads(file_server)) == policy.attempts
    waits = fake_time.sleeps
    assert len(waits) == policy.attempts - 1
    for failures, wait in enumerate(waits, start=1):
        ceiling = min(policy.max_delay_seconds, policy.base_delay_seconds * 2 ** (failures - 1))
        assert ceiling / 2 <= wait <= ceiling
    assert waits[-1] > waits[0]
    assert len(set(waits)) == len(waits)  # jittered, not a fixed schedule


def test_retry_after_on_503_is_honoured(
    retrying_client: DeviceClient, file_server: FileServer, fake_time: FakeTime, tmp_path: Path
) -> None:
    route = file_server.add(PATH, DATA)
    route.refusals = [(503, {"Retry-After": "45"}), (429, {"Retry-After": "7"})]
    dest = tmp_path / "payload.tar.gz"

    retrying_client.download_payload(PATH, dest, len(DATA))

    assert dest.read_bytes() == DATA
    assert len(fake_time.sleeps) == 2
    # At least what was asked, plus up to a quarter more at random (jitter).
    assert 45 <= fake_time.sleeps[0] <= 45 * 1.25 and 7 <= fake_time.sleeps[1] <= 7 * 1.25


def test_a_retry_after_longer_than_the_limit_ends_the_attempt_with_the_delay(
    retrying_client: DeviceClient, file_server: FileServer, fake_time: FakeTime, tmp_path: Path
) -> None:
    route = file_server.add(PATH, DATA)
    route.refusals = [(503, {"Retry-After": "1800"})]
    with pytest.raises(ServerError) as error:
        retrying_client.download_payload(PATH, tmp_path / "p", len(DATA))
    assert error.value.retry_after_seconds == 1800
    assert fake_time.sleeps == []


def test_client_errors_are_not_retried(
    retrying_client: DeviceClient, file_server: FileServer, fake_time: FakeTime, tmp_path: Path
) -> None:
    file_server.add(PATH, DATA, status=404)
    with pytest.raises(ServerError):
        retrying_client.download_payload(PATH, tmp_path / "p", len(DATA))
    assert len(_downloads(file_server)) == 1 and fake_time.sleeps == []


def test_manifest_downloads_are_retried_too(
    retrying_client: DeviceClient, file_server: FileServer, fake_time: FakeTime
) -> None:
    route = file_server.add("/api/v1/updates/1/manifest", b'{"format": 1}')
    route.refusals = [(503, {}), (500, {})]
    assert retrying_client.download_manifest("/api/v1/updates/1/manifest") == b'{"format": 1}'
    assert len(fake_time.sleeps) == 2


def test_should_stop_interrupts_the_wait_before_a_retry(
    file_server: FileServer, tmp_path: Path
) -> None:
    file_server.add(PATH, DATA, status=503)
    slept: list[float] = []

    def stop_once_the_wait_began() -> bool:
        return bool(slept)

    with (
        DeviceClient(file_server.url, device_uuid=UUID, token="t", sleep=slept.append) as client,
        pytest.raises(DownloadError, match="stopped while waiting"),
    ):
        client.download_payload(
            PATH, tmp_path / "p", len(DATA), should_stop=stop_once_the_wait_began
        )
    assert len(_downloads(file_server)) == 1
    assert slept == [1.0]


@pytest.mark.parametrize(
    ("header", "date", "expected"),
    [
        ("120", None, 120.0),
        ("0", None, 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", "Wed, 21 Oct 2015 07:26:30 GMT", 90.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", "Wed, 21 Oct 2015 07:30:00 GMT", 0.0),
        ("soon", None, None),
        ("-5", None, None),
        (None, None, None),
    ],
)
def test_retry_after_takes_seconds_or_a_date_measured_on_the_servers_clock(
    header: str | None, date: str | None, expected: float | None
) -> None:
    assert parse_retry_after(header, date=date) == expected


def test_the_rate_limit_spreads_the_download_over_size_divided_by_rate(
    file_server: FileServer, fake_time: FakeTime, tmp_path: Path
) -> None:
    file_server.add(PATH, DATA)
    rate = 50_000.0
    with DeviceClient(
        file_server.url,
        device_uuid=UUID,
        token="t",
        download_rate_limit=rate,
        sleep=fake_time.sleep,
        monotonic=fake_time.monotonic,
    ) as client:
        client.download_payload(PATH, tmp_path / "p", len(DATA))
    assert (tmp_path / "p").read_bytes() == DATA
    assert sum(fake_time.sleeps) == pytest.approx(len(DATA) / rate, rel=0.01)
    assert len(fake_time.sleeps) >= 8  # in small steps, not one long stall


def test_the_rate_limit_holds_on_the_real_clock(file_server: FileServer, tmp_path: Path) -> None:
    import time

    file_server.add(PATH, DATA)
    with DeviceClient(
        file_server.url, device_uuid=UUID, token="t", download_rate_limit=500_000
    ) as client:
        began = time.monotonic()
        client.download_payload(PATH, tmp_path / "p", len(DATA))
        elapsed = time.monotonic() - began
    assert elapsed >= 0.9 * len(DATA) / 500_000
    assert (tmp_path / "p").read_bytes() == DATA


def test_a_resume_answered_for_a_larger_object_is_refused(
    retrying_client: DeviceClient, tmp_path: Path
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            206,
            headers={"Content-Range": f"bytes 10-{len(DATA) + 99}/{len(DATA) + 100}"},
            content=DATA[10:] + b"x" * 100,
        )

    (tmp_path / "p.partial").write_bytes(DATA[:10])
    with (
        DeviceClient(
            "https://u.example.org",
            device_uuid=UUID,
            token="t",
            transport=httpx.MockTransport(handler),
        ) as client,
        pytest.raises(DownloadTooLargeError, match="signed size"),
    ):
        client.download_payload(PATH, tmp_path / "p", len(DATA))


# -- server-imposed delays are capped -------------------------------------------------


@pytest.mark.parametrize(
    ("header", "date"),
    [
        ("99999999999999999999", None),
        ("3601", None),
        ("9" * 5000, None),  # more digits than int() converts
        ("0" * 30 + "7200", None),
        ("Fri, 31 Dec 9999 23:59:59 GMT", "Wed, 21 Oct 2015 07:26:30 GMT"),
    ],
)
def test_a_retry_after_longer_than_the_cap_is_cut_to_it(header: str, date: str | None) -> None:
    assert parse_retry_after(header, date=date) == MAX_SERVER_DELAY_SECONDS == 3600


def test_a_huge_retry_after_on_a_download_is_capped(
    retrying_client: DeviceClient, file_server: FileServer, tmp_path: Path
) -> None:
    route = file_server.add(PATH, DATA)
    route.refusals = [(429, {"Retry-After": "99999999999999999999"})]
    with pytest.raises(ServerError) as error:
        retrying_client.download_payload(PATH, tmp_path / "p", len(DATA))
    assert error.value.retry_after_seconds == MAX_SERVER_DELAY_SECONDS


def test_a_huge_retry_after_on_a_status_report_is_capped() -> None:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(
            503, headers={"Retry-After": "99999999999999999999"}, json={"detail": "busy"}
        )
    )
    with (
        DeviceClient(
            "https://u.example.org", device_uuid=UUID, token="t", transport=transport
        ) as client,
        pytest.raises(ServerError) as error,
    ):
        client.report_status(5, StatusReport(status=UpdateStatus.DOWNLOADING))
    assert error.value.retry_after_seconds == MAX_SERVER_DELAY_SECONDS


# -- small answers: deadline, keepalive, stop, encodings (a real loopback server) ---------


class OneAnswerServer:
    """A loopback HTTP/1.1 server giving every request the same 200 answer.

    The answer is ``head`` and then ``tail`` spaces, one byte per :meth:`step`,
    so a trickling server moves in lockstep with the test and needs no sleeps.
    """

    def __init__(self, head: bytes, tail: int = 0, headers: dict[str, str] | None = None) -> None:
        self.head, self.tail, self.headers = head, tail, headers or {}
        self.steps = threading.Semaphore(0)
        self.sent = 0
        self.accept_encodings: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                outer.answer(self)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.answer(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def step(self) -> None:
        self.steps.release()

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        self.accept_encodings.append(handler.headers.get("Accept-Encoding"))
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(self.head) + self.tail))
        for name, value in self.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        try:
            handler.wfile.write(self.head)
            handler.wfile.flush()
            for _ in range(self.tail):
                if not self.steps.acquire(timeout=5):
                    return
                handler.wfile.write(b" ")
                handler.wfile.flush()
                self.sent += 1
        except OSError:
            handler.close_connection = True

    def __enter__(self) -> OneAnswerServer:
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for _ in range(self.tail):
            self.steps.release()
        self.httpd.shutdown()
        self.httpd.server_close()


HEARTBEAT_JSON = json.dumps(
    {"server_time": "2025-06-01T12:00:00Z", "heartbeat_interval_seconds": 120}
).encode()


@pytest.fixture
def trickle() -> Iterator[OneAnswerServer]:
    with OneAnswerServer(HEARTBEAT_JSON, tail=500) as server:
        yield server


def _trickled_client(
    server: OneAnswerServer, fake_time: FakeTime, pings: list[float], **options: Any
) -> DeviceClient:
    """Every keepalive ping lets one more byte out and moves the clock 10 s on."""

    def keepalive() -> None:
        pings.append(fake_time.now)
        fake_time.now += 10
        server.step()

    return DeviceClient(
        server.url,
        device_uuid=UUID,
        token="t",
        retry=RetryPolicy(attempts=1),
        keepalive=keepalive,
        sleep=fake_time.sleep,
        monotonic=fake_time.monotonic,
        **options,
    )


def test_a_trickled_heartbeat_answer_is_cut_off_at_the_deadline_while_pinging_the_watchdog(
    trickle: OneAnswerServer, fake_time: FakeTime
) -> None:
    pings: list[float] = []
    with (
        _trickled_client(trickle, fake_time, pings) as client,
        pytest.raises(NetworkError, match="within 60 s"),
    ):
        client.heartbeat(HeartbeatRequest())
    assert trickle.sent < 10  # not the 500 bytes the server wanted to drip
    assert 6 <= len(pings) <= 9  # the watchdog heard from the agent every 10 s
    assert pings[-1] - pings[0] <= 80


@pytest.mark.parametrize("call", ["manifest", "signature"])
def test_a_trickled_manifest_or_signature_is_cut_off_at_the_configured_deadline(
    trickle: OneAnswerServer, fake_time: FakeTime, call: str
) -> None:
    pings: list[float] = []
    with (
        _trickled_client(trickle, fake_time, pings, request_deadline_seconds=30) as client,
        pytest.raises(NetworkError, match="within 30 s"),
    ):
        getattr(client, f"download_{call}")("/api/v1/updates/1/" + call)
    assert trickle.sent < 6


def test_a_stop_during_a_trickled_answer_ends_the_request_at_once(
    trickle: OneAnswerServer, fake_time: FakeTime
) -> None:
    pings: list[float] = []
    with (
        _trickled_client(trickle, fake_time, pings, should_stop=lambda: len(pings) >= 3) as client,
    ):
        with pytest.raises(NetworkError, match="stopped"):
            client.heartbeat(HeartbeatRequest())
        with pytest.raises(DownloadCancelledError):
            client.download_manifest("/api/v1/updates/1/manifest")
    assert trickle.sent <= 4


def _gzip_bomb(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    block = bytes(1024 * 1024)
    return b"".join(packer.compress(block) for _ in range(size // len(block))) + packer.flush()


def test_a_compressed_answer_is_refused_before_it_is_decompressed() -> None:
    bomb = _gzip_bomb(64 * 1024 * 1024)
    assert len(bomb) < 128 * 1024
    with (
        OneAnswerServer(bomb, headers={"Content-Encoding": "gzip"}) as server,
        DeviceClient(server.url, device_uuid=UUID, token="t") as client,
    ):
        tracemalloc.start()
        try:
            with pytest.raises(ServerError, match="Content-Encoding: gzip"):
                client.heartbeat(HeartbeatRequest())
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 4 * 1024 * 1024  # not the 64 MiB it expands to
    assert server.accept_encodings == ["identity"]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "x-unknown"])
@pytest.mark.parametrize("call", ["heartbeat", "manifest"])
def test_an_answer_that_is_not_what_its_encoding_says_is_a_server_error(
    encoding: str, call: str
) -> None:
    with (
        OneAnswerServer(b"not compressed at all", headers={"Content-Encoding": encoding}) as server,
        DeviceClient(server.url, device_uuid=UUID, token="t", retry=RetryPolicy(attempts=1)) as c,
        pytest.raises(ServerError, match="server fault"),
    ):
        if call == "heartbeat":
            c.heartbeat(HeartbeatRequest())
        else:
            c.download_manifest("/api/v1/updates/1/manifest")


def test_every_request_asks_for_unencoded_answers() -> None:
    with (
        OneAnswerServer(gzip.compress(HEARTBEAT_JSON)) as server,
        DeviceClient(server.url, device_uuid=UUID, token="t", retry=RetryPolicy(attempts=1)) as c,
    ):
        with pytest.raises(ServerError):
            c.heartbeat(HeartbeatRequest())  # gzip bytes, unannounced: not JSON
        with pytest.raises(ServerError):
            c.report_status(1, StatusReport(status=UpdateStatus.DOWNLOADING))
        c.download_signature("/api/v1/updates/1/signature")
    assert server.accept_encodings == ["identity"] * 3


def test_a_complete_answer_is_used_even_when_a_stop_was_asked() -> None:
    with (
        OneAnswerServer(HEARTBEAT_JSON) as server,
        DeviceClient(server.url, device_uuid=UUID, token="t", should_stop=lambda: True) as c,
    ):
        assert c.heartbeat(HeartbeatRequest()).heartbeat_interval_seconds == 120
