"""The application's health since the running release became current (issue 13, automatic halt).

Every heartbeat carries ``application`` (:class:`javia_core.models.ApplicationHealth`):
how often the application was restarted since the running release became
current, its last exit status (exit code, or minus the signal) and whether it
runs now. The server counts a release whose application restarts or exits
non-zero during a rollout's soak as a post-install regression
(docs/rollouts.md).

The service-control edge gives one :class:`ServiceSample` per heartbeat (one
``systemctl show`` in systemd mode, the pid file and ``/proc`` in command
mode: :meth:`javia_agent.services.SystemdService.sample`,
:meth:`javia_agent.services.CommandService.sample`). :func:`observe` — pure —
folds it into an :class:`ApplicationRecord`, which :class:`ApplicationMonitor`
keeps in ``<state_dir>/application.json`` (atomic write, fsynced, only when it
changes), so a restart of the agent neither resets nor double-counts.

How restarts are counted:

- systemd mode: ``NRestarts`` (restarts by the unit's ``Restart=``) counted
  from its value at the first heartbeat of the release (the baseline); the
  counter starting again from 0 (a reboot, a manual ``systemctl start``) adds
  its new value. ``ExecMainCode``/``ExecMainStatus`` give the last exit when
  the main process has exited; systemd clears them when it starts the process
  again, so an exit followed by a restart between two heartbeats shows as a
  restart only.
- command mode: the agent starts the application itself (at its own start
  when the application is not running; it does not restart an application
  that exits while it runs). A different running process (pid and start time)
  on the same release within the same boot is a restart. The exit status is
  known when this agent process started the application (it reaps it);
  after an agent restart an exit is seen as ``running: false`` only.

A new boot (``/proc/sys/kernel/random/boot_id``) is not a restart. A
different running release starts a new record at 0.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from javia_agent._fs import atomic_write
from javia_agent.errors import ServiceError
from javia_core.models import ApplicationHealth

__all__ = [
    "ApplicationMonitor",
    "ApplicationRecord",
    "ServiceSample",
    "current_boot_id",
    "observe",
    "parse_systemctl_show",
]

logger = logging.getLogger(__name__)

#: ``systemctl show`` properties :func:`parse_systemctl_show` reads.
SYSTEMCTL_PROPERTIES = ("NRestarts", "ExecMainCode", "ExecMainStatus", "ActiveState")
# siginfo si_code values systemd reports as ExecMainCode (CLD_EXITED, CLD_KILLED, CLD_DUMPED).
_EXITED, _KILLED, _DUMPED = 1, 2, 3
_RUNNING_STATES = frozenset({"active", "reloading"})
_MAX_RESTARTS = 2**63 - 1
_BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class ServiceSample:
    """One look at the application, from the service-control edge.

    Attributes:
        running: whether it runs now.
        restart_counter: systemd's ``NRestarts`` (``None`` in command mode or
            when systemd does not report it).
        instance: command mode: ``"<pid>:<start ticks>"`` of the running
            process; ``None`` when it does not run (or in systemd mode).
        exit_status: the exit seen now: exit code, or minus the signal
            number; ``None`` when it has not exited or the status is unknown.
    """

    running: bool
    restart_counter: int | None = None
    instance: str | None = None
    exit_status: int | None = None


@dataclass(frozen=True)
class ApplicationRecord:
    """What ``application.json`` keeps between heartbeats and agent restarts.

    Attributes:
        release: the running release these numbers are for (``vX.Y.Z``).
        boot_id: the boot they were last seen in (``None``: unknown).
        restarts: restarts since ``release`` became current, >= 0.
        last_exit_status: the last exit seen (code, or minus the signal), or ``None``.
        restart_counter: the last ``NRestarts`` seen (systemd mode).
        instance: the last running process seen (command mode).
    """

    release: str
    boot_id: str | None = None
    restarts: int = 0
    last_exit_status: int | None = None
    restart_counter: int | None = None
    instance: str | None = None

    def health(self, *, running: bool) -> ApplicationHealth:
        """The heartbeat's ``application`` object."""
        return ApplicationHealth(
            restarts=self.restarts, last_exit_status=self.last_exit_status, running=running
        )


def _exit_status(code: int, status: int) -> int | None:
    """systemd's (``ExecMainCode``, ``ExecMainStatus``) as an exit code or minus a signal."""
    if code == _EXITED:
        return status
    if code in (_KILLED, _DUMPED):
        return -status
    return None


def parse_systemctl_show(text: str) -> ServiceSample:
    """Parse ``systemctl show -p NRestarts,ExecMainCode,ExecMainStatus,ActiveState UNIT``.

    Args:
        text: its output, ``Name=value`` lines in any order.

    Returns:
        The sample: ``running`` for ``ActiveState`` ``active`` or
        ``reloading``; ``restart_counter`` from ``NRestarts`` (``None`` when
        missing, as before systemd 235); ``exit_status`` from ``ExecMainCode``
        (1 exited: the code; 2 killed, 3 dumped: minus the signal; 0: none).
        Unparsable values count as missing.
    """
    values: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            values[name.strip()] = value.strip()

    def number(name: str) -> int | None:
        try:
            return int(values[name])
        except (KeyError, ValueError):
            return None

    counter = number("NRestarts")
    code, status = number("ExecMainCode"), number("ExecMainStatus")
    exit_status = _exit_status(code, status) if code is not None and status is not None else None
    if exit_status is not None and not -128 <= exit_status <= 255:
        exit_status = None
    return ServiceSample(
        running=values.get("ActiveState") in _RUNNING_STATES,
        restart_counter=counter if counter is not None and counter >= 0 else None,
        exit_status=exit_status,
    )


def observe(
    previous: ApplicationRecord | None,
    *,
    release: str,
    boot_id: str | None,
    sample: ServiceSample,
) -> ApplicationRecord:
    """Fold one sample into the record (pure; the rules are in the module docstring).

    Args:
        previous: the record so far, ``None`` on the first look ever.
        release: the release ``current`` points to now.
        boot_id: the current boot's id (``None``: unknown, taken as the same boot).
        sample: what the service-control edge sees now.

    Returns:
        The new record: a fresh one at 0 restarts, with the counter and
        process seen now as the baseline, when ``release`` is not the
        record's; otherwise the record with the restarts seen since added.
    """
    if previous is None or previous.release != release:
        return ApplicationRecord(
            release=release,
            boot_id=boot_id,
            last_exit_status=sample.exit_status,
            restart_counter=sample.restart_counter,
            instance=sample.instance,
        )
    new_boot = boot_id is not None and previous.boot_id is not None and boot_id != previous.boot_id
    restarts = previous.restarts
    counter, before = sample.restart_counter, previous.restart_counter
    if counter is not None and before is not None:
        if new_boot or counter < before:
            restarts += counter  # the counter started again from 0
        else:
            restarts += counter - before
    if sample.instance is not None and sample.instance != previous.instance and not new_boot:
        restarts += 1  # another process runs the same release: it was started again
    return replace(
        previous,
        boot_id=boot_id if boot_id is not None else previous.boot_id,
        restarts=min(restarts, _MAX_RESTARTS),
        last_exit_status=(
            sample.exit_status if sample.exit_status is not None else previous.last_exit_status
        ),
        restart_counter=counter if counter is not None else before,
        instance=sample.instance,
    )


def current_boot_id(path: Path = _BOOT_ID_FILE) -> str | None:
    """This boot's id (Linux ``boot_id``), or ``None`` where there is none."""
    try:
        return path.read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _load(path: Path) -> ApplicationRecord | None:
    try:
        data = json.loads(path.read_bytes())
        record = ApplicationRecord(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as error:
        logger.warning("ignoring unreadable %s: %s", path, error)
        return None
    fields_ok = (
        isinstance(record.release, str)
        and isinstance(record.restarts, int)
        and record.restarts >= 0
        and all(
            value is None or isinstance(value, int)
            for value in (record.last_exit_status, record.restart_counter)
        )
        and all(
            value is None or isinstance(value, str) for value in (record.boot_id, record.instance)
        )
    )
    if not fields_ok:
        logger.warning("ignoring %s: a field has the wrong type", path)
        return None
    return record


class ApplicationMonitor:
    """Gives each heartbeat its ``application`` object and keeps the count on disk.

    Args:
        path: ``<state_dir>/application.json``.
        sample: one look at the application (:meth:`SystemdService.sample` or
            :meth:`CommandService.sample`); may raise ``ServiceError``.
        release: the version ``current`` points to, or ``None``.
        boot_id: this boot's id (default: read from ``/proc``).
    """

    def __init__(
        self,
        path: Path,
        *,
        sample: Callable[[], ServiceSample],
        release: Callable[[], str | None],
        boot_id: str | None = None,
    ) -> None:
        self.path = Path(path)
        self._sample = sample
        self._release = release
        self._boot_id = boot_id if boot_id is not None else current_boot_id()
        self._record: ApplicationRecord | None = None
        self._loaded = False

    def health(self) -> ApplicationHealth | None:
        """The application's health now, or ``None`` when unknown (no release, no answer).

        Never raises: a sample that fails is logged and gives ``None``; a
        record that cannot be written is logged and kept in memory.
        """
        release = self._release()
        if release is None:
            return None
        try:
            sample = self._sample()
        except ServiceError as error:
            logger.warning("cannot tell how the application fares: %s", error)
            return None
        if not self._loaded:
            self._record = _load(self.path)
            self._loaded = True
        record = observe(self._record, release=release, boot_id=self._boot_id, sample=sample)
        if record != self._record:
            if self._record is not None and record.restarts > self._record.restarts:
                logger.warning(
                    "application of %s restarted (%d since it became current; last exit %s)",
                    release,
                    record.restarts,
                    record.last_exit_status,
                )
            try:
                atomic_write(self.path, json.dumps(asdict(record)).encode("utf-8"), mode=0o644)
            except OSError as error:
                logger.warning("cannot write %s: %s", self.path, error.strerror or error)
            self._record = record
        return record.health(running=sample.running)
