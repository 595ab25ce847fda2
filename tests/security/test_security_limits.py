"""Limits: request bodies (413 naming the limit) and heartbeat rate (429 with Retry-After)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from security_helpers import ADMIN, assert_detail, bearer, make_package, register

from javia_updates.server.limits import HeartbeatRateLimiter
from shared_helpers import Clock


def chunks(body: bytes, size: int = 512) -> object:
    return iter([body[i : i + size] for i in range(0, len(body), size)])


# --------------------------------------------------------------------------- request bodies


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_json_body_above_the_limit_is_413_naming_the_limit(
    make_client: Callable[..., TestClient], chunked: bool
) -> None:
    client = make_client(max_request_body_bytes=4096)
    device, token = register(client, "kitchen")
    body = json.dumps({"metadata": {"blob": "x" * 5000}}).encode()
    content = chunks(body) if chunked else body
    response = client.post(
        f"/api/v1/devices/{device}/heartbeat",
        content=content,
        headers={**bearer(token), "Content-Type": "application/json"},
    )
    assert_detail(response, 413, "4096 bytes")
    seen = client.get(f"/api/v1/devices/{device}", headers=ADMIN).json()["last_seen"]
    assert seen is None  # the heartbeat was not processed


def test_the_body_limit_is_checked_before_credentials(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(max_request_body_bytes=2048)
    response = client.post(
        "/api/v1/devices/register",
        content=b"{" + b" " * 4000 + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert_detail(response, 413, "of 4002 bytes", "2048 bytes")


def test_a_body_within_the_limit_is_served(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_request_body_bytes=4096)
    device, token = register(client, "kitchen")
    response = client.post(
        f"/api/v1/devices/{device}/heartbeat",
        json={"metadata": {"blob": "x" * 3000}},
        headers=bearer(token),
    )
    assert response.status_code == 200


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_uploads_have_their_own_larger_limit(
    make_client: Callable[..., TestClient], chunked: bool
) -> None:
    client = make_client(max_request_body_bytes=1024, max_upload_bytes=64 * 1024)
    package = make_package("v1.1.0")
    request = httpx.Request("POST", "http://server/api/v1/updates/", files=package.files())
    body = request.read()
    assert 1024 < len(body) < 64 * 1024
    headers = {**ADMIN, "Content-Type": request.headers["Content-Type"]}
    response = client.post(
        "/api/v1/updates/", content=chunks(body) if chunked else body, headers=headers
    )
    assert response.status_code == 201, response.text

    small = make_client(max_upload_bytes=1024)
    refused = small.post(
        "/api/v1/updates/", content=chunks(body) if chunked else body, headers=headers
    )
    assert_detail(refused, 413, "1024 bytes")
    assert list((small.app.state.settings.data_dir / "uploads").iterdir()) == []


# --------------------------------------------------------------------------- heartbeat rate


def test_a_device_heartbeating_far_too_fast_gets_429_with_retry_after(
    make_client: Callable[..., TestClient], clock: Clock
) -> None:
    client = make_client(heartbeat_interval_seconds=300, heartbeat_burst=5)
    device, token = register(client, "chatty")
    other, other_token = register(client, "calm")
    url = f"/api/v1/devices/{device}/heartbeat"
    statuses = [client.post(url, json={}, headers=bearer(token)).status_code for _ in range(5)]
    assert statuses == [200] * 5
    refused = client.post(url, json={}, headers=bearer(token))
    detail = assert_detail(refused, 429, "at most 5 per 300 s")
    assert refused.headers["Retry-After"] == "60"  # one token refills in 300 s / 5
    assert "retry after 60 s" in detail
    # Another device is not affected.
    calm = client.post(f"/api/v1/devices/{other}/heartbeat", json={}, headers=bearer(other_token))
    assert calm.status_code == 200
    clock.advance(seconds=59)
    assert client.post(url, json={}, headers=bearer(token)).status_code == 429
    clock.advance(seconds=1)
    assert client.post(url, json={}, headers=bearer(token)).status_code == 200


def test_a_device_heartbeating_as_told_is_never_limited(
    make_client: Callable[..., TestClient], clock: Clock
) -> None:
    client = make_client(heartbeat_interval_seconds=300, heartbeat_burst=3)
    device, token = register(client, "steady")
    for _ in range(50):
        response = client.post(
            f"/api/v1/devices/{device}/heartbeat", json={}, headers=bearer(token)
        )
        assert response.status_code == 200
        clock.advance(seconds=270)  # 10 % early, like the agent's jitter at worst


def test_a_burst_of_zero_turns_the_limit_off(make_client: Callable[..., TestClient]) -> None:
    client = make_client(heartbeat_burst=0)
    device, token = register(client, "unlimited")
    url = f"/api/v1/devices/{device}/heartbeat"
    assert all(
        client.post(url, json={}, headers=bearer(token)).status_code == 200 for _ in range(30)
    )


START = datetime(2027, 1, 1, tzinfo=UTC)


@settings(max_examples=100, deadline=None)
@given(
    burst=st.integers(min_value=1, max_value=20),
    gaps=st.lists(st.floats(min_value=0, max_value=600, allow_nan=False), min_size=1, max_size=60),
)
def test_the_limiter_allows_at_most_burst_plus_refill(burst: int, gaps: list[float]) -> None:
    limiter = HeartbeatRateLimiter(burst=burst, interval_seconds=300)
    now = START
    allowed = 0
    for gap in gaps:
        now += timedelta(seconds=gap)
        wait = limiter.acquire(1, now)
        if wait is None:
            allowed += 1
        else:
            assert 0 < wait <= 300 / burst + 1e-9
    elapsed = (now - START).total_seconds()
    assert allowed <= burst + elapsed * burst / 300 + 1e-9
    # Heartbeats spaced at least one interval apart are always allowed.
    spaced = HeartbeatRateLimiter(burst=burst, interval_seconds=300)
    assert all(spaced.acquire(2, START + timedelta(seconds=300 * n)) is None for n in range(20))


def test_a_clock_stepping_back_is_not_held_against_the_device() -> None:
    limiter = HeartbeatRateLimiter(burst=2, interval_seconds=300)
    assert limiter.acquire(1, START) is None
    assert limiter.acquire(1, START - timedelta(hours=1)) is None
    assert limiter.acquire(1, START) is not None  # no refill from the backwards step
    assert limiter.acquire(1, START + timedelta(seconds=150)) is None


def test_idle_devices_are_forgotten() -> None:
    limiter = HeartbeatRateLimiter(burst=2, interval_seconds=300, sweep_every=10)
    for device_id in range(9):
        limiter.acquire(device_id, START)
    assert len(limiter) == 9
    limiter.acquire(99, START + timedelta(seconds=301))  # the 10th call sweeps
    assert len(limiter) == 1
