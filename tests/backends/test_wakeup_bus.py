"""The wake-up bus: every server process receives every notice, on SQLite and PostgreSQL.

Bus level: two buses on one database play two processes. Process level: two
real server processes on one database (an SQLite file, as ``--workers`` runs
them; a PostgreSQL database, as two replicas); the device holds its wake-up
request on A with the agent's own client, the operator publishes through B,
and the wake-up arrives.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from javia_agent.client import DeviceClient
from javia_core.wakeup import WakeupReason
from javia_devtools.server_process import SERVER_MODULE_COMMAND, ServerProcess
from javia_updates.backends import create_backend
from javia_updates.backends.wakeup_bus import (
    MAX_LISTED_DEVICES,
    PostgresWakeupBus,
    SQLiteWakeupBus,
    WakeupNotice,
    wakeup_bus_for,
)
from javia_updates.settings import ServerSettings
from shared_helpers import build_package

from .conftest import API_KEY, DATABASE_KINDS

ADMIN = {"X-API-Key": API_KEY}


@pytest.fixture(params=DATABASE_KINDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return str(request.getfixturevalue("new_postgres_url")())


class Inbox:
    """What one bus delivered; ``wait_for`` blocks until ``count`` notices arrived."""

    def __init__(self) -> None:
        self.notices: list[WakeupNotice] = []
        self._arrived = threading.Condition()

    def __call__(self, notice: WakeupNotice) -> None:
        with self._arrived:
            self.notices.append(notice)
            self._arrived.notify_all()

    def wait_for(self, count: int, seconds: float = 10.0) -> list[WakeupNotice]:
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.notices) >= count, seconds), self.notices
            return list(self.notices)


def test_notices_round_trip_and_large_or_broken_ones_degrade_safely() -> None:
    devices = frozenset(uuid.uuid4() for _ in range(3))
    notice = WakeupNotice.for_devices(WakeupReason.ROLLOUT, devices, spread_seconds=30)
    assert WakeupNotice.decode(notice.encode()) == notice
    assert (
        WakeupNotice.for_devices(
            WakeupReason.UPDATE, (uuid.uuid4() for _ in range(MAX_LISTED_DEVICES + 1))
        ).devices
        is None
    )
    many = WakeupNotice.for_devices(WakeupReason.UPDATE, [uuid.uuid4() for _ in range(400)])
    chunks = many.chunks(150)
    assert len(chunks) == 3 and all(len(c) < 8000 for c in chunks)
    assert frozenset().union(*(WakeupNotice.decode(c).devices for c in chunks)) == many.devices  # type: ignore[union-attr]
    for junk in ("", "[]", '{"r": "reboot", "d": null}', '{"r": "update", "d": ["not-a-uuid"]}'):
        assert WakeupNotice.decode(junk) is None


def test_every_process_receives_every_notice_once(database_url: str, tmp_path: Path) -> None:
    settings = ServerSettings(
        api_key=API_KEY, data_dir=tmp_path / "data", database_url=database_url
    )
    backend_a, backend_b = create_backend(settings), create_backend(settings)
    backend_a.prepare()
    backend_b.prepare()
    bus_a, bus_b = wakeup_bus_for(backend_a.store), wakeup_bus_for(backend_b.store)
    expected = PostgresWakeupBus if database_url.startswith("postgresql") else SQLiteWakeupBus
    assert isinstance(bus_a, expected) and isinstance(bus_b, expected)
    inbox_a, inbox_b = Inbox(), Inbox()
    try:
        bus_a.start(inbox_a)
        bus_b.start(inbox_b)
        for bus in (bus_a, bus_b):
            if isinstance(bus, PostgresWakeupBus):
                assert bus.listening.wait(10)
        device = uuid.uuid4()
        bus_b.publish(WakeupNotice.for_devices(WakeupReason.TOKEN, [device]))
        bus_a.publish(WakeupNotice.for_devices(WakeupReason.UPDATE, None, spread_seconds=120))
        assert [n.reason for n in inbox_a.wait_for(2)] in (
            [WakeupReason.TOKEN, WakeupReason.UPDATE],
            [WakeupReason.UPDATE, WakeupReason.TOKEN],
        )
        received_b = inbox_b.wait_for(2)
        assert {(n.reason, n.devices, n.spread_seconds) for n in received_b} == {
            (WakeupReason.TOKEN, frozenset({device}), 0.0),
            (WakeupReason.UPDATE, None, 120.0),
        }
        time.sleep(0.6)  # two poll periods: nothing is delivered twice
        assert len(inbox_a.notices) == len(inbox_b.notices) == 2
    finally:
        bus_a.close()
        bus_b.close()
        backend_a.close()
        backend_b.close()


# -- two real server processes on one database ---------------------------------------------


@pytest.fixture
def two_servers(database_url: str, tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Servers A and B on one database and one data directory, started one after the other."""
    servers = [
        ServerProcess(
            tmp_path / "data",
            API_KEY,
            log_path=tmp_path / f"server-{name}.log",
            command=SERVER_MODULE_COMMAND,
            config_path=tmp_path / "absent.toml",
            env={"JAVIA_DATABASE_URL": database_url},
        )
        for name in "ab"
    ]
    try:
        for server in servers:
            server.start()
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


def wait_until(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_publish_through_one_server_wakes_the_device_held_by_the_other(
    two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_servers
    with (
        httpx.Client(base_url=b.url, timeout=30) as http_b,
        httpx.Client(base_url=a.url, timeout=30) as http_a,
    ):
        registered = http_b.post("/api/v1/devices/register", json={}, headers=ADMIN).json()
        uid, token = registered["device_uuid"], registered["device_token"]
        device = DeviceClient(
            a.url, device_uuid=uid, token=token, timeout_seconds=60, request_deadline_seconds=60
        )
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(device.wait_for_wakeup, 30)
            wait_until(lambda: http_a.get("/api/v1/wakeups", headers=ADMIN).json()["held"] == 1)
            package = build_package("v1.1.0", "instant", signing_key=Ed25519PrivateKey.generate())
            published = http_b.post("/api/v1/updates/", files=package.files(), headers=ADMIN)
            assert published.status_code == 201, published.text
            sent = time.monotonic()
            answer = waiting.result(timeout=10)
            arrived = time.monotonic() - sent
        device.close()
        # The publish's notice, or its rollout's (opened at publish), whichever came first.
        assert answer.reason in (WakeupReason.UPDATE, WakeupReason.ROLLOUT) and answer.heartbeat
        assert arrived < 2.0
        assert http_a.get("/api/v1/wakeups", headers=ADMIN).json()["notices"] >= 1
        # The woken device heartbeats to A at once: A's catalog already holds B's update.
        beat = http_a.post(
            f"/api/v1/devices/{uid}/heartbeat",
            json={"current_version": "v1.0.0"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert beat.json()["update"]["version"] == "v1.1.0"
