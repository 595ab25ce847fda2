"""Readiness and watchdog pings over the sd_notify protocol, received by a real socket.

The test plays systemd: it binds a unix datagram socket, hands its path to the
agent as ``NOTIFY_SOCKET`` and reads what arrives.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from javia_agent.config import AgentConfig, write_config, write_token_file
from javia_agent.systemd import SystemdNotifier

from .helpers import Signer


class FakeSystemd:
    """A bound ``AF_UNIX``/``SOCK_DGRAM`` socket collecting notify messages."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self.sock.bind(bind_to)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def receive(self, until: str, timeout: float = 10.0, count: int = 1) -> list[str]:
        """Collect messages until ``count`` of them contain ``until``; return all so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(until in message for message in self.messages) >= count:
                return self.messages
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        raise AssertionError(f"no {until!r} within {timeout} s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd() -> Iterator[FakeSystemd]:
    # A short directory: unix socket paths are limited to 107 bytes.
    directory = tempfile.mkdtemp(prefix="jn-")
    fake = FakeSystemd(os.path.join(directory, "notify"))
    try:
        yield fake
    finally:
        fake.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_ready_status_and_stopping_reach_systemd(systemd: FakeSystemd) -> None:
    notifier = SystemdNotifier(systemd.address)
    assert notifier.enabled
    assert notifier.ready("running v1.0.0")
    assert notifier.status("installing v1.1.0\nsecond line")
    assert notifier.stopping()
    systemd.receive("STOPPING=1")
    assert systemd.messages == [
        "READY=1\nSTATUS=running v1.0.0",
        "STATUS=installing v1.1.0 second line",  # one line per field, always
        "STOPPING=1\nSTATUS=stopping",
    ]


def test_the_abstract_namespace_is_supported() -> None:
    name = f"@javia-test-{os.getpid()}-{time.monotonic_ns()}"
    fake = FakeSystemd(name)
    try:
        assert SystemdNotifier(name).ready()
        assert fake.receive("READY=1") == ["READY=1"]
    finally:
        fake.close()


def test_watchdog_pings_are_spaced_by_a_quarter_of_the_interval(systemd: FakeSystemd) -> None:
    now = [100.0]
    notifier = SystemdNotifier(systemd.address, watchdog_seconds=20, monotonic=lambda: now[0])
    sent = []
    for _ in range(12):
        sent.append(notifier.watchdog())
        now[0] += 1.0
    assert sent == [True, False, False, False, False, True] + [False] * 4 + [True, False]
    systemd.receive("WATCHDOG=1")
    time.sleep(0.1)
    assert notifier.ping_interval_seconds == 5


def test_without_systemd_nothing_is_sent_and_nothing_fails() -> None:
    notifier = SystemdNotifier.from_environment({})
    assert not notifier.enabled
    assert not notifier.ready() and not notifier.watchdog() and not notifier.stopping()
    with notifier.keepalive():
        pass


def test_a_watchdog_meant_for_another_process_is_ignored(systemd: FakeSystemd) -> None:
    env = {"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "2000000"}
    assert SystemdNotifier.from_environment(env).watchdog_seconds == 2.0
    mine = SystemdNotifier.from_environment({**env, "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_seconds == 2.0
    other = SystemdNotifier.from_environment({**env, "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_seconds is None and not other.watchdog()


def test_keepalive_pings_while_a_blocking_step_runs(systemd: FakeSystemd) -> None:
    notifier = SystemdNotifier(systemd.address, watchdog_seconds=0.2)
    with notifier.keepalive():
        time.sleep(0.4)  # a blocking call such as pip install; pings every 0.05 s
    systemd.receive("WATCHDOG=1", count=4, timeout=2)


def test_a_vanished_socket_is_logged_not_raised(tmp_path: Path) -> None:
    assert not SystemdNotifier(str(tmp_path / "gone")).ready()


def test_the_agent_process_reports_ready_pings_the_watchdog_and_says_stopping(
    tmp_path: Path, signer: Signer, systemd: FakeSystemd
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens: the server is unreachable
    config = AgentConfig(
        server_url=f"http://127.0.0.1:{port}",
        device_uuid="00000000-0000-0000-0000-0000000000f1",
        token_file=tmp_path / "etc" / "token",
        install_root=tmp_path / "opt" / "app",
        state_dir=tmp_path / "var",
        keyring_dir=signer.keyring_dir,
        service_mode="command",
        start_command=[sys.executable, "app.py"],
    )
    config_path = tmp_path / "etc" / "agent.toml"
    write_config(config, config_path)
    write_token_file(config.token_file, "device-token")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("JAVIA_", "WATCHDOG_", "NOTIFY_"))
    }
    env.update({"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "400000"})
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "javia_cli.main",
            "agent",
            "run",
            "--config",
            str(config_path),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        systemd.receive("READY=1", timeout=30)
        # WatchdogSec=0.4 s: a ping every 0.1 s, also while backing off from the server.
        systemd.receive("WATCHDOG=1", count=3, timeout=3)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=15) == 0
        systemd.receive("STOPPING=1")
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    ready = next(message for message in systemd.messages if "READY=1" in message)
    assert "STATUS=starting" in ready
    assert any("server unreachable" in message for message in systemd.messages)
