"""Revoking or rotating a device token on one replica holds on every replica at once (issue 11).

Two server applications over one PostgreSQL database, each with its own
service and device cache, as two replicas behind a load balancer are
(docs/backends.md, "Several replicas"). A device authenticated through
replica B sits in B's device cache; the operator revokes or rotates its token
through replica A; B must refuse the old token at its very next request, not
after the cache's lifetime (``device_cache_seconds``, 30 s by default).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from javia_updates.server import create_app
from javia_updates.settings import ServerSettings
from shared_helpers import Clock, bearer

API_KEY = "revocation-replicas-admin-key-0123456789"
ADMIN = {"X-API-Key": API_KEY}


@pytest.fixture
def two_replicas(new_postgres_url, tmp_path: Path) -> Iterator[tuple[TestClient, TestClient]]:  # type: ignore[no-untyped-def]
    url = new_postgres_url()
    clock = Clock(datetime(2027, 1, 15, 12, 0, tzinfo=UTC))
    apps = [
        create_app(
            ServerSettings(
                api_key=API_KEY,
                data_dir=tmp_path / "shared-data",
                database_url=url,
                device_cache_seconds=3600,  # far longer than the test: only invalidation helps
            ),
            clock=clock,
        )
        for _ in range(2)
    ]
    with TestClient(apps[0]) as a, TestClient(apps[1]) as b:
        yield a, b


def _beat(client: TestClient, uid: str, token: str) -> int:
    return client.post(
        f"/api/v1/devices/{uid}/heartbeat", json={}, headers=bearer(token)
    ).status_code


def test_a_token_revoked_on_replica_a_is_refused_by_replica_b_at_once(two_replicas):
    a, b = two_replicas
    registered = a.post("/api/v1/devices/register", json={}, headers=ADMIN).json()
    uid, token = registered["device_uuid"], registered["device_token"]
    assert _beat(b, uid, token) == 200  # B caches the device
    assert b.app.state.service.cached_device(token) is None  # never trusted without the database

    assert a.post(f"/api/v1/devices/{uid}/revoke", headers=ADMIN).status_code == 200

    assert _beat(b, uid, token) == 401
    assert b.get(f"/api/v1/devices/{uid}/updates/check", headers=bearer(token)).status_code == 401


def test_a_token_rotated_on_replica_a_is_refused_and_the_new_one_accepted_by_replica_b(
    two_replicas,
):
    a, b = two_replicas
    registered = a.post("/api/v1/devices/register", json={}, headers=ADMIN).json()
    uid, old = registered["device_uuid"], registered["device_token"]
    assert _beat(b, uid, old) == 200

    rotated = a.post(f"/api/v1/devices/{uid}/rotate-token", headers=ADMIN)
    new = rotated.json()["device_token"]

    assert _beat(b, uid, old) == 401
    assert _beat(b, uid, new) == 200
    assert _beat(a, uid, new) == 200
