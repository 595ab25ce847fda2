"""Real processes for the agent's crash and delivery tests: server, agent, application.

Built on :class:`javia_devtools.demo.LocalFleet` (a real ``javia server``
process, real ``javia agent register/install/run`` processes, the example
application started by the agent in its own session). Adds what these tests
need: per-start agent environment (the pause hook, a download rate limit),
packages built and published in-process (fast), and the checks of the
issue's convergence rules — the application runs a complete release,
``current`` resolves to a complete tree, the server holds exactly one final
status, and the new version was started once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from javia_agent.config import AgentConfig, write_config, write_token_file
from javia_agent.environments import ENV_LINK_NAME
from javia_agent.installer import PAUSE_AT_ENV
from javia_agent.state import AgentState, StateStore
from javia_agent.verification import extract_payload
from javia_core.manifest import Manifest
from javia_core.models import DeviceUpdateOut, UpdateType
from javia_core.versioning import Version
from javia_devtools.demo import FleetDevice, LocalFleet, example_app_dir, javia_command
from javia_updates.keys import load_private_key
from javia_updates.packaging import BuiltPackage, build_package

T = TypeVar("T")
FINAL = {"completed", "failed", "rolled_back"}


def wait_for(predicate: Callable[[], T], timeout: float, what: str, poll: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class CrashFleet(LocalFleet):
    """A :class:`LocalFleet` whose agents can be started with extra environment."""

    agent_overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    packages: dict[tuple[Any, ...], BuiltPackage] = field(default_factory=dict)

    def agent_env(self, device: FleetDevice) -> dict[str, str]:
        env = super().agent_env(device)
        env.update(self.agent_overrides.get(device.name, {}))
        return env

    def start_agent_with(self, device: FleetDevice, extra: dict[str, str] | None = None) -> None:
        """Start ``javia agent run`` for ``device`` with ``extra`` environment for this run only.

        An agent of this device still running (say, paused by an earlier start's
        environment) is stopped first: one agent per device, and none left behind.
        """
        self._stop_agent(device)
        log = device.agent_log.open("ab")
        device.agent = subprocess.Popen(
            [*javia_command(), "agent", "run", "--config", str(device.config_path)],
            env=self._env({**self.agent_env(device), **(extra or {})}),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def provision(self, name: str, first: BuiltPackage) -> FleetDevice:
        """A registered device with ``first`` installed and committed, its agent not started.

        Faster than :meth:`LocalFleet.add_device` (two CLI processes and a
        health window) for tests that provision a device each: the device is
        registered over the admin API, its configuration written as ``javia
        agent register`` writes it, and the first release unpacked with the
        agent's own verified extraction. The agent starts the application
        when it starts (command mode).
        """
        device = FleetDevice(name=name, timezone="UTC", root=self.root / "devices" / name)
        device.keyring_dir.mkdir(parents=True)
        assert self.public_key_path is not None
        shutil.copy2(self.public_key_path, device.keyring_dir / self.public_key_path.name)
        with self.client() as admin:
            registered = admin.register_device(device_name=name, timezone="UTC")
        device.device_uuid = str(registered.device_uuid)
        config = AgentConfig(
            server_url=self.url,
            device_uuid=device.device_uuid,
            device_name=name,
            token_file=device.root / "etc" / "device-token",
            install_root=device.install_root,
            state_dir=device.state_dir,
            keyring_dir=device.keyring_dir,
            service_mode="command",
            start_command=[sys.executable, "app.py"],
            app_env={"JAVIA_APP_STATUS_FILE": str(device.app_status_file)},
            heartbeat_interval_seconds=self.heartbeat_seconds,
        )
        write_config(config, device.config_path)
        write_token_file(config.token_file, registered.device_token)
        version = first.manifest.version
        releases = device.install_root / "releases"
        releases.mkdir(parents=True)
        extract_payload(first.payload_path, first.manifest, releases / version)
        os.symlink(Path("releases") / version, device.install_root / "current")
        StateStore(device.state_dir / "state.json").save(AgentState(current_version=version))
        self.devices.append(device)
        return device

    def kill_agent(self, device: FleetDevice) -> None:
        """SIGKILL the agent process: no handler runs, nothing is flushed or cleaned up."""
        assert device.agent is not None
        device.agent.send_signal(signal.SIGKILL)
        device.agent.wait(timeout=10)

    def _stop_agent(self, device: FleetDevice) -> None:
        """Stop that device's agent if it runs: SIGTERM, then SIGKILL after 10 s."""
        if device.agent is not None and device.agent.poll() is None:
            device.agent.send_signal(signal.SIGTERM)
            try:
                device.agent.wait(timeout=10)
            except subprocess.TimeoutExpired:
                device.agent.kill()
                device.agent.wait()

    def stop_device(self, device: FleetDevice) -> None:
        """Stop that device's agent (SIGTERM, then SIGKILL) and its application."""
        self._stop_agent(device)
        self._stop_app(device)
        if device in self.devices:
            self.devices.remove(device)

    def package(
        self,
        version: str,
        *,
        fail: bool = False,
        extra_files: dict[str, bytes] | None = None,
        update_type: UpdateType = UpdateType.INSTANT,
    ) -> BuiltPackage:
        """The example application as a signed package (built once per arguments)."""
        key = (version, fail, tuple(sorted((extra_files or {}).items())), update_type)
        if key in self.packages:
            return self.packages[key]
        name = f"{version}-{len(self.packages)}"
        source = self.root / "sources" / name
        shutil.copytree(example_app_dir(), source, ignore=shutil.ignore_patterns("__pycache__"))
        (source / "VERSION").write_text(version + "\n")
        if fail:
            (source / "FAIL").write_text("exits 1 at start, on purpose\n")
        for relative, data in (extra_files or {}).items():
            (source / relative).parent.mkdir(parents=True, exist_ok=True)
            (source / relative).write_bytes(data)
        assert self.private_key_path is not None
        built = build_package(
            source,
            self.root / "packages" / name,
            version=Version.parse(version),
            update_type=update_type,
            description=f"crash test release {version}",
            system_packages=(),
            private_key=load_private_key(self.private_key_path),
            now=datetime.now(UTC),
            app_name="assistant",
            write_version_file=False,
        )
        self.packages[key] = built
        return built

    def publish_to(self, device: FleetDevice, package: BuiltPackage) -> int:
        """Publish ``package`` as an instant update for ``device`` only; returns the update id."""
        with self.client() as admin:
            update = admin.publish(
                manifest_path=package.manifest_path,
                signature_path=package.signature_path,
                payload_path=package.payload_path,
                update_type="instant",
                targets=[device.device_uuid],
            )
        return int(update.id)

    def row(self, device: FleetDevice, update_id: int) -> DeviceUpdateOut | None:
        """The server's progress row for that device and update."""
        with self.client() as admin:
            for row in admin.update_devices(update_id):
                if str(row.device_uuid) == device.device_uuid:
                    return row
        return None

    def final_transitions(self, device: FleetDevice, update_id: int) -> list[str]:
        """Every status change of that row into a final status, from the server's audit log."""
        answer = httpx.get(
            f"{self.url}/api/v1/audit",
            params={"limit": 1000},
            headers={"X-API-Key": self.api_key},
            timeout=10,
        )
        answer.raise_for_status()
        return [
            entry["details"]["to"]
            for entry in answer.json()["items"]
            if entry["action"] == "device_update.status"
            and entry["actor"] == f"device:{device.device_uuid}"
            and entry["details"].get("update_id") == update_id
            and entry["details"].get("to") in FINAL
        ]


@contextmanager
def provisioned_v1(fleet: CrashFleet, test_name: str) -> Iterator[FleetDevice]:
    """A registered device with v1.0.0 installed, named after the test; the agent starts
    it when it starts. Afterwards its agent and application are stopped and its agent
    overrides forgotten."""
    name = re.sub(r"[^a-z0-9]+", "-", test_name.lower())[-40:].strip("-")
    device = fleet.provision(name, fleet.package("v1.0.0"))
    try:
        yield device
    finally:
        fleet.stop_device(device)
        fleet.agent_overrides.pop(device.name, None)


def app_alive(device: FleetDevice) -> bool:
    """Whether the process the application's status file names runs (a zombie does not)."""
    status = device.app_status()
    if not status:
        return False
    try:
        raw = Path(f"/proc/{int(status['pid'])}/stat").read_text()
    except (OSError, ValueError, KeyError):
        return False
    return raw[raw.rfind(")") + 2 :].split()[0] not in ("Z", "X")


def saved_state(device: FleetDevice) -> AgentState:
    """The device's ``state.json`` as the agent saved it."""
    return StateStore(device.state_dir / "state.json").load()


def starts_of(device: FleetDevice, version: str) -> int:
    """How many times the application was started on ``version`` (from its own log lines)."""
    try:
        log = (device.state_dir / "app.log").read_text(errors="replace")
    except FileNotFoundError:
        return 0
    return log.count(f"assistant {version} listening") + log.count(
        f"assistant {version}: failing on purpose"
    )


def current_version(device: FleetDevice) -> str | None:
    """The release ``current`` points to."""
    link = device.install_root / "current"
    return Path(link.readlink()).name if link.is_symlink() else None


def assert_complete_tree(release: Path, manifest: Manifest) -> None:
    """``release`` holds exactly the manifest's files, byte for byte (plus the agent's env link)."""
    listed = {entry.path: entry for entry in manifest.files}
    found = {
        str(path.relative_to(release))
        for path in release.rglob("*")
        if path.is_file() and ENV_LINK_NAME not in path.relative_to(release).parts
    }
    assert found == set(listed), (
        f"{release}: extra {found - set(listed)}, missing {set(listed) - found}"
    )
    for relative, entry in listed.items():
        data = (release / relative).read_bytes()
        assert len(data) == entry.size and hashlib.sha256(data).hexdigest() == entry.sha256, (
            relative
        )


def assert_converged(
    fleet: CrashFleet,
    device: FleetDevice,
    *,
    running: BuiltPackage,
    update_id: int,
    final: str,
    new_version: str,
) -> None:
    """The issue's convergence rules, after a crash and a restart.

    - the application runs a complete release: the expected one, from the
      directory ``current`` resolves to, and that tree matches its manifest;
    - the server holds exactly one final status for the update;
    - the state machine is idle with the right committed version;
    - no debris: no partial download, no staging directory;
    - the new version was started exactly once (no update installed twice).
    """
    version = running.manifest.version
    status = wait_for(
        lambda: (s := device.app_status()) and s["version"] == version and app_alive(device) and s,
        30,
        f"the application to run {version}",
    )
    current = (device.install_root / "current").resolve(strict=True)
    assert current == device.install_root / "releases" / version
    assert Path(status["release_dir"]).resolve() == current
    assert_complete_tree(current, running.manifest)

    row = wait_for(
        lambda: (r := fleet.row(device, update_id)) and r.status in FINAL and r,
        30,
        "a final status on the server",
    )
    assert row.status == final, row
    state = wait_for(
        lambda: (s := saved_state(device)).update is None and s, 30, "the agent to go idle"
    )
    assert state.current_version == version
    assert fleet.final_transitions(device, update_id) == [final]

    downloads = device.state_dir / "downloads"
    assert not downloads.exists() or not any(downloads.iterdir())
    assert all(
        not entry.name.startswith(".") for entry in (device.install_root / "releases").iterdir()
    )
    assert starts_of(device, new_version) == 1, (device.state_dir / "app.log").read_text()


def heartbeat_answer(device: FleetDevice) -> dict[str, Any] | None:
    """The last heartbeat answer the agent recorded (``heartbeat.json``)."""
    try:
        return json.loads((device.state_dir / "heartbeat.json").read_text())
    except (OSError, ValueError):
        return None


def pause_env(point: str) -> dict[str, str]:
    """Agent environment that stops it still at ``point`` (the installer's test hook)."""
    return {PAUSE_AT_ENV: point}
