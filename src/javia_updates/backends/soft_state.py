"""Coalesced writes of heartbeat soft state (issue 7, "Benchmarks").

A heartbeat changes a device's *soft state*: ``last_seen``, the version and
status it reports, and its metadata. Every one of these is sent again by the
device at its next heartbeat, so none needs its own durable transaction
before the answer goes out. :class:`SoftStateWriter` keeps the newest soft
state per device in memory and writes all of it in one transaction every
``flush_seconds`` (a fraction of a second), from its own thread, and once
more when it is closed (server shutdown).

What a crash can lose: the soft state of heartbeats answered since the last
flush, at most ``flush_seconds`` of them; the devices send it again at their
next heartbeat. Status reports, registrations, publishes and everything
else a person would call data are written before their answer is sent, as
before (:mod:`javia_updates.service`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from javia_core.errors import JaviaError
from javia_updates.backends.base import HeartbeatWrite

__all__ = ["SoftStateWriter"]

logger = logging.getLogger(__name__)


class SoftStateWriter:
    """Buffers :class:`HeartbeatWrite` values per device and writes them in batches.

    Args:
        write: writes one batch in one transaction (``Store.record_heartbeats``).
        flush_seconds: the longest a heartbeat's soft state waits in memory, in
            seconds; 0 writes every heartbeat at once, in the caller's thread.

    Thread-safe: :meth:`record` is called from request handlers, the flush
    runs in a daemon thread started by :meth:`start`.
    """

    def __init__(
        self, write: Callable[[Sequence[HeartbeatWrite]], None], *, flush_seconds: float
    ) -> None:
        self._write = write
        self.flush_seconds = flush_seconds
        self._pending: dict[int, HeartbeatWrite] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the background flush (no-op when ``flush_seconds`` is 0 or already started)."""
        if self.flush_seconds <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="javia-soft-state", daemon=True)
        self._thread.start()

    def record(self, write: HeartbeatWrite) -> None:
        """Queue ``write``; it replaces any queued soft state of the same device.

        Raises:
            BackendError: only when ``flush_seconds`` is 0 and the write fails.
        """
        if self._thread is None:
            self._write([write])
            return
        with self._lock:
            self._pending[write.device_id] = write

    def pending(self) -> int:
        """How many devices have soft state waiting to be written."""
        with self._lock:
            return len(self._pending)

    def flush(self) -> int:
        """Write everything queued now, in one transaction; returns how many devices.

        On failure the batch goes back to the queue (unless a newer heartbeat of
        the same device arrived meanwhile) for the next flush.

        Raises:
            BackendError: the write failed.
        """
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, {}
            if not batch:
                return 0
            try:
                self._write(list(batch.values()))
            except BaseException:
                with self._lock:
                    for device_id, write in batch.items():
                        self._pending.setdefault(device_id, write)
                raise
            return len(batch)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except JaviaError as error:
                logger.warning("writing heartbeat soft state failed, retrying: %s", error)
            except Exception:
                logger.exception("writing heartbeat soft state failed, retrying")

    def close(self) -> None:
        """Stop the background flush and write what is queued (server shutdown).

        Raises:
            BackendError: the final write failed (that soft state is lost; the
                devices send it again at their next heartbeat).
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()
