"""Control of the application service behind one small interface (DESIGN.md section 7).

- :class:`SystemdService` drives a systemd unit (``systemctl stop/start/is-active``).
  The agent runs in its own unit, never inside the application's, so
  restarting the application cannot kill the install that restarts it. The
  unit should use ``WorkingDirectory=<install_root>/current`` and may read
  ``EnvironmentFile=-<state_dir>/app.env``, which the agent writes before each
  start, mode 0600 (``app_env`` values may be secrets; systemd reads the file
  as root).
- :class:`CommandService` is for machines without systemd (the demo, tests):
  it spawns ``start_command`` in a new session, so the application survives a
  restart of the agent, and remembers it in a pid file. The pid is recorded
  *before* the application can run: the child waits at a gate (``/bin/sh``
  reading one line from a pipe) until the pid file is on disk, then execs
  the command under the same pid; if the agent dies first, the pipe closes
  and the child exits without running it. So a restarted agent finds the
  application through the pid file or knows it never ran: it runs exactly
  once whatever the moment of a crash.

The application's environment gets the configured ``app_env`` plus
``JAVIA_RELEASE_DIR`` (the resolved release directory) and
``JAVIA_ACTIVITY_FILE`` (where to record activity); when the release has a
Python environment (built from its ``requirements.txt``, see
:mod:`javia_agent.environments`) also ``JAVIA_PYTHON`` (its interpreter),
``VIRTUAL_ENV`` and a ``PATH`` that starts with its ``bin``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from javia_agent._fs import atomic_write
from javia_agent.app_health import SYSTEMCTL_PROPERTIES, ServiceSample, parse_systemctl_show
from javia_agent.environments import environment_variables
from javia_agent.errors import ServiceError

__all__ = [
    "RELEASE_DIR_ENV",
    "AppService",
    "CommandService",
    "SystemdService",
    "application_environment",
    "protect_environment_file",
    "write_environment_file",
]

logger = logging.getLogger(__name__)

RELEASE_DIR_ENV = "JAVIA_RELEASE_DIR"
ACTIVITY_FILE_ENV = "JAVIA_ACTIVITY_FILE"
#: Mode of ``app.env``: its ``app_env`` values may be secrets (API keys).
ENVIRONMENT_FILE_MODE = 0o600

# The gate every command-mode application starts behind: wait for the agent's
# "go" (sent once the pid file is on disk), then become the application (same
# pid, stdin from /dev/null). End of file — the agent died first — or anything
# else: exit without running it.
_GATE_SHELL = "/bin/sh"
_GATE_SCRIPT = 'IFS= read -r go || exit 125; [ "$go" = go ] || exit 125; exec "$@" </dev/null'
_GATE_NAME = "javia-app-gate"

# Popen objects of applications this process started, so they are reaped (no
# zombies) and not garbage-collected while running.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
# Exit statuses of the last few reaped ones (pid -> code, or -signal), for
# CommandService.sample; bounded so a long-lived agent keeps a handful.
_EXIT_STATUSES: dict[int, int] = {}
_KEPT_EXIT_STATUSES = 8


@runtime_checkable
class AppService(Protocol):
    """Start, stop and query the application. Every method is idempotent."""

    def stop(self) -> None:
        """Stop the application; return once it is no longer running.

        Raises:
            ServiceError: it could not be stopped.
        """

    def start(self) -> None:
        """Start the application from the release ``current`` points to.

        Raises:
            ServiceError: it could not be started.
        """

    def is_active(self) -> bool:
        """Whether the application is running now."""


def application_environment(
    release_dir: Path, activity_file: Path, app_env: Mapping[str, str]
) -> dict[str, str]:
    """The variables javia adds to the application's environment.

    Args:
        release_dir: the release the application runs from.
        activity_file: where the application records activity.
        app_env: the configured extra variables; a ``PATH`` among them is
            the one the release's environment is put in front of.

    Returns:
        ``app_env`` plus ``JAVIA_RELEASE_DIR``, ``JAVIA_ACTIVITY_FILE`` and,
        when the release has a Python environment, ``JAVIA_PYTHON``,
        ``VIRTUAL_ENV`` and ``PATH``.
    """
    env = dict(app_env)
    env.update(environment_variables(Path(release_dir), app_env.get("PATH")))
    env[RELEASE_DIR_ENV] = str(release_dir)
    env[ACTIVITY_FILE_ENV] = str(activity_file)
    return env


def write_environment_file(path: Path, env: Mapping[str, str]) -> None:
    """Write ``env`` in systemd ``EnvironmentFile=`` syntax (double-quoted values), mode 0600.

    The values come from ``app_env`` and may be secrets: the file is readable
    by root only (:data:`ENVIRONMENT_FILE_MODE`; systemd reads it as root).

    Raises:
        ServiceError: a name is not a valid variable name or a value holds a
            newline; or the file cannot be written.
    """
    lines = []
    for name, value in sorted(env.items()):
        if not name.replace("_", "a").isalnum() or name[0].isdigit() or "\n" in value:
            raise ServiceError(
                f"cannot pass environment variable {name!r}: invalid name or newline"
            )
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'{name}="{escaped}"\n')
    try:
        atomic_write(path, "".join(lines).encode("utf-8"), mode=ENVIRONMENT_FILE_MODE)
    except OSError as error:
        raise ServiceError(f"cannot write environment file {path}: {error.strerror}") from None


def protect_environment_file(path: Path) -> None:
    """Give an existing ``app.env`` mode 0600 (one written 0644 by an older agent).

    Links and non-regular files are left alone; errors are logged, not raised.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return
    try:
        info = os.fstat(descriptor)
        if stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) != ENVIRONMENT_FILE_MODE:
            os.fchmod(descriptor, ENVIRONMENT_FILE_MODE)
            logger.info("%s is now mode %o", path, ENVIRONMENT_FILE_MODE)
    except OSError as error:
        logger.warning("cannot restrict %s to mode %o: %s", path, ENVIRONMENT_FILE_MODE, error)
    finally:
        os.close(descriptor)


class SystemdService:
    """The application as a systemd unit.

    Args:
        unit: the unit name, e.g. ``javia-app.service``.
        environment: returns the variables for the application; written to
            ``env_file`` before each start.
        env_file: where to write them (``<state_dir>/app.env``); ``None``: not written.
        runner: runs an argv and returns a ``CompletedProcess`` (injectable).
        timeout_seconds: limit for each ``systemctl`` call.
    """

    def __init__(
        self,
        unit: str,
        *,
        environment: Callable[[], Mapping[str, str]] | None = None,
        env_file: Path | None = None,
        runner: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
        timeout_seconds: float = 120.0,
    ) -> None:
        if not unit or unit.startswith("-") or "/" in unit:
            raise ServiceError(
                f"invalid systemd unit name {unit!r}: expected e.g. javia-app.service"
            )
        self.unit = unit
        self._environment = environment
        self._env_file = env_file
        self._runner = runner
        self._timeout = timeout_seconds

    def _systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return self._runner(
                ["systemctl", *args, self.unit],
                capture_output=True,
                text=True,
                timeout=self._timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise ServiceError(f"systemctl {' '.join(args)} {self.unit} failed: {error}") from None

    def stop(self) -> None:
        """``systemctl stop UNIT``. Raises ServiceError on a non-zero exit."""
        result = self._systemctl("stop")
        if result.returncode != 0:
            raise ServiceError(f"systemctl stop {self.unit} failed: {result.stderr.strip()[:300]}")

    def start(self) -> None:
        """Write the environment file, then ``systemctl start UNIT``. Raises ServiceError."""
        if self._environment is not None and self._env_file is not None:
            write_environment_file(self._env_file, self._environment())
        result = self._systemctl("start")
        if result.returncode != 0:
            raise ServiceError(f"systemctl start {self.unit} failed: {result.stderr.strip()[:300]}")

    def is_active(self) -> bool:
        """``systemctl is-active --quiet UNIT`` exits 0."""
        try:
            return self._systemctl("is-active", "--quiet").returncode == 0
        except ServiceError:
            return False

    def sample(self) -> ServiceSample:
        """One ``systemctl show -p NRestarts,ExecMainCode,ExecMainStatus,ActiveState UNIT``.

        Returns:
            Whether the unit is active, its restart counter and the main
            process's last exit (:func:`javia_agent.app_health.parse_systemctl_show`).

        Raises:
            ServiceError: systemctl could not be run or exited non-zero.
        """
        result = self._systemctl("show", f"--property={','.join(SYSTEMCTL_PROPERTIES)}")
        if result.returncode != 0:
            raise ServiceError(f"systemctl show {self.unit} failed: {result.stderr.strip()[:300]}")
        return parse_systemctl_show(result.stdout)


def _no_checkpoint(point: str) -> None:
    return None


def _check_executable(command: str, cwd: Path, search_path: str) -> None:
    """Raise ServiceError unless ``command`` names an executable file, as ``execvp`` finds it."""
    if "/" in command:
        candidate = Path(command) if os.path.isabs(command) else cwd / command
        found = candidate.is_file() and os.access(candidate, os.X_OK)
    else:
        found = shutil.which(command, path=search_path) is not None
    if not found:
        raise ServiceError(
            f"cannot start {command!r} in {cwd}: not found or not executable (check start_command)"
        )


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) from /proc, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def _process_alive(pid: int, start_ticks: int | None) -> bool:
    """Whether ``pid`` runs, is not a zombie, and (if known) started at ``start_ticks``."""
    stat = _proc_stat(pid)
    if stat is None:
        if Path("/proc/self/stat").exists():
            return False
        try:  # no /proc: fall back to signal 0
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state, ticks = stat
    if state in ("Z", "X"):
        return False
    return start_ticks is None or ticks == start_ticks


class CommandService:
    """The application as a detached process started from an argv.

    Args:
        argv: the start command, run with cwd = the release ``current``
            resolves to at start time.
        current_link: ``<install_root>/current``.
        pid_file: where the pid (and its start time, guarding against pid
            reuse) is kept, so a restarted agent still finds the application.
        log_file: the application's stdout and stderr are appended here.
        activity_file: passed as ``JAVIA_ACTIVITY_FILE``.
        app_env: extra environment variables.
        stop_timeout_seconds: how long to wait after SIGTERM before SIGKILL.
        poll_seconds: the longest wait between looks whether it has exited
            while stopping (the first looks come sooner).
        checkpoint: called with ``service.spawned`` once the child exists
            (waiting at its gate) and before its pid is recorded, and with
            ``service.recorded`` once the pid file is on disk and before the
            child is let go: the crash tests' pause hook
            (:func:`javia_agent.installer.pause_hook_from_environment`).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        current_link: Path,
        pid_file: Path,
        log_file: Path,
        activity_file: Path,
        app_env: Mapping[str, str] | None = None,
        stop_timeout_seconds: float = 10.0,
        poll_seconds: float = 0.05,
        checkpoint: Callable[[str], None] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.checkpoint = checkpoint or _no_checkpoint
        self.current_link = Path(current_link)
        self.pid_file = Path(pid_file)
        self.log_file = Path(log_file)
        self.activity_file = Path(activity_file)
        self.app_env = dict(app_env or {})
        self.stop_timeout_seconds = stop_timeout_seconds
        self.poll_seconds = poll_seconds

    def _read_pid(self) -> tuple[int, int | None] | None:
        try:
            data = json.loads(self.pid_file.read_text())
            return int(data["pid"]), (
                int(data["start_ticks"]) if data.get("start_ticks") is not None else None
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("ignoring unreadable pid file %s", self.pid_file)
            return None

    @staticmethod
    def _reap(pid: int) -> None:
        child = _CHILDREN.get(pid)
        if child is not None:
            if child.poll() is not None:
                del _CHILDREN[pid]
                _EXIT_STATUSES[pid] = child.returncode
                while len(_EXIT_STATUSES) > _KEPT_EXIT_STATUSES:
                    del _EXIT_STATUSES[next(iter(_EXIT_STATUSES))]
            return
        with contextlib.suppress(ChildProcessError, OSError):  # not our child: init reaps it
            os.waitpid(pid, os.WNOHANG)

    def pid(self) -> int | None:
        """The running application's pid, or ``None`` when it is not running."""
        info = self._read_pid()
        if info is None:
            return None
        pid, ticks = info
        self._reap(pid)
        return pid if _process_alive(pid, ticks) else None

    def is_active(self) -> bool:
        """Whether the process in the pid file is alive (and not a zombie)."""
        return self.pid() is not None

    def sample(self) -> ServiceSample:
        """One look through the pid file and ``/proc`` (no process is spawned).

        Returns:
            ``running`` and ``instance`` (``"<pid>:<start ticks>"``) while the
            recorded process runs; once it exited, its exit status (code, or
            minus the signal) when this process started it and reaped it,
            else ``None``.
        """
        info = self._read_pid()
        if info is None:
            return ServiceSample(running=False)
        pid, ticks = info
        self._reap(pid)
        if _process_alive(pid, ticks):
            return ServiceSample(running=True, instance=f"{pid}:{ticks}")
        return ServiceSample(running=False, exit_status=_EXIT_STATUSES.get(pid))

    def start(self) -> None:
        """Spawn the start command in a new session, unless it already runs.

        The child is recorded before it runs (see the module docstring): it
        is spawned behind a gate, its pid and start time are written to the
        pid file (durably), and only then is it told to exec the command.

        Raises:
            ServiceError: no start command is configured, ``current`` does not
                point to a release, the command is not found or not
                executable, or it cannot be spawned.
        """
        if self.is_active():
            return
        if not self.argv:
            raise ServiceError("service_mode is 'command' but start_command is empty")
        try:
            release = self.current_link.resolve(strict=True)
        except (FileNotFoundError, RuntimeError):
            raise ServiceError(
                f"{self.current_link} does not point to an installed release"
            ) from None
        env = os.environ.copy()
        env.update(application_environment(release, self.activity_file, self.app_env))
        _check_executable(self.argv[0], release, env.get("PATH", os.defpath))
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        gate, go = os.pipe()  # both ends close-on-exec; the child gets ``gate`` as stdin
        try:
            with open(self.log_file, "ab") as log:
                child = subprocess.Popen(
                    [_GATE_SHELL, "-c", _GATE_SCRIPT, _GATE_NAME, *self.argv],
                    cwd=release,
                    env=env,
                    stdin=gate,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as error:
            os.close(go)
            raise ServiceError(
                f"cannot start {self.argv[0]!r} in {release}: {error.strerror}"
            ) from None
        finally:
            os.close(gate)
        _CHILDREN[child.pid] = child
        try:
            self.checkpoint("service.spawned")
            started = _proc_stat(child.pid)
            record = {
                "pid": child.pid,
                "start_ticks": started[1] if started else None,
                "release": str(release),
            }
            try:
                atomic_write(self.pid_file, json.dumps(record).encode("utf-8"), mode=0o644)
            except OSError as error:
                raise ServiceError(
                    f"cannot record the application's pid in {self.pid_file}: {error.strerror}; "
                    "not starting it"
                ) from None
            self.checkpoint("service.recorded")
            try:
                os.write(go, b"go\n")
            except BrokenPipeError:
                logger.error("application pid %d exited before it was started", child.pid)
        finally:
            os.close(go)  # without "go" first, the child exits instead of running the command
        logger.info("started application pid %d in %s", child.pid, release)

    def _signal(self, pid: int, signum: int) -> None:
        try:
            os.killpg(pid, signum)  # the whole session: the app and its children
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _wait_gone(self, pid: int, ticks: int | None, seconds: float) -> bool:
        """Whether ``pid`` exited within ``seconds``.

        Looks again after 2 ms, then doubling up to ``poll_seconds``: most
        applications exit within milliseconds of SIGTERM, and every
        millisecond here is downtime during an update.
        """
        deadline = time.monotonic() + seconds
        delay = min(0.002, self.poll_seconds)
        while True:
            self._reap(pid)
            if not _process_alive(pid, ticks):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(2 * delay, self.poll_seconds)

    def stop(self) -> None:
        """SIGTERM the application's process group, wait, then SIGKILL.

        Raises:
            ServiceError: the process survived SIGKILL (e.g. stuck in the kernel).
        """
        info = self._read_pid()
        if info is None:
            return
        pid, ticks = info
        self._reap(pid)
        if _process_alive(pid, ticks):
            self._signal(pid, signal.SIGTERM)
            if not self._wait_gone(pid, ticks, self.stop_timeout_seconds):
                logger.warning("application pid %d ignored SIGTERM; sending SIGKILL", pid)
                self._signal(pid, signal.SIGKILL)
                if not self._wait_gone(pid, ticks, 5.0):
                    raise ServiceError(f"application pid {pid} did not exit after SIGKILL")
            logger.info("stopped application pid %d", pid)
        self.pid_file.unlink(missing_ok=True)
