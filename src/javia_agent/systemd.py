"""Readiness, status and watchdog pings to systemd (the ``sd_notify`` protocol).

When systemd runs the agent with ``Type=notify`` it passes ``NOTIFY_SOCKET``,
the path of a unix datagram socket (a leading ``@`` means the abstract
namespace), and with ``WatchdogSec=`` also ``WATCHDOG_USEC`` (and usually
``WATCHDOG_PID``). The agent sends newline-separated ``KEY=value`` lines to
that socket, one datagram per message (systemd's ``sd_notify(3)``):

- ``READY=1`` once it is up, so ``systemctl start`` returns;
- ``STATUS=...`` what it is doing, shown by ``systemctl status``;
- ``WATCHDOG=1`` at least every half ``WatchdogSec``: if the pings stop (the
  agent hangs) systemd kills and restarts it, and the state machine
  recovers the update it was working on;
- ``STOPPING=1`` when it begins to shut down.

Outside systemd (no ``NOTIFY_SOCKET``) every call does nothing. A failed send
is logged, never raised: the agent must keep working if systemd goes away.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

__all__ = ["SystemdNotifier"]

logger = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends ``sd_notify`` messages to systemd.

    Args:
        socket_path: ``NOTIFY_SOCKET``; ``None`` disables every message.
        watchdog_seconds: ``WATCHDOG_USEC`` in seconds; ``None`` when systemd
            runs no watchdog for this process.
        monotonic: the clock that spaces the watchdog pings.
    """

    def __init__(
        self,
        socket_path: str | None,
        *,
        watchdog_seconds: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.socket_path = socket_path or None
        self.watchdog_seconds = (
            watchdog_seconds if watchdog_seconds and watchdog_seconds > 0 else None
        )
        self._monotonic = monotonic
        self._last_ping: float | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """A notifier configured the way systemd started this process.

        ``WATCHDOG_USEC`` is honoured only when ``WATCHDOG_PID`` is absent or
        names this process (systemd's rule: the variables may have been
        inherited from a parent they were meant for).
        """
        env = os.environ if environ is None else environ
        watchdog: float | None = None
        pid = env.get("WATCHDOG_PID")
        usec = env.get("WATCHDOG_USEC", "")
        if usec.isdigit() and (not pid or pid == str(os.getpid())):
            watchdog = int(usec) / 1_000_000
        return cls(env.get("NOTIFY_SOCKET"), watchdog_seconds=watchdog)

    @property
    def enabled(self) -> bool:
        """Whether systemd listens (``NOTIFY_SOCKET`` was set)."""
        return self.socket_path is not None

    @property
    def ping_interval_seconds(self) -> float | None:
        """How often :meth:`watchdog` must be called at least: a quarter of ``WatchdogSec``."""
        return self.watchdog_seconds / 4 if self.watchdog_seconds else None

    def notify(self, *lines: str) -> bool:
        """Send one message of ``KEY=value`` lines.

        Returns:
            Whether it was sent (False when disabled or the socket refused it).
        """
        if self.socket_path is None or not lines:
            return False
        address = self.socket_path
        if address.startswith("@"):
            address = "\0" + address[1:]
        payload = "\n".join(line.replace("\n", " ") for line in lines).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(address)
                sock.sendall(payload)
        except OSError as error:
            logger.warning("cannot notify systemd at %s: %s", self.socket_path, error)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (and a status line)."""
        lines = ["READY=1"]
        if status:
            lines.append(f"STATUS={status}")
        return self.notify(*lines)

    def status(self, text: str) -> bool:
        """``STATUS=text``: what ``systemctl status`` shows."""
        return self.notify(f"STATUS={text}")

    def stopping(self) -> bool:
        """``STOPPING=1``: the agent is shutting down."""
        return self.notify("STOPPING=1", "STATUS=stopping")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``, at most once per :attr:`ping_interval_seconds` (cheap to call often).

        Returns:
            Whether a ping was sent now.
        """
        if self.socket_path is None or self.watchdog_seconds is None:
            return False
        now = self._monotonic()
        with self._lock:
            interval = self.ping_interval_seconds or 0.0
            if self._last_ping is not None and now - self._last_ping < interval:
                return False
            self._last_ping = now
        return self.notify("WATCHDOG=1")

    @contextmanager
    def keepalive(self) -> Iterator[None]:
        """Keep pinging the watchdog from a thread while a bounded blocking step runs.

        For steps that block in one call with their own time limit (``pip
        install``, apt, unpacking a large payload, stopping a service): the
        step's limit, not the watchdog, bounds them. Does nothing without a
        watchdog.
        """
        interval = self.ping_interval_seconds
        if self.socket_path is None or interval is None:
            yield
            return
        done = threading.Event()

        def ping() -> None:
            while not done.wait(interval):
                self.watchdog()

        thread = threading.Thread(target=ping, name="javia-watchdog", daemon=True)
        self.watchdog()
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=5)
