"""The wake-up bus: every server process learns of every wake-up notice (docs/architecture.md).

A notice (:class:`WakeupNotice`) says which devices should heartbeat now and
why. The service publishes one where a publish, a rollout change or a token
revocation commits; every server process on the same database receives it and
answers the held wake-up requests of those devices
(:mod:`javia_updates.server.wakeup`). Three implementations, one contract
(:class:`WakeupBus`):

- :class:`LocalWakeupBus`: in-process only (tests, a backend without SQL).
- :class:`SQLiteWakeupBus`: one SQLite file, any number of processes on its
  machine (``javia server --workers N``): the publisher delivers to its own
  process at once and writes one row to the ``wakeups`` table; every process
  reads the rows newer than the last it saw every ``poll_seconds`` (0.25 s:
  one indexed read, ~20 µs, so four a second cost nothing). SQLite already
  forces the processes onto one machine and one file; the table needs no
  other path, socket or permission, and a process that was busy reads what
  it missed.
- :class:`PostgresWakeupBus`: ``NOTIFY`` on publish, one ``LISTEN`` connection
  per server process, so replicas on other machines receive it too.
  PostgreSQL's own mechanism, no broker; a listener that lost its connection
  reconnects with backoff and then wakes every held device once (with a
  spread), since notices may have been missed meanwhile.

Notices naming more than :data:`MAX_LISTED_DEVICES` devices wake every held
device instead (one heartbeat too many for some is cheaper than a huge notice).
Publishing never raises: the heartbeat is the fallback, a lost notice costs at
most one heartbeat interval.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Engine, Table, delete, func, insert, select, text
from sqlalchemy.exc import SQLAlchemyError

from javia_core.wakeup import MAX_SPREAD_SECONDS, WakeupReason

__all__ = [
    "MAX_LISTED_DEVICES",
    "LocalWakeupBus",
    "PostgresWakeupBus",
    "SQLiteWakeupBus",
    "WakeupBus",
    "WakeupNotice",
    "wakeup_bus_for",
]

logger = logging.getLogger(__name__)

#: A notice naming more devices than this wakes every held device instead.
MAX_LISTED_DEVICES = 1000
#: Devices per PostgreSQL ``NOTIFY`` payload (the payload must stay under 8,000 bytes).
_DEVICES_PER_NOTIFY = 150
#: Rows of the ``wakeups`` table older than this are deleted by the writers.
_KEEP_ROWS = timedelta(seconds=60)
#: Spread of the heartbeats after a PostgreSQL listener reconnected, in seconds.
RECONNECT_SPREAD_SECONDS = 60.0


@dataclass(frozen=True)
class WakeupNotice:
    """Which devices should heartbeat now, and why.

    Attributes:
        reason: why (the held request's answer carries it).
        devices: the devices concerned, or None for every device.
        spread_seconds: the devices heartbeat after a random delay in
            ``[0, spread_seconds]`` (0: at once).
    """

    reason: WakeupReason
    devices: frozenset[uuid.UUID] | None = None
    spread_seconds: float = 0.0

    @classmethod
    def for_devices(
        cls,
        reason: WakeupReason,
        devices: Iterable[uuid.UUID] | None,
        *,
        spread_seconds: float = 0.0,
    ) -> WakeupNotice:
        """A notice for ``devices`` (None: every device); above :data:`MAX_LISTED_DEVICES`, every device."""
        listed = None if devices is None else frozenset(devices)
        if listed is not None and len(listed) > MAX_LISTED_DEVICES:
            listed = None
        return cls(reason, listed, min(MAX_SPREAD_SECONDS, max(0.0, spread_seconds)))

    def encode(self, devices: Iterable[uuid.UUID] | None = None) -> str:
        """Compact JSON; ``devices`` overrides the listed devices (one chunk of them)."""
        listed = self.devices if devices is None else devices
        return json.dumps(
            {
                "r": self.reason.value,
                "d": None if listed is None else sorted(str(d) for d in listed),
                "s": self.spread_seconds,
            },
            separators=(",", ":"),
        )

    def chunks(self, size: int) -> list[str]:
        """The notice as payloads of at most ``size`` devices each."""
        if self.devices is None or len(self.devices) <= size:
            return [self.encode()]
        listed = sorted(self.devices)
        return [self.encode(listed[i : i + size]) for i in range(0, len(listed), size)]

    @classmethod
    def decode(cls, payload: str) -> WakeupNotice | None:
        """The notice in ``payload``, or None (logged) if it is not one."""
        try:
            data = json.loads(payload)
            listed = data["d"]
            devices = None if listed is None else frozenset(uuid.UUID(d) for d in listed)
            return cls(WakeupReason(data["r"]), devices, float(data.get("s") or 0.0))
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            logger.warning("ignoring a malformed wake-up notice: %s", error)
            return None


#: Receives every notice; called from any thread (the receiver hands it to its event loop).
Deliver = Callable[[WakeupNotice], None]


class WakeupBus(Protocol):
    """Carries wake-up notices to every server process on the same database.

    ``start(deliver)`` once per process (server start-up); from then on every
    notice published by any process reaches ``deliver`` (from any thread), the
    publisher's own included. ``publish`` may be called from any thread, never
    raises (a lost notice costs at most one heartbeat interval), and returns
    before the notice is delivered elsewhere.
    """

    def start(self, deliver: Deliver) -> None:
        """Begin receiving notices (idempotent)."""
        ...

    def publish(self, notice: WakeupNotice) -> None:
        """Send ``notice`` to every process (this one included)."""
        ...

    def close(self) -> None:
        """Stop receiving; idempotent."""
        ...


class LocalWakeupBus:
    """In-process only: ``publish`` hands the notice to this process's receiver at once."""

    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    def start(self, deliver: Deliver) -> None:
        """See :class:`WakeupBus`."""
        self._deliver = deliver

    def publish(self, notice: WakeupNotice) -> None:
        """See :class:`WakeupBus`."""
        deliver = self._deliver
        if deliver is not None:
            deliver(notice)

    def close(self) -> None:
        """See :class:`WakeupBus`."""
        self._deliver = None


class _Receiver:
    """A daemon thread that runs ``loop(stop)`` until :meth:`stop`."""

    def __init__(self, name: str, loop: Callable[[threading.Event], None]) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=loop, args=(self._stop,), name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)


class SQLiteWakeupBus(LocalWakeupBus):
    """One SQLite file, several processes: local delivery plus the polled ``wakeups`` table.

    Args:
        engine: the store's engine (SQLite).
        table: the ``wakeups`` table.
        poll_seconds: how often each process reads new rows, in seconds.
        now: the wall clock (aware UTC), for the rows' age.
    """

    def __init__(
        self,
        engine: Engine,
        table: Table,
        *,
        poll_seconds: float = 0.25,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__()
        self.engine = engine
        self.table = table
        self.poll_seconds = poll_seconds
        self._now = now
        #: This process's random id: its own rows were delivered when written.
        self.origin = secrets.token_hex(8)
        self._receiver: _Receiver | None = None
        self._last_id = 0

    def start(self, deliver: Deliver) -> None:
        """See :class:`WakeupBus`; rows written before the start are not delivered."""
        super().start(deliver)
        if self._receiver is not None:
            return
        with self.engine.connect() as connection:
            self._last_id = connection.execute(select(func.max(self.table.c.id))).scalar() or 0
        self._receiver = _Receiver("javia-wakeup-poll", self._poll_loop)
        self._receiver.start()

    def publish(self, notice: WakeupNotice) -> None:
        """Deliver here at once, then write the row the other processes read."""
        super().publish(notice)
        now = self._now()
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    insert(self.table).values(
                        origin=self.origin, payload=notice.encode(), created_at=now
                    )
                )
                connection.execute(
                    delete(self.table).where(self.table.c.created_at < now - _KEEP_ROWS)
                )
        except SQLAlchemyError as error:
            logger.warning("could not pass a wake-up to the other server processes: %s", error)

    def poll_once(self) -> int:
        """Read and deliver the other processes' new rows; the number delivered."""
        table = self.table
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(table.c.id, table.c.origin, table.c.payload)
                .where(table.c.id > self._last_id)
                .order_by(table.c.id)
            ).all()
        delivered = 0
        for row in rows:
            self._last_id = max(self._last_id, row.id)
            if row.origin == self.origin:
                continue
            notice = WakeupNotice.decode(row.payload)
            if notice is not None and self._deliver is not None:
                self._deliver(notice)
                delivered += 1
        return delivered

    def _poll_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.poll_seconds):
            try:
                self.poll_once()
            except SQLAlchemyError as error:
                logger.warning("reading wake-ups failed (retrying): %s", error)
            except Exception:  # the poller must outlive one bad read
                logger.exception("reading wake-ups failed (retrying)")

    def close(self) -> None:
        """See :class:`WakeupBus`."""
        if self._receiver is not None:
            self._receiver.stop()
            self._receiver = None
        super().close()


class PostgresWakeupBus:
    """PostgreSQL ``LISTEN``/``NOTIFY``: every replica on the database receives every notice.

    Args:
        engine: the store's engine (PostgreSQL, psycopg 3); ``NOTIFY`` goes
            through its pool, the listener holds one connection of its own.
        channel: the notification channel (one per schema, so two
            deployments on one database do not wake each other's devices).
        retry_seconds: the first wait before reconnecting a lost listener, doubled up to 60 s.
    """

    def __init__(self, engine: Engine, *, channel: str, retry_seconds: float = 1.0) -> None:
        self.engine = engine
        self.channel = channel
        self.retry_seconds = retry_seconds
        self._deliver: Deliver | None = None
        self._receiver: _Receiver | None = None
        #: Set once the listener's ``LISTEN`` is in effect (tests wait for it).
        self.listening = threading.Event()

    def start(self, deliver: Deliver) -> None:
        """See :class:`WakeupBus`."""
        self._deliver = deliver
        if self._receiver is None:
            self._receiver = _Receiver("javia-wakeup-listen", self._listen_loop)
            self._receiver.start()

    def publish(self, notice: WakeupNotice) -> None:
        """``pg_notify`` the notice (in chunks under the payload limit), delivered on commit."""
        try:
            with self.engine.begin() as connection:
                for payload in notice.chunks(_DEVICES_PER_NOTIFY):
                    connection.execute(
                        text("SELECT pg_notify(:channel, :payload)"),
                        {"channel": self.channel, "payload": payload},
                    )
        except SQLAlchemyError as error:
            logger.warning("could not send a wake-up notice: %s", error)

    def _listen_loop(self, stop: threading.Event) -> None:
        delay = self.retry_seconds
        missed = False
        while not stop.is_set():
            try:
                self._listen(stop, missed)
                delay = self.retry_seconds
            except Exception as error:  # noqa: BLE001 - reconnect whatever the failure
                self.listening.clear()
                if stop.is_set():
                    return
                logger.warning("wake-up listener lost (reconnecting in %.0f s): %s", delay, error)
                missed = True
                stop.wait(delay)
                delay = min(60.0, delay * 2)

    def _listen(self, stop: threading.Event, missed: bool) -> None:
        pooled = self.engine.raw_connection()
        connection: Any = pooled.driver_connection
        pooled.detach()  # a connection of its own, never handed back to the pool
        try:
            connection.autocommit = True
            connection.execute(f'LISTEN "{self.channel}"')
            self.listening.set()
            if missed and self._deliver is not None:
                self._deliver(WakeupNotice(WakeupReason.UPDATE, None, RECONNECT_SPREAD_SECONDS))
            while not stop.is_set():
                for message in connection.notifies(timeout=1.0):
                    notice = WakeupNotice.decode(message.payload)
                    if notice is not None and self._deliver is not None:
                        self._deliver(notice)
        finally:
            self.listening.clear()
            pooled.close()

    def close(self) -> None:
        """See :class:`WakeupBus`."""
        if self._receiver is not None:
            self._receiver.stop()
            self._receiver = None
        self._deliver = None


def wakeup_bus_for(store: object) -> WakeupBus:
    """The bus for a store: PostgreSQL ``LISTEN``/``NOTIFY``, the SQLite table, or in-process.

    ``store`` is read for an SQL store's ``engine``, ``tables.wakeups`` and
    ``schema``; any other store gets the in-process bus.
    """
    engine = getattr(store, "engine", None)
    table = getattr(getattr(store, "tables", None), "wakeups", None)
    if not isinstance(engine, Engine) or not isinstance(table, Table):
        return LocalWakeupBus()
    if engine.dialect.name == "postgresql":
        schema = getattr(store, "schema", None) or "public"
        return PostgresWakeupBus(engine, channel=f"{schema}_wakeup")
    if engine.dialect.name == "sqlite":
        return SQLiteWakeupBus(engine, table)
    return LocalWakeupBus()
