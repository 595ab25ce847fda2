"""Two ``javia server`` replicas over one PostgreSQL database and one package directory.

Real processes throughout, as an operator would run them behind a load
balancer (docs/backends.md, "Several replicas"): ``javia db upgrade`` once,
then two servers on different ports with the same ``JAVIA_DATABASE_URL``,
admin key and data directory. Devices register on both; their real agents
talk only to the replica they registered with. An update published through
one replica must reach every device, including those on the other, and each
device must end with exactly one final status for it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from javia_core.models import FINAL_STATUSES, DeviceUpdateOut
from javia_devtools.demo import FleetDevice, LocalFleet, example_app_dir
from javia_devtools.server_process import ServerProcess, ServerStartError
from javia_updates.admin_client import AdminClient

pytestmark = pytest.mark.e2e

HEARTBEAT_SECONDS = 0.5
DEVICES = 4  # two per replica


@dataclass
class Replica:
    """One ``javia server`` process."""

    name: str
    server: ServerProcess

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    def log_text(self) -> str:
        log = self.server.log
        return log.read_text(errors="replace") if log.exists() else ""


def wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[LocalFleet]:
    """Signing key, devices and agents (the servers are the replicas below)."""
    fleet = LocalFleet(tmp_path, heartbeat_seconds=HEARTBEAT_SECONDS, health_seconds=1.0)
    fleet.generate_key()
    try:
        yield fleet
    finally:
        fleet.stop()  # agents and applications


@pytest.fixture
def replicas(fleet: LocalFleet, new_postgres_url, tmp_path: Path) -> Iterator[list[Replica]]:  # type: ignore[no-untyped-def]
    """Two running replicas sharing one PostgreSQL database and one data directory."""
    env = {
        "JAVIA_API_KEY": fleet.api_key,
        "JAVIA_DATABASE_URL": new_postgres_url(),
        "JAVIA_HEARTBEAT_INTERVAL_SECONDS": str(HEARTBEAT_SECONDS),
        "JAVIA_CONFIG": str(tmp_path / "no-server-config.toml"),
    }
    fleet.run_javia(["db", "upgrade"], env=env)  # migrations first, then the replicas
    shared = tmp_path / "shared-data"
    replica_env = {
        key: env[key] for key in ("JAVIA_DATABASE_URL", "JAVIA_HEARTBEAT_INTERVAL_SECONDS")
    }
    replica_env["JAVIA_ACCESS_LOG"] = "true"  # the test reads which replica served what
    started = [
        Replica(
            name,
            ServerProcess(
                shared,
                fleet.api_key,
                log_path=tmp_path / f"{name}.log",
                env=replica_env,
                config_path=tmp_path / "no-server-config.toml",
            ),
        )
        for name in ("a", "b")
    ]
    try:
        for replica in started:
            try:
                replica.server.start(timeout=30)
            except ServerStartError as error:
                raise AssertionError(f"replica {replica.name} did not answer: {error}") from None
        yield started
    finally:
        for replica in started:
            replica.server.stop(timeout=15)


def test_an_update_published_on_one_replica_installs_on_every_device_of_both_exactly_once(
    fleet: LocalFleet, replicas: list[Replica], tmp_path: Path
):
    app_dir = tmp_path / "pi_client"
    shutil.copytree(example_app_dir(), app_dir, ignore=shutil.ignore_patterns("__pycache__"))
    initial = fleet.build_package(app_dir, "v1.0.0", "scheduled", tmp_path / "packages" / "v1.0.0")
    # One fleet of devices per replica: `javia agent register --server` that replica,
    # and the agent talks to it alone. Both provision at once.
    homes = [
        LocalFleet(
            tmp_path,
            heartbeat_seconds=HEARTBEAT_SECONDS,
            health_seconds=1.0,
            api_key=fleet.api_key,
            port=replica.port,
            public_key_path=fleet.public_key_path,
        )
        for replica in replicas
    ]

    def provision(home: LocalFleet, replica: Replica) -> None:
        for index in range(DEVICES // 2):
            device = home.add_device(f"pi-{replica.name}{index}", "Europe/Berlin", initial)
            home.start_agent(device)

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(provision, homes, replicas))
        devices = [device for home in homes for device in home.devices]
        home_of = {
            d.device_uuid: r for h, r in zip(homes, replicas, strict=True) for d in h.devices
        }
        _check_every_device_updates_once(fleet, app_dir, replicas, devices, home_of)
    finally:
        for home in homes:
            home.stop()


def _check_every_device_updates_once(
    fleet: LocalFleet,
    app_dir: Path,
    replicas: list[Replica],
    devices: list[FleetDevice],
    home: dict[str, Replica],
) -> None:
    """Publish through replica a; every device, on either replica, installs it exactly once."""
    clients = {replica.name: AdminClient(replica.url, fleet.api_key) for replica in replicas}
    try:
        for client in clients.values():  # both replicas see all four, whoever registered them
            wait_for(
                lambda c=client: (
                    len(d := c.list_devices()) == DEVICES and all(x.last_seen for x in d)
                ),
                30,
                "every device's first heartbeat on both replicas",
            )

        fleet.port = replicas[0].port  # the operator publishes through replica a
        update = fleet.publish(app_dir, "v1.1.0", "instant")

        def all_completed() -> list[DeviceUpdateOut] | None:
            rows = clients["b"].update_devices(update.id)
            done = len(rows) == DEVICES and all(row.status == "completed" for row in rows)
            return rows if done else None

        rows = wait_for(all_completed, 90, "every device to report completed")

        assert sorted(str(row.device_uuid) for row in rows) == sorted(home)  # one row each
        assert clients["a"].update_devices(update.id) == rows  # both replicas agree
        finals = [
            entry
            for entry in _audit(replicas[0], fleet.api_key)
            if entry["action"] == "device_update.status"
            and entry["details"].get("update_id") == update.id
            and entry["details"].get("to") in {status.value for status in FINAL_STATUSES}
        ]
        assert sorted(entry["actor"] for entry in finals) == sorted(
            f"device:{uuid}" for uuid in home
        )
        for device in devices:
            status = wait_for(
                lambda d=device: (s := d.app_status()) and s["version"] == "v1.1.0" and s,
                15,
                f"{device.name}'s application on v1.1.0",
            )
            assert status and device.app_running()
            assert (device.install_root / "current").resolve().name == "v1.1.0"
        # Each device fetched the package and reported through its own replica,
        # so replica b served an update that was published through replica a.
        for device in devices:
            log = home[device.device_uuid].log_text()
            assert f"/api/v1/devices/{device.device_uuid}/updates/{update.id}/status" in log
            other = replicas[1] if home[device.device_uuid] is replicas[0] else replicas[0]
            assert f"/api/v1/devices/{device.device_uuid}/heartbeat" not in other.log_text()
        # (the whole archive, or the changed files' objects of a delta download)
        served = replicas[1].log_text()
        assert f"/api/v1/updates/{update.id}/download" in served or "/api/v1/objects/" in served
    finally:
        for client in clients.values():
            client.close()


def _audit(replica: Replica, api_key: str) -> list[dict]:
    """The audit log as the operator reads it: ``GET /api/v1/audit``, newest first."""
    response = httpx.get(
        f"{replica.url}/api/v1/audit", params={"limit": 1000}, headers={"X-API-Key": api_key}
    )
    response.raise_for_status()
    return list(response.json()["items"])
