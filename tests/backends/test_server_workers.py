"""``javia server --workers 2``: real worker processes on SQLite and PostgreSQL.

One server, two worker processes sharing its port; every request here opens
a new connection, so the kernel hands each to whichever worker accepts it.
Whatever worker answers: a revoked token is refused at the next request, a
final report is never followed by the same offer, and concurrent writes
through both lose nothing. SIGTERM stops every worker; a worker killed is
replaced; workers whose supervisor is killed outright stop too.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.fleet import wait_for
from javia_devtools.server_process import ServerProcess
from javia_updates.backends.cache import CATALOG_MAX_AGE_SECONDS
from shared_helpers import bearer, build_package

from .conftest import API_KEY, DATABASE_KINDS

pytestmark = pytest.mark.e2e

ADMIN = {"X-API-Key": API_KEY}
#: Requests sent for each check: each on its own connection, to either worker.
TRIES = 12


def worker_pids(supervisor: int) -> set[int]:
    """The worker processes (``multiprocessing`` spawns) whose parent is ``supervisor``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == supervisor and b"spawn_main" in command:
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start_workers(data_dir: Path, env: dict[str, str] | None = None) -> ServerProcess:
    server = ServerProcess(
        data_dir,
        API_KEY,
        log_path=data_dir.parent / "server.log",
        env={
            "JAVIA_WORKERS": "2",
            "JAVIA_DEVICE_CACHE_SECONDS": "3600",
            "JAVIA_HEARTBEAT_BURST": "0",  # each worker counts its own: off here
            **(env or {}),
        },
    )
    server.start(timeout=90)
    assert server.process is not None
    wait_for(lambda: len(worker_pids(server.process.pid)) == 2, 30, "two workers")  # type: ignore[union-attr]
    return server


@pytest.fixture(scope="module", params=DATABASE_KINDS)
def server(request, tmp_path_factory) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    """Two workers over a SQLite file, or over a PostgreSQL database."""
    env = {}
    if request.param == "postgresql":
        cluster = request.getfixturevalue("postgres_cluster")
        env["JAVIA_DATABASE_URL"] = str(cluster.create_database(f"javia_{uuid.uuid4().hex[:16]}"))
    started = start_workers(tmp_path_factory.mktemp("workers") / "data", env)
    try:
        yield started
    finally:
        started.stop(timeout=30)


def post(server: ServerProcess, path: str, **kwargs: Any) -> httpx.Response:
    """One request on a new connection (either worker may take it)."""
    return httpx.post(f"{server.url}/api/v1{path}", timeout=30, **kwargs)


def register(server: ServerProcess) -> tuple[str, str]:
    response = post(server, "/devices/register", json={}, headers=ADMIN)
    assert response.status_code == 201, response.text
    body = response.json()
    return body["device_uuid"], body["device_token"]


def heartbeat(
    server: ServerProcess, uid: str, token: str, version: str = "v1.0.0"
) -> httpx.Response:
    return post(
        server,
        f"/devices/{uid}/heartbeat",
        json={"current_version": version},
        headers=bearer(token),
    )


def test_a_revoked_token_is_refused_at_the_next_request_whichever_worker_answers(server):
    uid, token = register(server)
    for _ in range(TRIES):  # both workers cache the device
        assert heartbeat(server, uid, token).status_code == 200
    assert post(server, f"/devices/{uid}/revoke", headers=ADMIN).status_code == 200
    assert [heartbeat(server, uid, token).status_code for _ in range(TRIES)] == [401] * TRIES


def test_a_failed_report_is_never_followed_by_the_same_offer(
    server, signing_key: Ed25519PrivateKey
):
    version = f"v1.{int(time.time() * 1000) % 100_000}.0"  # a version new to this server
    package = build_package(version, "instant", signing_key=signing_key)
    published = post(server, "/updates/", files=package.files(), headers=ADMIN)
    assert published.status_code == 201, published.text
    update_id = published.json()["id"]
    uid, token = register(server)
    # The worker that did not publish learns of the update within its catalog's
    # age (1 s) or the cross-process notice: a heartbeat landing there first may
    # not be offered it yet.
    wait_for(
        lambda: heartbeat(server, uid, token).json()["update"] is not None,
        10,
        "the new update to be offered by the worker that answers",
    )
    time.sleep(CATALOG_MAX_AGE_SECONDS)  # both workers' catalogs hold it now
    for _ in range(TRIES):  # both workers cache the device and its pending row
        update = heartbeat(server, uid, token).json()["update"]
        assert update is not None and update["version"] == version
    for status in ("downloading", "installing", "failed"):
        reported = post(
            server,
            f"/devices/{uid}/updates/{update_id}/status",
            json={"status": status, "error_message": "health check failed"},
            headers=bearer(token),
        )
        assert reported.status_code == 200, reported.text
    answers = [heartbeat(server, uid, token).json()["update"] for _ in range(TRIES)]
    assert answers == [None] * TRIES


def test_concurrent_writes_through_both_workers_lose_nothing(server):
    devices = 16

    def one_device(_: int) -> tuple[str, list[int]]:
        uid, token = register(server)
        codes = []
        for beat in range(3):
            response = post(
                server,
                f"/devices/{uid}/heartbeat",
                json={"current_version": "v1.0.0", "metadata": {"beat": beat}},
                headers=bearer(token),
            )
            codes.append(response.status_code)
        return uid, codes

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one_device, range(devices)))
    assert all(codes == [200, 200, 200] for _uid, codes in results)
    for uid, _codes in results:
        shown = httpx.get(f"{server.url}/api/v1/devices/{uid}", headers=ADMIN, timeout=30)
        assert shown.status_code == 200
        # The last heartbeat's soft state is written within heartbeat_flush_seconds.
        wait_for(
            lambda uid=uid: (
                httpx.get(f"{server.url}/api/v1/devices/{uid}", headers=ADMIN, timeout=30)
                .json()["metadata"]
                .get("beat")
                == 2
            ),
            10,
            f"the last heartbeat of {uid}",
        )


def test_a_killed_worker_is_replaced_and_workers_stop_when_their_supervisor_is_killed(
    tmp_path: Path,
):
    server = start_workers(tmp_path / "data")
    supervisor = server.process
    assert supervisor is not None
    first = worker_pids(supervisor.pid)
    workers = set(first)
    try:
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        replaced = wait_for(
            lambda: (pids := worker_pids(supervisor.pid)) - first and len(pids) == 2 and pids,
            60,
            "a replacement worker",
        )
        workers |= replaced
        assert victim not in replaced
        wait_for(
            lambda: all(
                httpx.get(f"{server.url}/api/v1/health", timeout=10).status_code == 200
                for _ in range(4)
            ),
            30,
            "answers after the replacement",
        )
        supervisor.kill()  # no chance to stop its workers itself
        supervisor.wait(timeout=10)
        wait_for(lambda: not any(alive(pid) for pid in replaced), 30, "orphaned workers to exit")
    finally:
        server.stop()
        for pid in workers:  # only if the test failed: the workers we started, by pid
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_sigterm_stops_every_worker(server):
    """Last in the module: stops the module's server (both backends)."""
    supervisor = server.process
    workers = worker_pids(supervisor.pid)
    assert len(workers) == 2
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=30) == 0
    wait_for(lambda: not any(alive(pid) for pid in workers), 10, "every worker to exit")
