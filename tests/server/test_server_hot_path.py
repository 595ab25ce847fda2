"""The heartbeat hot path (issue 7): batched soft state, what a crash can lose,
and caches that never answer from stale data after this server's own writes."""

from __future__ import annotations

import signal
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from javia_core.errors import BackendError
from javia_core.models import (
    DeviceRegisterRequest,
    DeviceStatus,
    HeartbeatRequest,
    StatusReport,
    UpdateStatus,
)
from javia_core.status_rules import raises_version
from javia_devtools.demo import LocalFleet
from javia_updates.backends.base import DeviceRecord, HeartbeatWrite
from javia_updates.backends.cache import DeviceCache, UpdateCatalog
from javia_updates.backends.soft_state import SoftStateWriter
from javia_updates.server.fast_path import HeartbeatFastPath
from javia_updates.service import UpdateService

API_KEY = "hot-path-admin-key-0123456789"
START = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def write(device_id: int, seconds: float, version: str = "v1.0.0") -> HeartbeatWrite:
    return HeartbeatWrite(
        device_id, START + timedelta(seconds=seconds), version, DeviceStatus.ONLINE, {}
    )


# --------------------------------------------------------------------------- soft state


def test_soft_state_waits_for_the_flush_and_keeps_only_the_newest_per_device() -> None:
    batches: list[list[HeartbeatWrite]] = []
    writer = SoftStateWriter(batches.append, flush_seconds=3600)  # no flush by itself here
    writer.start()
    writer.record(write(1, 0, "v1.0.0"))
    writer.record(write(2, 1))
    writer.record(write(1, 2, "v1.1.0"))

    assert batches == [], "nothing is written before the flush"
    assert writer.pending() == 2
    assert writer.flush() == 2
    (batch,) = batches
    assert {w.device_id: w.current_version for w in batch} == {1: "v1.1.0", 2: "v1.0.0"}
    assert writer.flush() == 0
    writer.close()


def test_a_failed_flush_keeps_the_batch_and_a_newer_heartbeat_wins() -> None:
    calls: list[list[HeartbeatWrite]] = []

    def failing_once(batch: Any) -> None:
        calls.append(list(batch))
        if len(calls) == 1:
            raise BackendError("database write failed: disk I/O error")

    writer = SoftStateWriter(failing_once, flush_seconds=3600)
    writer.start()
    writer.record(write(1, 0, "v1.0.0"))
    writer.record(write(2, 0, "v1.0.0"))
    with pytest.raises(BackendError):
        writer.flush()
    writer.record(write(1, 5, "v1.1.0"))  # arrives while the batch waits for a retry
    writer.close()  # the final flush retries

    assert {w.device_id: w.current_version for w in calls[-1]} == {1: "v1.1.0", 2: "v1.0.0"}


def test_without_a_flush_thread_every_heartbeat_is_written_at_once() -> None:
    batches: list[list[HeartbeatWrite]] = []
    writer = SoftStateWriter(batches.append, flush_seconds=0.25)  # not started: tests, tools

    writer.record(write(1, 0))

    assert len(batches) == 1


def test_batched_write_keeps_a_version_raised_after_the_heartbeat(service, register, clock) -> None:  # type: ignore[no-untyped-def]
    device, _ = register()
    service.store.record_heartbeats([write(device.id, 0, "v1.0.0")])
    # A completed update raised the version after a heartbeat that is still queued.
    clock.advance(seconds=10)
    service.store.record_heartbeat(
        device.id,
        now=clock.now,
        current_version="v1.1.0",
        status=DeviceStatus.ONLINE,
        metadata={},
    )
    service.store.record_heartbeats([write(device.id, 5, "v1.0.0")])

    stored = service.find_device(device.device_uuid)
    assert stored.current_version == "v1.1.0"


def test_admin_reads_see_every_heartbeat_answered_so_far(backend, settings, clock) -> None:  # type: ignore[no-untyped-def]
    service = UpdateService(backend, settings.model_copy(update={"heartbeat_flush_seconds": 60}))
    registered = service.register_device(DeviceRegisterRequest(), now=clock.now)
    device = service.find_device(registered.device_uuid)
    service.start()
    try:
        service.heartbeat(
            device,
            HeartbeatRequest(current_version="v1.0.0", metadata={"room": "hall"}),
            now=clock.now,
        )
        assert service.soft_state.pending() == 1

        shown = service.get_device(device.device_uuid, now=clock.now)
    finally:
        service.close()

    assert shown.last_seen == clock.now
    assert shown.metadata == {"room": "hall"}


# --------------------------------------------------------------------------- crash


@pytest.fixture
def fleet(tmp_path: Path):  # type: ignore[no-untyped-def]
    fleet = LocalFleet(tmp_path / "fleet", heartbeat_seconds=300, api_key=API_KEY)
    try:
        yield fleet
    finally:
        fleet.stop()


def _admin(fleet: LocalFleet) -> httpx.Client:
    return httpx.Client(base_url=fleet.url, headers={"X-API-Key": API_KEY}, timeout=30)


def test_a_crash_loses_at_most_the_last_batch_of_heartbeats_and_never_a_status_report(
    fleet: LocalFleet, make_package
) -> None:  # type: ignore[no-untyped-def]
    # No flush falls inside the test: the first one comes 60 s after start.
    slow_flush = {"JAVIA_HEARTBEAT_FLUSH_SECONDS": "60"}
    fleet.start_server(extra_env=slow_flush)
    with _admin(fleet) as admin:
        body = admin.post("/api/v1/devices/register", json={"device_name": "hall"}).json()
        uid, headers = body["device_uuid"], bearer(body["device_token"])
        first = {"current_version": "v1.0.0", "metadata": {"beat": "first"}}
        assert (
            admin.post(f"/api/v1/devices/{uid}/heartbeat", json=first, headers=headers).status_code
            == 200
        )
        seen = admin.get(f"/api/v1/devices/{uid}").json()  # an admin read flushes: durable now
        published = admin.post("/api/v1/updates/", files=make_package("v1.1.0", "instant").files())
        assert published.status_code == 201, published.text
        update_id = published.json()["id"]

        second = {"current_version": "v1.0.0", "metadata": {"beat": "second"}}
        answer = admin.post(f"/api/v1/devices/{uid}/heartbeat", json=second, headers=headers).json()
        assert answer["update"]["update_id"] == update_id
        report = admin.post(
            f"/api/v1/devices/{uid}/updates/{update_id}/status",
            json={"status": "downloading"},
            headers=headers,
        )
        assert report.status_code == 200

    assert fleet.server is not None
    fleet.server.send_signal(signal.SIGKILL)  # power cut: no shutdown code runs
    fleet.server.wait()
    fleet.start_server()
    with _admin(fleet) as admin:
        after = admin.get(f"/api/v1/devices/{uid}").json()
        rows = admin.get(f"/api/v1/updates/{update_id}/devices").json()["items"]

    # Lost: the soft state of the heartbeat answered after the last flush ...
    assert after["metadata"] == {"beat": "first"}
    assert after["last_seen"] == seen["last_seen"]
    # ... and nothing else: the status report was durable before it was answered.
    assert [row["status"] for row in rows] == ["downloading"]


_PROGRESS = {"pending": 0, "downloading": 1, "installing": 2, "completed": 3}


def test_every_status_report_answered_before_a_power_cut_is_stored(
    fleet: LocalFleet, make_package
) -> None:  # type: ignore[no-untyped-def]
    """Reports from many devices at once share commits (group commit); SIGKILL in mid-flight."""
    fleet.start_server()
    devices = []
    with _admin(fleet) as admin:
        for index in range(32):
            body = admin.post("/api/v1/devices/register", json={"device_name": f"d{index}"}).json()
            uid, headers = body["device_uuid"], bearer(body["device_token"])
            beat = {"current_version": "v1.0.0"}
            assert admin.post(
                f"/api/v1/devices/{uid}/heartbeat", json=beat, headers=headers
            ).is_success
            devices.append((uid, headers))
        published = admin.post("/api/v1/updates/", files=make_package("v1.1.0", "instant").files())
        assert published.status_code == 201, published.text
        update_id = published.json()["id"]

    assert fleet.server is not None
    server = fleet.server
    answered: dict[str, str] = {}
    lock = threading.Lock()
    kill_after = 40  # of the 96 reports: many devices are between two reports at the cut

    def report_all(uid: str, headers: dict[str, str]) -> None:
        with httpx.Client(base_url=fleet.url, timeout=10) as client:
            for status in ("downloading", "installing", "completed"):
                try:
                    answer = client.post(
                        f"/api/v1/devices/{uid}/updates/{update_id}/status",
                        json={"status": status},
                        headers=headers,
                    )
                except httpx.HTTPError:
                    return  # the server is gone: this report may or may not be stored
                assert answer.status_code == 200, answer.text
                with lock:
                    answered[uid] = status
                    if sum(_PROGRESS[value] for value in answered.values()) == kill_after:
                        server.send_signal(signal.SIGKILL)  # power cut, others in flight

    with ThreadPoolExecutor(len(devices)) as pool:
        list(pool.map(lambda device: report_all(*device), devices))
    server.wait()
    fleet.start_server()
    with _admin(fleet) as admin:
        rows = admin.get(f"/api/v1/updates/{update_id}/devices", params={"limit": 1000}).json()
    stored = {row["device_uuid"]: row["status"] for row in rows["items"]}

    assert sum(_PROGRESS[value] for value in answered.values()) >= kill_after
    for uid, status in answered.items():
        assert _PROGRESS[stored[uid]] >= _PROGRESS[status], (uid, status, stored[uid])
    assert any(status != "completed" for status in stored.values()), "the cut came mid-rollout"


def test_a_clean_shutdown_writes_the_last_batch(fleet: LocalFleet) -> None:
    fleet.start_server(extra_env={"JAVIA_HEARTBEAT_FLUSH_SECONDS": "60"})
    with _admin(fleet) as admin:
        body = admin.post("/api/v1/devices/register", json={}).json()
        uid, headers = body["device_uuid"], bearer(body["device_token"])
        beat = {"current_version": "v1.2.3", "metadata": {"beat": "last"}}
        assert (
            admin.post(f"/api/v1/devices/{uid}/heartbeat", json=beat, headers=headers).status_code
            == 200
        )

    fleet.restart_server()  # SIGTERM, then start again on the same data
    with _admin(fleet) as admin:
        after = admin.get(f"/api/v1/devices/{uid}").json()

    assert after["metadata"] == {"beat": "last"}
    assert after["current_version"] == "v1.2.3"


# --------------------------------------------------------------------------- caches


def test_a_rotated_or_revoked_token_stops_working_at_once_despite_the_cache(client, admin) -> None:  # type: ignore[no-untyped-def]
    body = client.post("/api/v1/devices/register", json={}, headers=admin).json()
    uid, old = body["device_uuid"], bearer(body["device_token"])
    for _ in range(2):  # the second heartbeat is answered from the cache
        assert (
            client.post(f"/api/v1/devices/{uid}/heartbeat", json={}, headers=old).status_code == 200
        )

    new = bearer(
        client.post(f"/api/v1/devices/{uid}/rotate-token", headers=admin).json()["device_token"]
    )

    assert client.post(f"/api/v1/devices/{uid}/heartbeat", json={}, headers=old).status_code == 401
    assert client.post(f"/api/v1/devices/{uid}/heartbeat", json={}, headers=new).status_code == 200
    assert client.post(f"/api/v1/devices/{uid}/revoke", headers=admin).status_code == 200
    assert client.post(f"/api/v1/devices/{uid}/heartbeat", json={}, headers=new).status_code == 401


def test_heartbeats_see_a_publish_and_a_completed_report_at_once(
    client, admin, make_package
) -> None:  # type: ignore[no-untyped-def]
    body = client.post("/api/v1/devices/register", json={}, headers=admin).json()
    uid, headers = body["device_uuid"], bearer(body["device_token"])
    beat = {"current_version": "v1.0.0"}
    assert (
        client.post(f"/api/v1/devices/{uid}/heartbeat", json=beat, headers=headers).json()["update"]
        is None
    )

    published = client.post(
        "/api/v1/updates/", files=make_package("v1.1.0", "instant").files(), headers=admin
    )
    update_id = published.json()["id"]
    directive = client.post(f"/api/v1/devices/{uid}/heartbeat", json=beat, headers=headers).json()[
        "update"
    ]
    assert directive["update_id"] == update_id

    for step in ("downloading", "installing", "completed"):
        url = f"/api/v1/devices/{uid}/updates/{update_id}/status"
        assert client.post(url, json={"status": step}, headers=headers).status_code == 200
        if step != "completed":
            answer = client.post(
                f"/api/v1/devices/{uid}/heartbeat", json=beat, headers=headers
            ).json()
            assert answer["update"]["status"] == step, "the in-flight row is the directive"
    after = client.post(
        f"/api/v1/devices/{uid}/heartbeat", json={"current_version": "v1.1.0"}, headers=headers
    )
    assert after.json()["update"] is None


def test_device_cache_entries_expire_and_writes_drop_rows_read_before_them() -> None:
    now = [0.0]
    cache = DeviceCache(30, clock=lambda: now[0])
    device: Any = type("D", (), {"id": 7})()
    cache.put_device("hash", device)
    epoch = cache.rows_epoch(7)
    cache.forget_rows(7)  # a status report lands while a heartbeat reads the rows
    cache.put_rows(7, 1, [], epoch)
    assert cache.rows(7, 1) is None, "rows read before the write are not kept"

    cache.put_rows(7, 1, [], cache.rows_epoch(7))
    assert cache.rows(7, 1) == []
    assert cache.rows(7, 2) is None, "another update list generation: read again"
    now[0] = 29.9
    assert cache.device("hash") is device
    now[0] = 30.0
    assert cache.device("hash") is None, "changes made elsewhere show after the TTL"
    assert DeviceCache(0).enabled is False


def test_a_committed_row_replaces_its_cached_copy_and_older_reads_are_refused() -> None:
    cache = DeviceCache(30, clock=lambda: 0.0)
    device: Any = type("D", (), {"id": 7})()
    cache.put_device("hash", device)
    pending: Any = type("R", (), {"id": 1, "device_id": 7, "status": "pending"})()
    other: Any = type("R", (), {"id": 2, "device_id": 7, "status": "failed"})()
    cache.put_rows(7, 1, [pending, other], cache.rows_epoch(7))
    epoch = cache.rows_epoch(7)  # a heartbeat starts reading rows from the store

    moved: Any = type("R", (), {"id": 1, "device_id": 7, "status": "downloading"})()
    cache.replace_row(moved)  # the status report commits meanwhile
    assert cache.rows(7, 1) == [moved, other]
    cache.put_rows(7, 1, [pending, other], epoch)
    assert cache.rows(7, 1) == [moved, other], "rows read before the report are not stored"

    cache.replace_row(type("R", (), {"id": 9, "device_id": 8, "status": "pending"})())
    assert cache.rows(8, 1) is None, "a device that is not cached stays uncached"


@pytest.mark.parametrize(
    ("running", "installed", "after"),
    [
        ("v1.0.0", "v1.1.0", "v1.1.0"),
        ("v1.2.0", "v1.1.0", "v1.2.0"),  # a higher version reported since stays
        ("v1.1.0", "v1.1.0", "v1.1.0"),
        (None, "v1.1.0", "v1.1.0"),
        ("not-a-version", "v1.1.0", "v1.1.0"),
    ],
)
def test_a_completed_update_raises_the_cached_version_by_the_store_rule(
    running: str | None, installed: str, after: str
) -> None:
    cache = DeviceCache(30, clock=lambda: 0.0)
    device = DeviceRecord(
        id=7,
        device_uuid=uuid.UUID(int=7),
        device_name="hall",
        registered_at=START,
        last_seen=START,
        current_version=running,
        timezone="UTC",
        status=DeviceStatus.ONLINE,
        metadata={},
        created_at=START,
        updated_at=START,
    )
    cache.put_device("hash", device)
    cache.raise_version(7, installed, START + timedelta(seconds=5))
    cached = cache.device("hash")
    assert cached is not None and cached.current_version == after
    assert raises_version(running, installed) == (after != running)


def test_update_catalog_notices_a_publish_made_by_another_server() -> None:
    now = [0.0]
    ids: list[int] = []
    records = {1: _update(1, "v1.1.0"), 2: _update(2, "v1.2.0", targets=(uuid.UUID(int=5),))}
    catalog = UpdateCatalog(
        lambda: list(ids), records.__getitem__, max_age_seconds=1, clock=lambda: now[0]
    )
    device = uuid.UUID(int=9)
    assert catalog.newest_targeting(device, (1, 0, 0)) is None
    ids.extend([1, 2])  # published elsewhere

    assert catalog.newest_targeting(device, (1, 0, 0)) is None, "not seen before the limit"
    now[0] = 1.0
    assert catalog.newest_targeting(device, (1, 0, 0)) is records[1], (
        "v1.2.0 targets another device"
    )
    assert catalog.newest_targeting(uuid.UUID(int=5), (1, 0, 0)) is records[2]
    assert catalog.newest_targeting(device, (1, 1, 0)) is None


def _update(update_id: int, version: str, targets: Any = None) -> Any:
    from javia_core.models import UpdateType
    from javia_updates.backends.base import UpdateRecord

    return UpdateRecord(
        id=update_id,
        version=version,
        created_at=START,
        update_type=UpdateType.INSTANT,
        description="",
        package_url="k",
        requires_system_packages=False,
        system_packages=(),
        app="assistant",
        key_id="0123456789abcdef",
        archive_size=1,
        archive_sha256="0" * 64,
        targets=targets,
    )


def test_a_report_in_flight_moves_the_row_for_the_next_heartbeat(
    service, register, clock, make_package
) -> None:  # type: ignore[no-untyped-def]
    _, token = register()
    service.start()
    try:
        authenticated = service.authenticate_device(token)
        service.heartbeat(authenticated, HeartbeatRequest(current_version="v1.0.0"), now=clock.now)
        update = service.publish_update(make_package("v1.1.0", "instant").upload(), now=clock.now)
        authenticated = service.authenticate_device(token)
        first = service.heartbeat(
            authenticated, HeartbeatRequest(current_version="v1.0.0"), now=clock.now
        )
        assert first.update is not None and first.update.status is UpdateStatus.PENDING
        service.report_status(
            authenticated, update.id, StatusReport(status=UpdateStatus.DOWNLOADING), now=clock.now
        )

        again = service.heartbeat(
            service.authenticate_device(token),
            HeartbeatRequest(current_version="v1.0.0"),
            now=clock.now,
        )
    finally:
        service.close()
    assert again.update is not None and again.update.status is UpdateStatus.DOWNLOADING


# --------------------------------------------------------------------------- fast path


def _fast_path(app: Any) -> HeartbeatFastPath:
    layer = app.middleware_stack
    while not isinstance(layer, HeartbeatFastPath):
        layer = layer.app
    return layer


def test_the_fast_path_answers_exactly_what_the_route_answers(
    client, admin, app, make_package
) -> None:  # type: ignore[no-untyped-def]
    body = client.post("/api/v1/devices/register", json={}, headers=admin).json()
    uid, headers = body["device_uuid"], bearer(body["device_token"])
    client.post(
        "/api/v1/updates/", files=make_package("v1.1.0", "scheduled").files(), headers=admin
    )
    beat = b'{"current_version": "v1.0.0", "metadata": {"room": "hall"}}'
    url = f"/api/v1/devices/{uid}/heartbeat"
    fast = _fast_path(app)
    # The first heartbeat reconciles (writes the device's row): the route answers it.
    client.post(url, content=beat, headers={**headers, "Content-Type": "application/json"})
    served = fast.served

    by_fast_path = client.post(
        url, content=beat, headers={**headers, "Content-Type": "application/json"}
    )
    assert fast.served == served + 1
    # A JSON media type the fast path leaves alone: the same request through FastAPI.
    by_route = client.post(
        url, content=beat, headers={**headers, "Content-Type": "application/vnd.javia+json"}
    )
    assert fast.served == served + 1

    assert by_fast_path.status_code == by_route.status_code == 200
    assert by_fast_path.content == by_route.content
    assert by_fast_path.headers["content-type"] == by_route.headers["content-type"]
    assert by_fast_path.json()["update"]["version"] == "v1.1.0"


def test_every_refusal_comes_from_the_route(client, admin, app, settings) -> None:  # type: ignore[no-untyped-def]
    first = client.post("/api/v1/devices/register", json={}, headers=admin).json()
    other = client.post("/api/v1/devices/register", json={}, headers=admin).json()
    uid, headers = first["device_uuid"], bearer(first["device_token"])
    url = f"/api/v1/devices/{uid}/heartbeat"
    assert client.post(url, json={}, headers=headers).status_code == 200
    served = _fast_path(app).served

    unknown = client.post(url, json={}, headers=bearer("not-a-token"))
    assert (unknown.status_code, unknown.headers["www-authenticate"]) == (401, "Bearer")
    assert client.post(url, json={}, headers=bearer(other["device_token"])).status_code == 403
    assert client.post(url, json={}, headers=admin).status_code == 403
    bad = client.post(url, json={"status": "exploded"}, headers=headers)
    assert bad.status_code == 422 and "status" in bad.json()["detail"]
    assert (
        client.post(
            url, content=b"{", headers={**headers, "Content-Type": "application/json"}
        ).status_code
        == 422
    )
    huge = b'{"metadata": {"x": "' + b"y" * settings.max_request_body_bytes + b'"}}'
    assert (
        client.post(
            url, content=huge, headers={**headers, "Content-Type": "application/json"}
        ).status_code
        == 413
    )
    statuses = [
        client.post(url, json={}, headers=headers).status_code
        for _ in range(settings.heartbeat_burst + 1)
    ]
    assert statuses[-1] == 429

    limited = client.post(url, json={}, headers=headers)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert _fast_path(app).served == served + settings.heartbeat_burst - 1
