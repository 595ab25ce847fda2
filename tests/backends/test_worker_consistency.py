"""What one server worker writes, the next request on another worker sees (``--workers``).

Two applications over one database, each with its own service and device
cache, built as ``javia server --workers`` builds its workers
(``create_app(..., shared_database=True)``), on SQLite (one file) and on
PostgreSQL. The device cache lives far longer than the test, so only the
per-request confirmation (``Store.confirm_device``: token, and the count and
sum of the device's row revisions) can make B see what A wrote.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from javia_core.models import DeviceStatus
from javia_updates.backends.records import HeartbeatWrite
from javia_updates.server import create_app
from shared_helpers import Clock, bearer

from .conftest import API_KEY, DATABASE_KINDS, settings_for

ADMIN = {"X-API-Key": API_KEY}


@pytest.fixture(params=DATABASE_KINDS)
def two_workers(request, tmp_path: Path, monkeypatch) -> Iterator[tuple[TestClient, TestClient]]:  # type: ignore[no-untyped-def]
    """Workers A and B (A prepared the database, as the supervisor does before both)."""
    settings = settings_for(
        request.param, tmp_path / "data", request=request, monkeypatch=monkeypatch
    ).model_copy(update={"device_cache_seconds": 3600.0})
    clock = Clock(datetime(2027, 1, 15, 12, 0, tzinfo=UTC))
    first = create_app(settings, clock=clock, shared_database=True)
    second = create_app(settings, clock=clock, prepare=False, shared_database=True)
    with TestClient(first) as a, TestClient(second) as b:
        yield a, b


def _publish(client: TestClient, make_package: Any, version: str) -> int:
    package = make_package(version, "instant")
    response = client.post("/api/v1/updates/", files=package.files(), headers=ADMIN)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def _offer(client: TestClient, uid: str, token: str, version: str) -> str | None:
    response = client.post(
        f"/api/v1/devices/{uid}/heartbeat", json={"current_version": version}, headers=bearer(token)
    )
    assert response.status_code == 200, response.text
    update = response.json()["update"]
    return None if update is None else str(update["version"])


def _report(client: TestClient, uid: str, token: str, update_id: int, status: str) -> None:
    response = client.post(
        f"/api/v1/devices/{uid}/updates/{update_id}/status",
        json={
            "status": status,
            "error_message": "health check failed" if status == "failed" else None,
        },
        headers=bearer(token),
    )
    assert response.status_code == 200, response.text


def _registered(client: TestClient) -> tuple[str, str]:
    body = client.post("/api/v1/devices/register", json={}, headers=ADMIN).json()
    return body["device_uuid"], body["device_token"]


@pytest.mark.parametrize("final", ["completed", "failed"])
def test_a_final_report_on_worker_a_is_never_followed_by_the_same_offer_on_worker_b(
    two_workers, make_package, final
):
    a, b = two_workers
    uid, token = _registered(a)
    update_id = _publish(a, make_package, "v1.1.0")
    assert _offer(a, uid, token, "v1.0.0") == "v1.1.0"
    assert _offer(b, uid, token, "v1.0.0") == "v1.1.0"  # B caches the device and its rows
    for status in ("downloading", "installing", final):
        _report(a, uid, token, update_id, status)

    running = "v1.1.0" if final == "completed" else "v1.0.0"
    assert _offer(b, uid, token, running) is None
    assert _offer(b, uid, token, running) is None
    assert _offer(a, uid, token, running) is None


def test_a_report_on_worker_b_moves_the_row_worker_a_cached(two_workers, make_package):
    a, b = two_workers
    uid, token = _registered(a)
    update_id = _publish(a, make_package, "v1.1.0")
    assert _offer(a, uid, token, "v1.0.0") == "v1.1.0"
    _report(b, uid, token, update_id, "downloading")
    _report(a, uid, token, update_id, "installing")  # A's cached row said pending
    _report(b, uid, token, update_id, "completed")
    history = a.get(f"/api/v1/devices/{uid}/updates", headers=ADMIN).json()["items"]
    assert [row["status"] for row in history] == ["completed"]


def test_a_token_revoked_through_worker_a_is_refused_by_worker_b_at_once(two_workers):
    a, b = two_workers
    uid, token = _registered(a)
    assert _offer(b, uid, token, "v1.0.0") is None  # cached on B
    assert a.post(f"/api/v1/devices/{uid}/revoke", headers=ADMIN).status_code == 200
    answer = b.post(f"/api/v1/devices/{uid}/heartbeat", json={}, headers=bearer(token))
    assert answer.status_code == 401


def test_a_later_heartbeat_flushed_first_by_one_worker_is_not_undone_by_another(two_workers):
    """Each worker flushes its own batch of soft state; the order of flushes is not the heartbeats'."""
    a, b = two_workers
    uid, _token = _registered(a)
    store = a.app.state.service.store
    device = store.get_device(uuid.UUID(uid))
    earlier = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)
    later = earlier + timedelta(seconds=30)
    online = DeviceStatus.ONLINE
    b.app.state.service.store.record_heartbeats(  # worker B flushes the later heartbeat first
        [HeartbeatWrite(device.id, later, "v1.1.0", online, {"beat": 2})]
    )
    store.record_heartbeats([HeartbeatWrite(device.id, earlier, "v1.0.0", online, {"beat": 1})])
    stored = store.get_device(uuid.UUID(uid))
    assert (stored.last_seen, stored.current_version, stored.metadata) == (
        later,
        "v1.1.0",
        {"beat": 2},
    )
