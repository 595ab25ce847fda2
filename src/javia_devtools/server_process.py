"""One real ``javia server`` process on 127.0.0.1, for the demo, the simulator, benchmarks and tests.

:class:`ServerProcess` starts the server on a free loopback port with its own
data directory and admin API key, waits until ``/api/v1/health`` answers, and
stops it (SIGTERM, then SIGKILL after 10 s) on :meth:`ServerProcess.stop` or
on leaving its ``with`` block. The process reads no ``JAVIA_*`` variable or
settings file of the machine: only the ones given here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from javia_core.errors import JaviaError

__all__ = [
    "SERVER_MODULE_COMMAND",
    "ServerProcess",
    "ServerStartError",
    "free_port",
    "javia_command",
]

#: argv that runs the server without the command line (``python -m javia_updates.server``).
SERVER_MODULE_COMMAND = (sys.executable, "-m", "javia_updates.server")

_HEALTH_PATH = "/api/v1/health"
_POLL_SECONDS = 0.1
_STOP_SECONDS = 10.0


class ServerStartError(JaviaError):
    """The server exited or did not answer its health check in time (the message holds its log)."""


def javia_command() -> list[str]:
    """argv prefix that runs this installation's ``javia`` CLI."""
    return [sys.executable, "-m", "javia_cli.main"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _log_tail(path: Path, size: int) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return "(no log)"


@dataclass
class ServerProcess:
    """A ``javia server`` process on ``127.0.0.1:port``.

    Example::

        with ServerProcess(tmp_path / "data", api_key="k") as server:
            httpx.get(f"{server.url}/api/v1/health")

    Attributes:
        data_dir: the server's database and packages (created if missing).
        api_key: the admin API key (``JAVIA_API_KEY``).
        log_path: where stdout and stderr go (appended; default
            ``<data_dir>/../server.log``).
        port: TCP port on 127.0.0.1 (default: a free one).
        env: more environment variables for the server (``JAVIA_*`` settings);
            ``JAVIA_WORKERS`` is 1 unless given here (``javia server --workers``).
        command: argv that starts the server, before ``--host``, ``--port``
            and ``--data-dir`` (default ``javia server``).
        config_path: the settings file it reads (default: one that does not
            exist, so the machine's settings never leak in).
    """

    data_dir: Path
    api_key: str
    log_path: Path | None = None
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    command: Sequence[str] = field(default_factory=lambda: [*javia_command(), "server"])
    config_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        """The server's base URL, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        """The log file (``log_path``, or ``server.log`` next to the data directory)."""
        return self.log_path if self.log_path is not None else self.data_dir.parent / "server.log"

    def environment(self) -> dict[str, str]:
        """The server's environment: this one without ``JAVIA_*``, plus the key, settings and ``env``."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("JAVIA_")}
        env["PYTHONUNBUFFERED"] = "1"
        env["JAVIA_API_KEY"] = self.api_key
        config = self.config_path or self.data_dir.parent / "no-server-config.toml"
        env["JAVIA_CONFIG"] = str(config)
        env["JAVIA_WORKERS"] = "1"  # one process unless ``env`` asks for workers
        env.update(self.env)
        return env

    def start(self, *, timeout: float = 30.0) -> None:
        """Start the server and wait until its health check answers 200.

        Args:
            timeout: seconds to wait for the health check.

        Raises:
            ServerStartError: it exited, or did not answer within ``timeout``;
                the server is stopped and the message holds its log's tail.
        """
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"the server on port {self.port} is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [*self.command, "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--data-dir", str(self.data_dir)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            self.wait_until_healthy(timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def wait_until_healthy(self, *, timeout: float = 30.0) -> None:
        """Poll ``/api/v1/health`` until it answers 200 (start-up, not policy).

        Raises:
            ServerStartError: the process exited or did not answer within ``timeout`` seconds.
        """
        process = self.process
        if process is None:
            raise RuntimeError("the server was not started")
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise ServerStartError(
                    f"server exited {process.returncode}: {_log_tail(self.log, 1500)}"
                )
            try:
                if httpx.get(f"{self.url}{_HEALTH_PATH}", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"server did not answer within {timeout} s: {_log_tail(self.log, 1500)}"
                )
            time.sleep(_POLL_SECONDS)

    def stop(self, *, timeout: float = _STOP_SECONDS) -> None:
        """SIGTERM the server, then SIGKILL after ``timeout`` seconds (nothing if not running)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
