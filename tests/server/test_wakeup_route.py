"""The wake-up channel's route on a real server process (docs/agent.md, "The wake-up channel").

A held ``GET /api/v1/devices/{uuid}/wakeup`` is answered the moment a publish,
a rollout command or a token change concerns the device, ``idle`` after the
hold otherwise; new held requests beyond the admission rate get 503 with
``Retry-After``; a client that leaves frees its slot; SIGTERM answers every
held request at once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from javia_devtools.server_process import SERVER_MODULE_COMMAND, ServerProcess
from shared_helpers import build_package

API_KEY = "wakeup-test-admin-key-0123"
ADMIN = {"X-API-Key": API_KEY}


def start_server(root: Path, **settings: str) -> ServerProcess:
    """A server process with ``settings`` as ``JAVIA_*`` variables; stopped by the caller."""
    server = ServerProcess(
        root / "data",
        API_KEY,
        log_path=root / "server.log",
        command=SERVER_MODULE_COMMAND,
        config_path=root / "absent.toml",
        env={f"JAVIA_{name.upper()}": value for name, value in settings.items()},
    )
    server.start()
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server(tmp_path_factory.mktemp("wakeup"), wakeup_hold_seconds="5")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as executor:
        yield executor


def register(http: httpx.Client, **body: Any) -> tuple[str, dict[str, str]]:
    """A new device that heartbeated once: (uuid, its bearer header)."""
    answer = http.post("/api/v1/devices/register", json=body, headers=ADMIN).json()
    device = {"Authorization": f"Bearer {answer['device_token']}"}
    uid = answer["device_uuid"]
    beat = http.post(
        f"/api/v1/devices/{uid}/heartbeat", json={"current_version": "v1.0.0"}, headers=device
    )
    assert beat.status_code == 200, beat.text
    return uid, device


def hold(
    pool: ThreadPoolExecutor, base: str, uid: str, device: dict[str, str], wait: int = 30
) -> Future[Any]:
    """Send one held request in the background: (status, JSON or text, seconds it took)."""

    def send() -> tuple[int, Any, float]:
        started = time.monotonic()
        response = httpx.get(
            f"{base}/api/v1/devices/{uid}/wakeup", params={"wait": wait}, headers=device, timeout=60
        )
        kind = response.headers.get("content-type", "")
        body = response.json() if kind.startswith("application/json") else response.text
        return response.status_code, body, time.monotonic() - started

    return pool.submit(send)


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def held(http: httpx.Client) -> int:
    return int(http.get("/api/v1/wakeups", headers=ADMIN).json()["held"])


def publish(http: httpx.Client, version: str, update_type: str, **data: str) -> httpx.Response:
    package = build_package(version, update_type, signing_key=Ed25519PrivateKey.generate())
    response = http.post("/api/v1/updates/", files=package.files(), data=data, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response


def test_an_instant_publish_answers_the_held_request_at_once_and_idle_ends_after_the_hold(
    server: ServerProcess, http: httpx.Client, pool: ThreadPoolExecutor
) -> None:
    uid, device = register(http)
    idle_uid, idle_device = register(http)
    before = held(http)
    waiting = hold(pool, server.url, uid, device)
    idle = hold(pool, server.url, idle_uid, idle_device, wait=5)
    wait_until(lambda: held(http) == before + 2)

    published_at = time.monotonic()
    publish(http, "v1.1.0", "instant", targets=uid)
    status, answer, _ = waiting.result(timeout=10)
    assert (status, answer["reason"], answer["heartbeat"], answer["spread_seconds"]) == (
        200,
        "update",
        True,
        0.0,
    )
    assert time.monotonic() - published_at < 2.0
    beat = http.post(
        f"/api/v1/devices/{uid}/heartbeat", json={"current_version": "v1.0.0"}, headers=device
    )
    assert beat.json()["update"]["version"] == "v1.1.0"

    # The other device was not targeted: it is answered idle when its 5 s hold ends.
    status, answer, seconds = idle.result(timeout=15)
    assert (status, answer["reason"], answer["heartbeat"]) == (200, "idle", False)
    assert 4.5 <= seconds < 10
    assert answer["reconnect_after_seconds"] >= 0
    wait_until(lambda: held(http) == before)


def test_a_rollout_pause_wakes_every_device_and_a_revoked_token_ends_its_request(
    server: ServerProcess, http: httpx.Client, pool: ThreadPoolExecutor
) -> None:
    publish(http, "v2.0.0", "scheduled")
    uid, device = register(http)
    before = held(http)
    waiting = hold(pool, server.url, uid, device)
    wait_until(lambda: held(http) == before + 1)
    assert http.post("/api/v1/updates/v2.0.0/pause", json={}, headers=ADMIN).status_code == 200
    status, answer, _ = waiting.result(timeout=10)
    assert (status, answer["reason"], answer["spread_seconds"]) == (200, "rollout", 0.0)

    waiting = hold(pool, server.url, uid, device)
    wait_until(lambda: held(http) == before + 1)
    assert http.post(f"/api/v1/devices/{uid}/revoke", headers=ADMIN).status_code == 200
    status, answer, _ = waiting.result(timeout=10)
    assert (status, answer["reason"], answer["heartbeat"]) == (200, "token", True)
    status, _, _ = hold(pool, server.url, uid, device).result(timeout=10)
    assert status == 401


def test_a_device_cannot_hold_another_devices_channel_nor_ask_a_silly_wait(
    server: ServerProcess, http: httpx.Client
) -> None:
    uid, _ = register(http)
    _, other = register(http)
    assert http.get(f"/api/v1/devices/{uid}/wakeup", headers=other).status_code == 403
    assert http.get(f"/api/v1/devices/{uid}/wakeup").status_code == 401
    assert http.get(f"/api/v1/devices/{uid}/wakeup", headers=ADMIN).status_code == 403
    for wait in ("0", "100000", "soon"):
        refused = http.get(f"/api/v1/devices/{uid}/wakeup", params={"wait": wait}, headers=other)
        assert refused.status_code == 422, wait
    assert http.get("/api/v1/wakeups", headers=other).status_code == 403


def test_a_client_that_leaves_frees_its_held_slot(
    server: ServerProcess, http: httpx.Client
) -> None:
    uid, device = register(http)
    before = held(http)
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{server.url}/api/v1/devices/{uid}/wakeup", headers=device, timeout=0.5)
    wait_until(lambda: held(http) == before, seconds=5)


def test_admission_beyond_the_rate_is_503_with_retry_after_and_sigterm_answers_the_held(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    server = start_server(tmp_path, wakeup_admissions_per_second="1")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            devices = [register(http) for _ in range(8)]
            answers = [hold(pool, server.url, uid, device) for uid, device in devices]
            # Every request is either held or answered (refused) by now.
            wait_until(lambda: held(http) + sum(f.done() for f in answers) == len(answers))
            refused = [f.result() for f in answers if f.done()]
            assert refused and held(http) >= 1
            assert all(status == 503 for status, _, _ in refused)
            for _, body, _ in refused:  # the detail names the Retry-After sent with it
                retry_after = re.search(r"retry after (\d+) s", body["detail"])
                assert retry_after and 1 <= int(retry_after.group(1)) <= 60
            # Heartbeats are not limited by the wake-up admission.
            uid, device = devices[-1]
            beat = http.post(f"/api/v1/devices/{uid}/heartbeat", json={}, headers=device)
            assert beat.status_code == 200
        stopped_at = time.monotonic()
        server.stop()
        assert time.monotonic() - stopped_at < 5
        ended = [f.result(timeout=5) for f in answers if f.result(timeout=5)[0] == 200]
        assert ended and all(body["reason"] == "shutdown" for _, body, _ in ended)
        assert all(body["reconnect_after_seconds"] >= 5 for _, body, _ in ended)
    finally:
        server.stop()
