"""A whole javia installation on one machine: server, devices, agents, apps.

``javia demo`` uses it to show the update loop end to end, and the end-to-end
tests use it to drive real processes: one ``javia server`` process on
127.0.0.1, and per device a directory with its own agent configuration,
keyring, install root (``releases/``, ``current``), state directory, one
``javia agent run`` process and the application process that agent starts.
Nothing here is simulated: every process is the real program a user runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from javia_core.errors import JaviaError
from javia_core.models import UpdateOut
from javia_devtools.server_process import ServerProcess, ServerStartError, free_port, javia_command
from javia_updates.admin_client import AdminClient

__all__ = [
    "LocalFleet",
    "FleetDevice",
    "FleetError",
    "example_app_dir",
    "javia_command",
    "free_port",
]


class FleetError(JaviaError):
    """A fleet process failed to start or a command it ran failed."""


def example_app_dir() -> Path:
    """The bundled example application (``VERSION`` + ``app.py``)."""
    return Path(str(resources.files("javia_devtools") / "example_app"))


@dataclass
class FleetDevice:
    """One simulated Raspberry Pi: its directories, agent process and identity."""

    name: str
    timezone: str
    root: Path
    device_uuid: str = ""
    agent: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        """The agent's TOML configuration."""
        return self.root / "etc" / "agent.toml"

    @property
    def install_root(self) -> Path:
        """``releases/`` and the ``current`` link."""
        return self.root / "opt" / "app"

    @property
    def state_dir(self) -> Path:
        """The agent's state, outbox, app pid file and logs."""
        return self.root / "var"

    @property
    def keyring_dir(self) -> Path:
        """Trusted public keys."""
        return self.root / "etc" / "keys"

    @property
    def app_status_file(self) -> Path:
        """Where the example app writes ``{"version", "pid", "started_at"}``."""
        return self.root / "app-status.json"

    @property
    def agent_log(self) -> Path:
        """The agent process's output."""
        return self.root / "agent.log"

    def app_status(self) -> dict[str, Any] | None:
        """What the running application says about itself, or None."""
        try:
            status = json.loads(self.app_status_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return status if isinstance(status, dict) else None

    def app_running(self) -> bool:
        """Whether the application process recorded in the status file is alive."""
        status = self.app_status()
        if not status:
            return False
        try:
            os.kill(int(status["pid"]), 0)
        except (OSError, ValueError, KeyError):
            return False
        return True


@dataclass
class LocalFleet:
    """Server + devices on loopback, each a real process.

    Args:
        root: an empty working directory for everything (data, keys, devices).
        heartbeat_seconds: the server's heartbeat interval (300 in production).
        health_seconds: how long a new release must stay up to count as good.
        command: argv prefix of the ``javia`` CLI that every command and agent
            runs with (default: this installation's, :func:`javia_command`).
        server_command: argv that starts the server, before ``--host``,
            ``--port`` and ``--data-dir`` (default ``command`` + ``server``).
        env: more environment variables for every process started, e.g. the
            ``PYTHONPATH`` of another checkout's sources (the benchmarks'
            side-by-side runs of a previous commit).
    """

    root: Path
    heartbeat_seconds: float = 1.0
    health_seconds: float = 1.0
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    port: int = field(default_factory=free_port)
    devices: list[FleetDevice] = field(default_factory=list)
    server_process: ServerProcess | None = None
    private_key_path: Path | None = None
    public_key_path: Path | None = None
    command: Sequence[str] = field(default_factory=javia_command)
    server_command: Sequence[str] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> AdminClient:
        """An admin client for the fleet's server."""
        return AdminClient(self.url, self.api_key)

    # Processes -----------------------------------------------------------
    def _env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("JAVIA_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        env.update(extra or {})
        return env

    def run_javia(
        self, args: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 60
    ) -> str:
        """Run one ``javia`` command to completion; returns stdout.

        Raises:
            FleetError: it exited non-zero (the message holds its stderr).
        """
        result = subprocess.run(
            [*self.command, *args],
            env=self._env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise FleetError(
                f"'javia {' '.join(args[:2])}' exited {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )
        return result.stdout

    @property
    def server(self) -> subprocess.Popen[bytes] | None:
        """The running server's process (None before :meth:`start_server`)."""
        return None if self.server_process is None else self.server_process.process

    def start_server(self, *, extra_env: dict[str, str] | None = None, timeout: float = 20) -> None:
        """Start ``javia server`` and wait until it answers its health check.

        Raises:
            FleetError: it exited or did not answer within ``timeout`` seconds.
        """
        self.server_process = ServerProcess(
            self.root / "server",
            self.api_key,
            log_path=self.root / "server.log",
            port=self.port,
            env={
                **self.env,
                "JAVIA_HEARTBEAT_INTERVAL_SECONDS": str(self.heartbeat_seconds),
                **(extra_env or {}),
            },
            command=(
                [*self.command, "server"] if self.server_command is None else self.server_command
            ),
            config_path=self.root / "no-server-config.toml",
        )
        try:
            self.server_process.start(timeout=timeout)
        except ServerStartError as error:
            raise FleetError(str(error)) from None

    def restart_server(self, *, extra_env: dict[str, str] | None = None) -> None:
        """Stop the server and start it again on the same port and data, with new settings."""
        self._stop_server()
        self.start_server(extra_env=extra_env)

    def _stop_server(self) -> None:
        if self.server_process is not None:
            self.server_process.stop()

    @staticmethod
    def _tail(path: Path, size: int = 1500) -> str:
        try:
            return path.read_text(errors="replace")[-size:]
        except OSError:
            return "(no log)"

    def generate_key(self) -> None:
        """Create the operator's signing key pair under ``root/operator``."""
        from javia_updates.keys import generate_keypair

        paths = generate_keypair(self.root / "operator", name="javia-signing")
        self.private_key_path, self.public_key_path = paths.private_path, paths.public_path

    def agent_env(self, device: FleetDevice) -> dict[str, str]:
        """Environment for that device's agent commands (fast intervals for the demo)."""
        return {
            "JAVIA_AGENT_HEALTH_SECONDS": str(self.health_seconds),
            "JAVIA_AGENT_HEARTBEAT_JITTER": "0.1",
            "JAVIA_AGENT_ACTIVITY_POLL_SECONDS": "0.5",
            "JAVIA_AGENT_STOP_TIMEOUT_SECONDS": "5",
        }

    def add_device(
        self, name: str, timezone: str, initial_package: Path | None = None
    ) -> FleetDevice:
        """Register a device with ``javia agent register`` and provision its first release.

        The first release is installed from ``initial_package`` with
        ``javia agent install`` (the same code path as a network update), which
        also starts the application.
        """
        device = FleetDevice(name=name, timezone=timezone, root=self.root / "devices" / name)
        device.keyring_dir.mkdir(parents=True, exist_ok=True)
        if self.public_key_path is not None:
            shutil.copy2(self.public_key_path, device.keyring_dir / self.public_key_path.name)
        device.config_path.parent.mkdir(parents=True, exist_ok=True)
        app_env = json.dumps({"JAVIA_APP_STATUS_FILE": str(device.app_status_file)})
        self.run_javia(
            [
                "agent",
                "register",
                "--server",
                self.url,
                "--api-key",
                self.api_key,
                "--name",
                name,
                "--timezone",
                timezone,
                "--config",
                str(device.config_path),
                "--install-root",
                str(device.install_root),
                "--state-dir",
                str(device.state_dir),
                "--keyring",
                str(device.keyring_dir),
                "--token-file",
                str(device.root / "etc" / "device-token"),
                "--service-mode",
                "command",
                "--start-command",
                json.dumps([sys.executable, "app.py"]),
                "--app-env",
                app_env,
                "--heartbeat-interval",
                str(self.heartbeat_seconds),
            ],
            env=self.agent_env(device),
        )
        device.device_uuid = self._read_uuid(device)
        if initial_package is not None:
            self.run_javia(
                ["agent", "install", str(initial_package), "--config", str(device.config_path)],
                env=self.agent_env(device),
            )
        self.devices.append(device)
        return device

    @staticmethod
    def _read_uuid(device: FleetDevice) -> str:
        import tomllib

        config = tomllib.loads(device.config_path.read_text(encoding="utf-8"))
        return str(config["device_uuid"])

    def start_agent(self, device: FleetDevice) -> None:
        """Start ``javia agent run`` for ``device`` in the background."""
        log = device.agent_log.open("ab")
        device.agent = subprocess.Popen(
            [*self.command, "agent", "run", "--config", str(device.config_path)],
            env=self._env(self.agent_env(device)),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def build_package(self, app_dir: Path, version: str, update_type: str, output: Path) -> Path:
        """``javia publish --output``: a signed package directory on disk."""
        self.run_javia(
            [
                "publish",
                str(app_dir),
                "--version",
                version,
                "--type",
                update_type,
                "--description",
                f"example release {version}",
                "--key",
                str(self.private_key_path),
                "--output",
                str(output),
            ]
        )
        return output

    def publish(
        self,
        app_dir: Path,
        version: str,
        update_type: str,
        description: str = "",
        options: Sequence[str] = (),
    ) -> UpdateOut:
        """``javia publish`` to the fleet's server; returns the published update.

        ``options`` are more ``javia publish`` options, e.g. ``("--phases", "1,100")``.
        """
        out = self.run_javia(
            [
                "publish",
                str(app_dir),
                "--version",
                version,
                "--type",
                update_type,
                "--description",
                description or f"example release {version}",
                "--key",
                str(self.private_key_path),
                "--server",
                self.url,
                "--api-key",
                self.api_key,
                "--yes",
                "--json",
                *options,
            ]
        )
        return UpdateOut.model_validate_json(out)

    def stop(self) -> None:
        """Stop every agent, every application and the server (only our own processes)."""
        for device in self.devices:
            if device.agent is not None and device.agent.poll() is None:
                device.agent.send_signal(signal.SIGTERM)
        for device in self.devices:
            if device.agent is not None:
                try:
                    device.agent.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    device.agent.kill()
                    device.agent.wait()
            self._stop_app(device)
        self._stop_server()

    @staticmethod
    def _stop_app(device: FleetDevice) -> None:
        from javia_agent.services import CommandService

        service = CommandService(
            [sys.executable, "app.py"],
            current_link=device.install_root / "current",
            pid_file=device.state_dir / "app.pid",
            log_file=device.state_dir / "app.log",
            activity_file=device.state_dir / "activity.json",
            stop_timeout_seconds=5,
        )
        with contextlib.suppress(JaviaError):
            service.stop()
