"""Download, verify, stage, switch, health-check, commit or roll back (DESIGN.md section 7).

The :class:`Installer` is the only part of the agent that changes what runs.
Its order is the safety argument:

1. **Download** the manifest and signature, and verify them
   (:func:`~javia_agent.verification.verify_metadata`: trusted key,
   newer than the running version, the version the server offered) *before*
   downloading the payload, which then streams to a ``.partial`` file capped
   at the signed size and resumable.
2. **Verify** the payload's size and SHA-256
   (:func:`~javia_agent.verification.verify_archive`).
   Before the payload, free disk space is checked for the download plus the
   unpacked release (plus a reserve); too little is refused with the numbers.
3. **Stage** it into ``releases/<version>``
   (:func:`~javia_agent.verification.extract_payload` writes a private staging
   directory and renames it into place only when every member checked out),
   build or reuse its Python environment from ``requirements.txt``
   (:mod:`javia_agent.environments`), install its signed system packages
   (:mod:`javia_agent.apt`, waiting for the dpkg lock) and run the optional
   setup command. Any failure up to here: report ``failed``; the running
   release was never touched.
4. **Switch**: only now stop the service, replace the ``current`` symlink
   atomically (new link + ``os.replace`` + fsync of the directory), start it.
   This stop → switch → start is the only downtime; it is logged.
5. **Health check**: the service must stay active for ``health_seconds`` and
   the optional health command must exit 0 (a release is "good" only after
   this — RAUC's good/bad slots, STYLE.md).
6. **Commit** (report ``completed``) or **roll back**: point ``current`` at
   the previous release, restart it, report ``rolled_back`` with the reason.

Each step is saved in the state file before it runs
(:mod:`javia_agent.state`); :meth:`Installer.recover` continues or undoes an
update interrupted by a crash or power loss, so the device always ends up on
a complete old or new release.

Test hook: ``JAVIA_AGENT_PAUSE_AT`` (see :func:`pause_hook_from_environment`)
makes the agent stop still at a named point so the crash tests can SIGKILL it
there; it is read only when set and is not a setting for devices.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from javia_agent import releases as releases_module
from javia_agent._fs import atomic_write, remove_interrupted_writes
from javia_agent.apt import apt_install_argv, apt_lock_failure, wait_for_dpkg_lock
from javia_agent.client import DeviceClient
from javia_agent.clock import Clock
from javia_agent.config import AgentConfig, AgentPaths
from javia_agent.environments import PythonEnvironments
from javia_agent.errors import (
    AuthenticationError,
    ConfigError,
    CrashLoopError,
    DiskSpaceError,
    DownloadCancelledError,
    DownloadError,
    DownloadTooLargeError,
    InstallError,
    NetworkError,
    PackageManagerLockError,
    ServerError,
    StateError,
)
from javia_agent.releases import Releases
from javia_agent.services import AppService, application_environment, protect_environment_file
from javia_agent.state import (
    PRE_SWITCH_STATES,
    RECOVERY,
    AgentState,
    Recovery,
    StateStore,
    UpdateRecord,
    UpdateSource,
    UpdateState,
)
from javia_updates.errors import JaviaError
from javia_updates.models import InstallDirective, UpdateStatus, UpdateType
from javia_updates.versioning import Version

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from javia_updates.manifest import Manifest

# Verifying, unpacking and the manifest's rules need cryptography (its Rust
# extension and libcrypto, about 6 MiB of resident memory): they are imported
# by the steps that install, never while the agent idles between heartbeats
# (docs/benchmarks.md, agent idle memory).

__all__ = [
    "PAUSE_AT_ENV",
    "InstallOutcome",
    "InstallResult",
    "Installer",
    "MAX_STALLED_DOWNLOADS",
    "Reporter",
    "pause_hook_from_environment",
]

logger = logging.getLogger(__name__)

#: Sends (or queues) one status report: (update id, status, error message or None).
Reporter = Callable[[int, UpdateStatus, "str | None"], None]
Keyring = Mapping[str, "Ed25519PublicKey"]

_MAX_ERROR_CHARS = 2000
#: Agent cycles in a row whose download attempt ended without a new payload
#: byte before the update is reported ``failed`` (each cycle already retried
#: the download ``RetryPolicy.attempts`` times).
MAX_STALLED_DOWNLOADS = 5
_APT_TIMEOUT_SECONDS = 1800.0
_SETUP_TIMEOUT_SECONDS = 1800.0
_EXTRACT_TIMEOUT_SECONDS = 1800.0


def __getattr__(name: str) -> ModuleType:
    """``installer.verification``: :mod:`javia_agent.verification`, imported on first use."""
    if name == "verification":
        from javia_agent import verification

        return verification
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _load_keyring(directory: Path) -> Keyring:
    """The trusted keys in ``directory`` (:func:`javia_updates.keys.load_keyring`), read now."""
    from javia_updates.keys import load_keyring

    return load_keyring(directory)


#: Test hook: comma-separated pause points (state names, or ``staging.extracted``,
#: ``switching.stopped``, ``switching.linked``). Never set on a device.
PAUSE_AT_ENV = "JAVIA_AGENT_PAUSE_AT"
#: How long the test hook pauses, in seconds (default 600).
PAUSE_SECONDS_ENV = "JAVIA_AGENT_PAUSE_SECONDS"


def _no_checkpoint(point: str) -> None:
    return None


def _nothing() -> None:
    return None


def pause_hook_from_environment(
    state_dir: Path, environ: Mapping[str, str] | None = None
) -> Callable[[str], None]:
    """TEST HOOK for the crash tests; a no-op unless ``JAVIA_AGENT_PAUSE_AT`` is set.

    The crash tests kill a real agent process with SIGKILL at each step of an
    update. Some steps last microseconds; with ``JAVIA_AGENT_PAUSE_AT=name``
    the agent, on reaching the pause point ``name`` (a state name, right after
    that state was saved; or ``staging.extracted``, ``switching.stopped``,
    ``switching.linked``), writes ``<state_dir>/paused-at-<name>`` (holding
    its pid) and waits — until the test deletes that file, or for
    ``JAVIA_AGENT_PAUSE_SECONDS`` (default 600) — giving the test a
    deterministic moment to kill it or to change the world around it (stop
    the server, say) before letting it go on. The variables are read once,
    here, and only matter when set: a device never sets them.

    Returns:
        The checkpoint callable for :attr:`Installer.checkpoint`.
    """
    env = os.environ if environ is None else environ
    names = env.get(PAUSE_AT_ENV, "")
    points = {name.strip() for name in names.split(",") if name.strip()}
    if not points:
        return _no_checkpoint
    seconds = float(env.get(PAUSE_SECONDS_ENV, "600"))
    directory = Path(state_dir)

    def pause(point: str) -> None:
        if point not in points:
            return
        logger.warning("test hook %s: pausing at %s for %g s", PAUSE_AT_ENV, point, seconds)
        marker = directory / f"paused-at-{point}"
        atomic_write(marker, f"{os.getpid()}\n".encode())
        deadline = time.monotonic() + seconds
        while marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        marker.unlink(missing_ok=True)
        logger.warning("test hook %s: going on after %s", PAUSE_AT_ENV, point)

    return pause


def _available_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def _total_bytes(path: Path) -> int | None:
    """Size in bytes of the file system holding ``path``; ``None`` if unknown."""
    try:
        return shutil.disk_usage(path).total
    except OSError:
        return None


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (a file system to ask about)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _amount(count: int) -> str:
    return f"{count:,} bytes ({count / (1024 * 1024):.1f} MiB)"


class InstallResult(StrEnum):
    """How an install attempt ended."""

    COMPLETED = "completed"  # the new release is running and committed
    FAILED = "failed"  # refused before the switch; the old release kept running
    ROLLED_BACK = "rolled_back"  # the new release was unhealthy; the old one runs again
    RETRY_LATER = "retry_later"  # network trouble or shutdown; state kept to resume
    SKIPPED = "skipped"  # this version failed before: never installed again
    ALREADY_RUNNING = (
        "already_running"  # the offered version is the running one; reported completed
    )
    ABANDONED = "abandoned"  # the update disappeared from the server (superseded, cancelled)
    #: The server's answer or bytes were wrong before the package verified (bad
    #: signature, another version's manifest, a payload not matching its signed
    #: hash, an oversized or refused download): nothing is marked failed, the
    #: download is dropped and the update is tried again later (with backoff).
    SERVER_FAULT = "server_fault"


@dataclass(frozen=True)
class InstallOutcome:
    """The result of :meth:`Installer.install` and friends.

    Attributes:
        result: how the attempt ended.
        version: the version it was about.
        reason: why it failed, was rolled back or paused.
        retry_after_seconds: for :attr:`InstallResult.RETRY_LATER`, how long
            the server asked the device to wait (its ``Retry-After``), if it did.
    """

    result: InstallResult
    version: str
    reason: str | None = None
    retry_after_seconds: float | None = None


class _RetryLater(Exception):
    def __init__(self, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class _Abandon(Exception):
    pass


class _DownloadGaveUp(DownloadError):
    """The payload never arrived whole: the update is reported failed, not marked failed."""


@dataclass
class _Run:
    """One update being driven through its steps: the latest saved state."""

    state: AgentState
    directive: InstallDirective | None = None
    manifest: Manifest | None = None
    #: The payload matched its verified, signed manifest (set at staging): only
    #: from then on may a failure mark the version failed (DESIGN.md section 10).
    package_verified: bool = False

    @property
    def record(self) -> UpdateRecord:
        if self.state.update is None:  # pragma: no cover - guarded by callers
            raise RuntimeError("no update in progress")
        return self.state.update


@dataclass
class Installer:
    """Installs releases safely; see the module docstring for the steps.

    Attributes:
        paths: the on-disk layout.
        service: the application service (systemd or command).
        keyring: returns the trusted keys; read at every install so a key
            dropped into the keyring directory is used without a restart.
        client: the device API client; needed for server updates only.
        reporter: queues status reports (server updates only).
        clock: monotonic clock and sleep for the health window.
        health_seconds: how long the new release must stay active.
        health_poll_seconds: how often ``is_active`` is asked meanwhile.
        health_command: optional argv run in the new release after the health
            window; exit 0 means healthy.
        health_command_timeout_seconds: limit for the health command.
        setup_command: optional argv run in the staged release before the
            switch; exit 0 required.
        apt_command: argv prefix to install the manifest's signed
            ``system_packages`` (``--`` and the package names are appended).
        dpkg_lock_file: the dpkg frontend lock apt needs (tests: a temp file).
        dpkg_lock_timeout_seconds: how long to wait for another package
            manager to release it before trying again later.
        python_envs: builds and shares the releases' Python environments
            (``None``: a release's ``requirements.txt`` is ignored).
        keyring_dir: the keyring directory a committed package's signed key
            rotation is applied to (``None``: not applied).
        app_env: extra environment for the application and those commands.
        keep_releases: previous releases kept besides the current one.
        max_state_saves: the crash-loop breaker (see :class:`StateStore`).
        disk_reserve_bytes: free bytes that must remain on each file system
            after the download and the unpacked release.
        free_bytes: free bytes on the file system holding a path (injectable).
        should_stop: polled during downloads; True stops them for a resume later.
        runner: runs commands (``subprocess.run``-compatible; injectable).
        keepalive: called often during long steps (the systemd watchdog ping).
        keepalive_during: a context manager held around single blocking calls
            (unpacking, pip, apt, stopping the service) that pings meanwhile.
        checkpoint: called with each state name right after it is saved, and
            with ``staging.extracted``, ``switching.stopped`` and
            ``switching.linked`` (the crash tests' pause hook).
    """

    paths: AgentPaths
    service: AppService
    keyring: Callable[[], Keyring]
    client: DeviceClient | None = None
    reporter: Reporter | None = None
    clock: Clock = field(default_factory=Clock)
    health_seconds: float = 30.0
    health_poll_seconds: float = 0.25
    health_command: Sequence[str] | None = None
    health_command_timeout_seconds: float = 60.0
    setup_command: Sequence[str] | None = None
    apt_command: Sequence[str] = ("apt-get", "install", "--yes", "--no-install-recommends", "--")
    dpkg_lock_file: Path = Path("/var/lib/dpkg/lock-frontend")
    dpkg_lock_timeout_seconds: float = 300.0
    python_envs: PythonEnvironments | None = None
    keyring_dir: Path | None = None
    app_env: Mapping[str, str] = field(default_factory=dict)
    keep_releases: int = 1
    max_state_saves: int = 30
    disk_reserve_bytes: int = 0
    free_bytes: Callable[[Path], int] = _available_bytes
    should_stop: Callable[[], bool] = field(default=lambda: False)
    runner: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run
    keepalive: Callable[[], object] = _nothing
    keepalive_during: Callable[[], AbstractContextManager[object]] = nullcontext
    checkpoint: Callable[[str], None] = _no_checkpoint

    def __post_init__(self) -> None:
        self.store = StateStore(self.paths.state_file, max_saves=self.max_state_saves)
        self.releases = Releases(self.paths, keep=self.keep_releases, python_envs=self.python_envs)

    @classmethod
    def from_config(
        cls,
        config: AgentConfig,
        service: AppService,
        *,
        client: DeviceClient | None = None,
        reporter: Reporter | None = None,
        clock: Clock | None = None,
        should_stop: Callable[[], bool] | None = None,
        keepalive: Callable[[], object] | None = None,
        keepalive_during: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> Installer:
        """An installer set up from the agent configuration.

        The crash tests' pause hook is read from the environment here
        (:func:`pause_hook_from_environment`); it does nothing unless set.
        """
        keyring_dir = config.keyring_dir
        during = keepalive_during or nullcontext
        envs = None
        if config.python_envs:
            envs = PythonEnvironments(
                config.paths.envs_dir,
                pip_args=tuple(config.pip_args),
                timeout_seconds=config.pip_timeout_seconds,
                keepalive=during,
                python=config.venv_python or sys.executable,
            )
        return cls(
            paths=config.paths,
            service=service,
            keyring=lambda: _load_keyring(keyring_dir),
            client=client,
            reporter=reporter,
            clock=clock or Clock(),
            health_seconds=config.health_seconds,
            health_command=config.health_command,
            health_command_timeout_seconds=config.health_command_timeout_seconds,
            setup_command=config.setup_command,
            apt_command=tuple(config.apt_command),
            dpkg_lock_file=config.dpkg_lock_file,
            dpkg_lock_timeout_seconds=config.dpkg_lock_timeout_seconds,
            python_envs=envs,
            keyring_dir=keyring_dir,
            app_env=dict(config.app_env),
            keep_releases=config.keep_releases,
            max_state_saves=config.max_state_saves,
            disk_reserve_bytes=config.disk_reserve_bytes,
            should_stop=should_stop or (lambda: False),
            keepalive=keepalive or _nothing,
            keepalive_during=during,
            checkpoint=pause_hook_from_environment(config.paths.state_dir),
        )

    # -- what runs -----------------------------------------------------------------

    def current_release(self) -> str | None:
        """The version ``current`` points to (``releases/<version>``), or ``None``."""
        return self.releases.current()

    def running_version(self) -> Version | None:
        """The running release's version, the anti-rollback floor; ``None`` if none."""
        return self.releases.running_version()

    def load_state(self) -> AgentState:
        """The saved state (read-only use: ``javia agent status``)."""
        return self.store.load()

    # -- public operations ----------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold ``<state_dir>/install.lock``: one installing process at a time.

        Raises:
            StateError: another process (the agent daemon or ``javia agent
                install``) holds it.
        """
        self.paths.state_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.paths.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StateError(
                    f"another javia agent process is installing (lock {self.paths.lock_file}); "
                    "try again when it is done"
                ) from None
            yield
        finally:
            os.close(descriptor)

    def recover(self) -> InstallOutcome | None:
        """Finish or undo an update interrupted by a crash (the recovery table).

        Called when the agent starts. Pre-switch states only get their debris
        removed (a half-written staging directory); the update continues when
        the server next says to install. Post-switch states converge now:
        health check, commit, roll back or report, per
        :data:`javia_agent.state.RECOVERY`.

        First, holding the install lock (the agent holds its instance lock
        already), it deletes the temporary files of atomic writes a crash
        interrupted (``.state.json.*.tmp``, ``.app.pid.*.tmp``,
        ``outbox/.*.tmp``, ...; :func:`javia_agent._fs.remove_interrupted_writes`):
        only that name pattern, only in the state and outbox directories.

        Returns:
            The outcome of a recovered post-switch update, else ``None``.

        Raises:
            StateError: another process is installing, or the state file
                cannot be read or written.
        """
        with self._locked():
            self._remove_interrupted_writes()
            return self._recover_locked()

    def _remove_interrupted_writes(self) -> None:
        paths = self.paths
        remove_interrupted_writes(
            paths.state_dir,
            {
                paths.state_file.name,
                paths.pid_file.name,
                paths.heartbeat_file.name,
                paths.app_env_file.name,
            },
        )
        remove_interrupted_writes(paths.outbox_dir)
        protect_environment_file(paths.app_env_file)

    def install(self, directive: InstallDirective) -> InstallOutcome:
        """Install the update a server directive names (or resume it).

        Args:
            directive: the pending update from the heartbeat answer; its
                ``version`` must be the signed manifest's.

        Returns:
            The outcome; reports are queued through ``reporter`` on the way
            (downloading → installing → completed | failed | rolled_back).

        Raises:
            StateError: another process is installing, or state I/O failed.
            RuntimeError: no client was configured.
        """
        if self.client is None:
            raise RuntimeError("Installer.install needs a DeviceClient")
        with self._locked():
            self._recover_locked()
            state = self.store.load()
            version = str(directive.version)  # a parsed Version (InstallDirective): vX.Y.Z
            if version in state.failed_versions:
                return InstallOutcome(
                    InstallResult.SKIPPED, version, f"{version} failed on this device before"
                )
            if self.current_release() == version:
                self._report(directive.update_id, UpdateStatus.COMPLETED, None)
                return InstallOutcome(InstallResult.ALREADY_RUNNING, version, "already running")
            running_version = self.running_version()
            if running_version is not None and directive.version < running_version:
                # Refused before any download; reported failed (the row can never
                # succeed here) but not marked failed: the device never ran it.
                reason = (
                    f"{version} is older than the running {running_version}: refusing a downgrade"
                )
                logger.error("update %s (%s): %s", version, directive.update_id, reason)
                self._report(directive.update_id, UpdateStatus.FAILED, reason)
                return InstallOutcome(InstallResult.FAILED, version, reason)
            run = _Run(state=state, directive=directive)
            record = state.update
            resume = (
                record is not None
                and record.source == UpdateSource.SERVER
                and record.update_id == directive.update_id
                and record.version == version
                and record.state in PRE_SWITCH_STATES
            )
            if record is not None and not resume:
                self._abandon(run, f"superseded by update {directive.update_id} ({version})")
            if resume and record is not None:
                try:
                    self._save(run, record.state, attempts=record.attempts + 1)
                except CrashLoopError as error:
                    # Marked failed only if its payload had verified (staging).
                    return self._fail(
                        run, str(error), blacklist=record.state == UpdateState.STAGING
                    )
                start = record.state
                logger.info("resuming update %s (%s) at %s", version, directive.update_id, start)
            else:
                running = self.current_release()
                new = UpdateRecord(
                    update_id=directive.update_id,
                    version=version,
                    previous_version=running,
                    state=UpdateState.DOWNLOADING,
                    source=UpdateSource.SERVER,
                    size=directive.size,
                    attempts=1,
                    started_at=self.clock.wall(),
                )
                run.state = self._persist(run.state.model_copy(update={"update": new}))
                start = UpdateState.DOWNLOADING
                logger.info(
                    "installing update %s (%s), running %s", version, directive.update_id, running
                )
            return self._advance(run, start)

    def install_from_directory(self, package_dir: Path) -> InstallOutcome:
        """Install a package directory (USB stick, field service): ``javia agent install``.

        The same steps as a network update from "verify" on, without reports.
        The version must be newer than the running one; versions that failed
        before *are* accepted here (a person asked for them explicitly).

        Raises:
            StateError: another process is installing, or an update is being
                switched right now.
            PackageError, SignatureError, ManifestError: the package is refused
                before anything was written (missing files, untrusted key,
                downgrade).
            DiskSpaceError: the unpacked release would not fit; nothing was written.
        """
        from javia_agent import verification
        from javia_updates.packaging import read_package_dir

        package_dir = Path(package_dir).resolve()
        read_package_dir(package_dir)  # refuse a missing or incomplete package before touching disk
        with self._locked():
            self._recover_locked()
            state = self.store.load()
            manifest_bytes, signature_bytes, _ = read_package_dir(package_dir)
            verified = verification.verify_metadata(
                manifest_bytes,
                signature_bytes,
                self.keyring(),
                current_version=self.running_version(),
            )
            self._check_disk_space(verified.manifest, download_bytes=0)
            run = _Run(state=state, manifest=verified.manifest)
            if state.update is not None:
                self._abandon(run, "a package directory is being installed instead")
            record = UpdateRecord(
                update_id=None,
                version=verified.manifest.version,
                previous_version=self.current_release(),
                state=UpdateState.VERIFYING,
                source=UpdateSource.DIRECTORY,
                package_dir=str(package_dir),
                size=verified.manifest.archive.size,
                attempts=1,
                started_at=self.clock.wall(),
            )
            run.state = self._persist(run.state.model_copy(update={"update": record}))
            logger.info("installing %s from %s", record.version, package_dir)
            return self._advance(run, UpdateState.VERIFYING)

    def signed_update_type(self, directive: InstallDirective) -> UpdateType:
        """The ``update_type`` signed in the manifest of the package ``directive`` offers.

        Downloads the manifest and its signature (small, capped; nothing is
        written) and verifies them as an install would: a trusted key, the
        version the directive names, newer than the running one. The agent
        asks this before it honours an urgent or instant directive (the
        server may not make an update more urgent than signed).

        Raises:
            NetworkError, ServerError, DownloadError: fetching failed.
            SignatureError, ManifestError, PackageError: the metadata did not
                verify (a server fault: nothing is marked failed).
            RuntimeError: no client was configured.
        """
        from javia_agent import verification

        if self.client is None:
            raise RuntimeError("Installer.signed_update_type needs a DeviceClient")
        manifest_bytes = self.client.download_manifest(
            directive.manifest_url, should_stop=self.should_stop
        )
        signature_bytes = self.client.download_signature(
            directive.signature_url, should_stop=self.should_stop
        )
        verified = verification.verify_metadata(
            manifest_bytes,
            signature_bytes,
            self.keyring(),
            current_version=self.running_version(),
            expected_version=str(directive.version),
        )
        return verified.manifest.update_type

    def abandon_pending(self, reason: str) -> bool:
        """Drop a paused pre-switch server update (e.g. the server withdrew it).

        Returns:
            Whether an update was dropped. Post-switch updates are never
            dropped: they must converge first.

        Raises:
            StateError: another process is installing.
        """
        with self._locked():
            state = self.store.load()
            record = state.update
            if record is None or record.state not in PRE_SWITCH_STATES:
                return False
            self._abandon(_Run(state=state), reason)
            return True

    # -- the state machine ------------------------------------------------------------

    def _persist(self, state: AgentState) -> AgentState:
        """Save ``state`` (see :meth:`StateStore.save`), then pass the checkpoint."""
        saved = self.store.save(state)
        self.checkpoint(str(saved.state))
        return saved

    def _save(self, run: _Run, step: UpdateState, **changes: object) -> None:
        record = run.record.model_copy(update={"state": step, **changes})
        run.state = self._persist(run.state.model_copy(update={"update": record}))

    def _package_dir(self, record: UpdateRecord) -> Path:
        if record.source == UpdateSource.DIRECTORY:
            return Path(record.package_dir or "")
        if record.update_id is None:
            raise StateError(f"update {record.version} from the server has no update id")
        return self.paths.download_dir(record.update_id)

    def _advance(self, run: _Run, start: UpdateState) -> InstallOutcome:
        """Drive ``run`` from the saved step ``start`` to its end."""
        step = start
        if step in PRE_SWITCH_STATES:
            try:
                self._pre_switch(run, step)
            except _RetryLater as error:
                return InstallOutcome(
                    InstallResult.RETRY_LATER,
                    run.record.version,
                    str(error),
                    retry_after_seconds=error.retry_after_seconds,
                )
            except PackageManagerLockError as error:
                logger.warning("staging %s paused: %s", run.record.version, error)
                return InstallOutcome(InstallResult.RETRY_LATER, run.record.version, str(error))
            except _Abandon as error:
                version = run.record.version  # _abandon clears the record
                self._abandon(run, str(error))
                return InstallOutcome(InstallResult.ABANDONED, version, str(error))
            except (ConfigError, DiskSpaceError, _DownloadGaveUp) as error:
                # The device's own configuration or disk is at fault, or the server
                # never delivered the payload: report it, but let the version be
                # offered again (it is not marked failed).
                return self._fail(run, _reason(error), blacklist=False)
            except (JaviaError, OSError, subprocess.SubprocessError) as error:
                if not run.package_verified and run.record.source == UpdateSource.SERVER:
                    return self._server_fault(run, _reason(error))
                return self._fail(run, _reason(error), blacklist=run.package_verified)
            step = UpdateState.SWITCHING
        if step == UpdateState.SWITCHING:
            try:
                self._save(run, UpdateState.SWITCHING)
            except CrashLoopError as error:
                if run.record.state in PRE_SWITCH_STATES:
                    # The loop breaker stopped the switch before it began: nothing
                    # was touched, so this is a failure, not a rollback (which the
                    # state table does not allow from a pre-switch state).
                    return self._fail(run, str(error))
                return self._roll_back(run, f"switching to {run.record.version}: {error}")
            try:
                self._switch(run)
            except (JaviaError, OSError) as error:
                return self._roll_back(
                    run, f"switching to {run.record.version} failed: {_reason(error)}"
                )
            step = UpdateState.HEALTH_CHECK
        if step == UpdateState.HEALTH_CHECK:
            try:
                self._save(run, UpdateState.HEALTH_CHECK)
                problem = self._health_check(run.record.version)
            except (JaviaError, OSError) as error:
                problem = _reason(error)
            if problem is not None:
                return self._roll_back(run, problem)
            step = UpdateState.COMMITTING
        if step == UpdateState.COMMITTING:
            return self._commit(run)
        if step == UpdateState.ROLLING_BACK:
            return self._roll_back(run, run.record.error or "interrupted while rolling back")
        if step == UpdateState.REPORTING:
            return self._report_final(run)
        raise RuntimeError(f"cannot advance an update from state {step}")  # pragma: no cover

    def _pre_switch(self, run: _Run, step: UpdateState) -> None:
        """Download (server updates), verify and stage; raise to fail, retry or abandon."""
        from javia_agent import verification
        from javia_updates.manifest import PAYLOAD_NAME
        from javia_updates.packaging import read_package_dir

        record = run.record
        package_dir = self._package_dir(record)
        if not self.keyring():
            where = f" ({self.keyring_dir})" if self.keyring_dir is not None else ""
            raise ConfigError(
                f"this device has no trusted keys in its keyring{where}: copy the operator's "
                "public key (*.pub) there; the update is offered again afterwards"
            )
        if step == UpdateState.DOWNLOADING:
            self._report(record.update_id, UpdateStatus.DOWNLOADING, None)
            self._download(run, package_dir)
            step = UpdateState.VERIFYING
        if step == UpdateState.VERIFYING:
            self._save(run, UpdateState.VERIFYING)
            manifest_bytes, signature_bytes, payload = read_package_dir(package_dir)
            verified = verification.verify_metadata(
                manifest_bytes,
                signature_bytes,
                self.keyring(),
                current_version=self.running_version(),
                expected_version=record.version,
            )
            run.manifest = verified.manifest
            verification.verify_archive(payload, verified.manifest)
            step = UpdateState.STAGING
        if step == UpdateState.STAGING:
            self._save(run, UpdateState.STAGING)
            self._report(record.update_id, UpdateStatus.INSTALLING, None)
            if run.manifest is None:  # resumed at staging: re-establish trust from disk
                manifest_bytes, signature_bytes, _ = read_package_dir(package_dir)
                run.manifest = verification.verify_metadata(
                    manifest_bytes,
                    signature_bytes,
                    self.keyring(),
                    current_version=self.running_version(),
                    expected_version=record.version,
                ).manifest
            run.package_verified = True  # its SHA-256 matched the signed manifest at verifying
            self._stage(run.manifest, package_dir / PAYLOAD_NAME)

    def _download(self, run: _Run, package_dir: Path) -> None:
        """Fetch and verify the metadata, then stream the payload (resumable)."""
        from javia_agent import verification
        from javia_updates.manifest import MANIFEST_NAME, PAYLOAD_NAME, SIGNATURE_NAME

        directive = run.directive
        client = self.client
        if directive is None or client is None:  # pragma: no cover - guarded by install()
            raise RuntimeError("downloading needs a directive and a client")
        package_dir.mkdir(parents=True, exist_ok=True)
        had_bytes = self._downloaded_bytes(package_dir)
        manifest_path = package_dir / MANIFEST_NAME
        signature_path = package_dir / SIGNATURE_NAME
        try:
            if manifest_path.exists() and signature_path.exists():
                manifest_bytes, signature_bytes = (
                    manifest_path.read_bytes(),
                    signature_path.read_bytes(),
                )
            else:
                manifest_bytes = client.download_manifest(
                    directive.manifest_url, should_stop=self.should_stop
                )
                signature_bytes = client.download_signature(
                    directive.signature_url, should_stop=self.should_stop
                )
            verified = verification.verify_metadata(
                manifest_bytes,
                signature_bytes,
                self.keyring(),
                current_version=self.running_version(),
                expected_version=str(directive.version),
            )
            # Only verified metadata is kept on disk, for a resume after a crash.
            atomic_write(manifest_path, manifest_bytes)
            atomic_write(signature_path, signature_bytes)
            run.manifest = verified.manifest
            size = verified.manifest.archive.size
            if size != directive.size:
                logger.warning(
                    "server says the payload is %d bytes, the signed manifest %d: using the signed size",
                    directive.size,
                    size,
                )
            payload = package_dir / PAYLOAD_NAME
            have = 0
            for candidate in (payload, payload.with_name(payload.name + ".partial")):
                if candidate.exists():
                    have = max(have, min(candidate.stat().st_size, size))
            self._check_disk_space(verified.manifest, download_bytes=size - have)
            client.download_payload(
                directive.download_url,
                payload,
                size,
                resume=True,
                should_stop=self.should_stop,
                progress=self._download_progress,
            )
        except DownloadTooLargeError:
            raise
        except DownloadCancelledError as error:  # shutting down: not the download's fault
            logger.warning("download of %s paused: %s", directive.version, error)
            raise _RetryLater(str(error)) from None
        except NetworkError as error:
            # No answer at all (Wi-Fi down, server unreachable): the package is not
            # at fault, so this never counts towards giving up on it.
            logger.warning("download of %s paused: %s", directive.version, error)
            raise _RetryLater(str(error)) from None
        except (DownloadError, AuthenticationError) as error:
            self._count_stalled_download(run, package_dir, had_bytes, error)
            logger.warning("download of %s paused: %s", directive.version, error)
            raise _RetryLater(str(error)) from None
        except ServerError as error:
            if error.status_code in (404, 410):
                raise _Abandon(
                    f"update {directive.update_id} is gone from the server ({error})"
                ) from None
            if error.status_code is None or error.status_code >= 500 or error.status_code == 429:
                logger.warning("download of %s paused: %s", directive.version, error)
                raise _RetryLater(str(error), error.retry_after_seconds) from None
            raise

    @staticmethod
    def _downloaded_bytes(package_dir: Path) -> int:
        """Payload bytes on disk (complete or ``.partial``) for a download directory."""
        from javia_updates.manifest import PAYLOAD_NAME

        payload = package_dir / PAYLOAD_NAME
        have = 0
        for candidate in (payload, payload.with_name(payload.name + ".partial")):
            try:
                have = max(have, candidate.stat().st_size)
            except OSError:
                continue
        return have

    def _count_stalled_download(
        self, run: _Run, package_dir: Path, had_bytes: int, error: Exception
    ) -> None:
        """Count an interrupted download cycle that got no new byte; give up after a few.

        A payload the server can never deliver (it cuts every answer at the
        same offset) would otherwise be retried every cycle forever, and the
        device would never report ``failed`` nor move on to a newer update.
        The count is kept in ``state.json`` so restarts do not reset it; any
        progress resets it.

        Raises:
            DownloadError: :data:`MAX_STALLED_DOWNLOADS` cycles in a row made
                no progress; the caller fails the update (and drops the
                partial file).
        """
        record = run.record
        progressed = self._downloaded_bytes(package_dir) > had_bytes
        stalled = 0 if progressed else record.stalled_cycles + 1
        if stalled != record.stalled_cycles:
            self._save(run, record.state, stalled_cycles=stalled)
        if stalled >= MAX_STALLED_DOWNLOADS:
            raise _DownloadGaveUp(
                f"download of {record.version} gave up after {stalled} attempts in a row "
                f"without a new byte (stuck at {had_bytes:,} bytes): {error}"
            )

    def _check_disk_space(self, manifest: Manifest, *, download_bytes: int) -> None:
        """Refuse early when the download plus the unpacked release would not fit.

        Each file system (the downloads under ``state_dir``, the releases
        under ``install_root``; often the same one) must keep
        ``disk_reserve_bytes`` free after taking its share. A Python
        environment built from ``requirements.txt`` is not counted: its size
        is unknown until pip has run.

        Raises:
            DiskSpaceError: with the bytes needed and free, per file system.
            InstallError: a directory cannot be created, or lies on a file
                system that reports no size at all (``/proc``, ``/sys``).
        """
        needs: dict[int, tuple[Path, list[str], int]] = {}
        for directory, what, count in (
            (self.paths.downloads_dir, "download", max(0, download_bytes)),
            (self.paths.releases_dir, "unpacked release", manifest.unpacked_size),
        ):
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise InstallError(
                    f"cannot create {directory} for the {what} of {manifest.version}: "
                    f"{error.strerror or error} (check install_root and state_dir)"
                ) from None
            where = _existing(directory)
            if _total_bytes(where) == 0:
                raise InstallError(
                    f"{where} is on a file system with no size (a virtual one such as /proc?): "
                    "install_root and state_dir must be on a disk"
                )
            device = where.stat().st_dev
            path, parts, total = needs.get(device, (where, [], 0))
            parts.append(f"{what} {count:,}")
            needs[device] = (path, parts, total + count)
        for path, parts, total in needs.values():
            required = total + self.disk_reserve_bytes
            free = self.free_bytes(path)
            if free < required:
                raise DiskSpaceError(
                    f"not enough disk space for {manifest.version} on {path}: needs "
                    f"{_amount(required)} ({', '.join(parts)}, reserve "
                    f"{self.disk_reserve_bytes:,} bytes) but only {_amount(free)} are free"
                )

    def _download_progress(self, received: int, total: int) -> None:
        """Each downloaded chunk: ping the watchdog (a stalled read times out on its own)."""
        self.keepalive()

    def _stage(self, manifest: Manifest, payload: Path) -> None:
        """Extract into ``releases/<version>`` and run the setup steps; remove it on failure."""
        from javia_agent import verification

        release = self.paths.release_dir(manifest.parsed_version)
        self.paths.releases_dir.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(release):
            if self.current_release() == manifest.version:  # pragma: no cover - refused earlier
                raise InstallError(f"{manifest.version} is the running release")
            releases_module._remove_tree(release)  # left over from an interrupted staging
        with self.keepalive_during():
            verification.extract_payload(payload, manifest, release)
        self.checkpoint("staging.extracted")
        try:
            if self.python_envs is not None:
                self.python_envs.prepare(release)
            if manifest.system_packages:
                self._install_system_packages(manifest, release)
            if self.setup_command:
                self._run_command(
                    list(self.setup_command),
                    what="the setup command",
                    cwd=release,
                    env=application_environment(release, self.paths.activity_file, self.app_env),
                    timeout=_SETUP_TIMEOUT_SECONDS,
                )
        except BaseException:
            releases_module._remove_tree(release)
            self.releases.prune_environments()
            raise

    def _install_system_packages(self, manifest: Manifest, release: Path) -> None:
        """``apt-get install -- NAMES`` once the dpkg lock is free (waiting up to the limit).

        Raises:
            PackageManagerLockError: another package manager kept the lock
                (the update is tried again later).
            InstallError: a name breaks Debian policy, or apt failed.
        """
        argv = apt_install_argv(self.apt_command, manifest.system_packages)
        deadline = self.clock.monotonic() + self.dpkg_lock_timeout_seconds
        while True:
            wait_for_dpkg_lock(
                self.dpkg_lock_file,
                timeout_seconds=max(0.0, deadline - self.clock.monotonic()),
                monotonic=self.clock.monotonic,
                sleep=self.clock.sleep,
                keepalive=self.keepalive,
            )
            result = self._run_command(
                argv,
                what="installing system packages",
                cwd=release,
                env={"DEBIAN_FRONTEND": "noninteractive"},
                timeout=_APT_TIMEOUT_SECONDS,
                check=False,
            )
            if result.returncode == 0:
                return
            output = (result.stderr or b"").decode("utf-8", "replace") + (
                result.stdout or b""
            ).decode("utf-8", "replace")
            if not apt_lock_failure(output):
                raise InstallError(
                    f"installing system packages ({argv[0]}) exited with status "
                    f"{result.returncode}: {_tail(result)}"
                )
            if self.clock.monotonic() >= deadline:
                raise PackageManagerLockError(
                    f"apt could not get the dpkg lock within {self.dpkg_lock_timeout_seconds:g} s "
                    f"({_tail(result)}); will try again later"
                )
            logger.info("apt found the dpkg lock taken; waiting for it again")
            self.clock.sleep(1.0)

    def _run_command(
        self,
        argv: list[str],
        *,
        what: str,
        cwd: Path,
        env: Mapping[str, str],
        timeout: float,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        full_env = {**os.environ, **env}
        try:
            with self.keepalive_during():
                result = self.runner(
                    argv, cwd=cwd, env=full_env, capture_output=True, timeout=timeout, check=False
                )
        except subprocess.TimeoutExpired:
            raise InstallError(
                f"{what} ({argv[0]}) did not finish within {timeout:.0f} s"
            ) from None
        except OSError as error:
            raise InstallError(f"{what} ({argv[0]}) could not run: {error.strerror}") from None
        if check and result.returncode != 0:
            raise InstallError(
                f"{what} ({argv[0]}) exited with status {result.returncode}: {_tail(result)}"
            )
        return result

    def _switch(self, run: _Run) -> None:
        """Stop → point ``current`` at the new release → start: the only downtime."""
        version = run.record.version
        logger.info("switching to %s: stopping the application", version)
        began = self.clock.monotonic()
        with self.keepalive_during():
            self.service.stop()
        stopped = self.clock.monotonic()
        self.checkpoint("switching.stopped")
        self.releases.point_current(version)
        self.checkpoint("switching.linked")
        linked = self.clock.monotonic()
        logger.info("current -> releases/%s; starting the application", version)
        with self.keepalive_during():
            self.service.start()
        started = self.clock.monotonic()
        logger.info(
            "application down for %.3f s (stop %.3f s, switch %.3f s, start %.3f s)",
            started - began,
            stopped - began,
            linked - stopped,
            started - linked,
        )

    def _health_check(self, version: str) -> str | None:
        """None if the running new release is healthy, else the reason it is not."""
        started = self.clock.monotonic()
        deadline = started + self.health_seconds
        while True:
            self.keepalive()
            if not self.service.is_active():
                elapsed = self.clock.monotonic() - started
                return f"{version} stopped running {elapsed:.1f} s into its {self.health_seconds:g} s health check"
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                break
            self.clock.sleep(min(self.health_poll_seconds, remaining))
        if self.health_command:
            release = self.releases.directory(version)
            try:
                self._run_command(
                    list(self.health_command),
                    what="the health command",
                    cwd=release,
                    env=application_environment(release, self.paths.activity_file, self.app_env),
                    timeout=self.health_command_timeout_seconds,
                )
            except InstallError as error:
                return f"{version} is unhealthy: {error}"
            if not self.service.is_active():
                return f"{version} stopped running during its health command"
        logger.info("%s passed its health check (%g s)", version, self.health_seconds)
        return None

    def _commit(self, run: _Run) -> InstallOutcome:
        """The point of no return: installed version and final status written together."""
        record = run.record
        try:
            self._save(run, UpdateState.COMMITTING)
        except CrashLoopError as error:
            return self._roll_back(run, str(error))
        # Before the download is deleted: a crash after this step finds it applied
        # (idempotent), a crash before it finds the metadata still on disk.
        self._apply_keyring_changes(record)
        self.releases.prune(keep_previous=record.previous_version)
        self.releases.remove_download(record)
        run.state = self._persist(
            run.state.model_copy(
                update={
                    "current_version": record.version,
                    "attention": None,  # a healthy release runs and is committed again
                    "update": record.model_copy(
                        update={
                            "state": UpdateState.REPORTING,
                            "final_status": UpdateStatus.COMPLETED,
                        }
                    ),
                }
            )
        )
        logger.info("committed %s", record.version)
        return self._report_final(run)

    def _apply_keyring_changes(self, record: UpdateRecord) -> None:
        """Apply the committed package's signed keyring changes (key rotation, docs/security.md).

        Runs in the commit step only, after the health check: the package's
        signature is verified against the keyring again and its ``keyring``
        changes applied (:func:`javia_agent.keyring.apply_package_keyring_changes`;
        idempotent, so crash recovery may run it twice). The release is good
        whatever happens here: a refusal is logged, never rolled back.
        """
        if self.keyring_dir is None:
            return
        from javia_agent.keyring import apply_package_keyring_changes
        from javia_updates.packaging import read_package_dir

        try:
            manifest_bytes, signature_bytes, _ = read_package_dir(self._package_dir(record))
            update = apply_package_keyring_changes(
                self.keyring_dir, manifest_bytes, signature_bytes
            )
        except (JaviaError, OSError) as error:
            logger.error("keyring changes of %s not applied: %s", record.version, error)
            return
        if update.changed:
            logger.info(
                "keyring after %s: added %s, retired %s",
                record.version,
                ", ".join(update.added) or "none",
                ", ".join(update.retired) or "none",
            )

    def _roll_back(self, run: _Run, reason: str) -> InstallOutcome:
        """Point ``current`` back at the previous release, restart it, report rolled_back."""
        record = run.record
        logger.warning("rolling back %s: %s", record.version, reason)
        try:
            self._save(run, UpdateState.ROLLING_BACK, error=_clip(reason))
        except CrashLoopError as error:
            return self._end_rollback_loop(run, f"{reason}; {error}")
        problem = self._restore_previous(record)
        if problem is not None:
            reason = f"{reason}; {problem}"
        self.releases.discard(record.version)
        self.releases.remove_download(record)
        return self._finish(run, UpdateStatus.ROLLED_BACK, reason)

    def _restore_previous(self, record: UpdateRecord) -> str | None:
        """Stop the application, point ``current`` at the previous release (or at nothing
        without one) and start it; return why restarting it failed, else ``None``."""
        previous = record.previous_version
        try:
            self.service.stop()
        except JaviaError as error:
            logger.error("stopping %s during rollback failed: %s", record.version, error)
        if previous is not None and self.releases.directory(previous).is_dir():
            self.releases.point_current(previous)
            try:
                self.service.start()
            except JaviaError as error:
                logger.error("restarting %s after rollback failed: %s", previous, error)
                return f"restarting {previous} failed too: {error}"
        else:
            self.releases.point_current(None)
        return None

    def _end_rollback_loop(self, run: _Run, reason: str) -> InstallOutcome:
        """The rollback kept crashing the agent until the save cap tripped: end honestly.

        Reporting ``rolled_back`` while the release that failed its health
        check still runs would be a lie, and trying the rollback again and
        again is the loop being broken. So:

        1. the worst case is saved first, durably: the update ends ``failed``
           with the reason "rollback could not complete: ...", and the device
           is marked for attention (:attr:`AgentState.attention`, shown by
           ``javia agent status``, sent as ``attention`` in every heartbeat's
           metadata, cleared when an update commits);
        2. the rollback is then tried exactly once more (a crash here
           restarts into the saved report, never into another attempt);
        3. if ``current`` then points at the previous release and the
           application runs (or, with no previous release, nothing is current
           and nothing runs), the update ends ``rolled_back`` instead and the
           mark is taken back. The failed release is left for the next commit's
           pruning (removing it may be what crashed).
        """
        record = run.record
        previous = record.previous_version
        attention_before = run.state.attention
        message = _clip(f"rollback could not complete: {reason}") or reason
        failed = list(run.state.failed_versions)
        if record.source == UpdateSource.SERVER and record.version not in failed:
            failed.append(record.version)  # its signature verified; it failed its health check
        logger.critical("update %s: %s; trying the rollback once more", record.version, message)
        run.state = self._persist(
            run.state.model_copy(
                update={
                    "failed_versions": failed,
                    "attention": message,
                    "update": record.model_copy(
                        update={
                            "state": UpdateState.REPORTING,
                            "final_status": UpdateStatus.FAILED,
                            "error": message,
                        }
                    ),
                }
            )
        )
        problem = self._restore_previous(record)
        self.releases.remove_download(record)
        current = self.current_release()
        active = self.service.is_active()
        back = current == previous and (active if previous is not None else not active)
        if back:
            logger.warning(
                "%s runs again after the crash loop's last rollback", previous or "nothing"
            )
            run.state = self._persist(
                run.state.model_copy(
                    update={
                        "attention": attention_before,
                        "update": run.record.model_copy(
                            update={
                                "final_status": UpdateStatus.ROLLED_BACK,
                                "error": _clip(reason),
                            }
                        ),
                    }
                )
            )
        else:
            running = f"{current} is current" if current else "no release is current"
            detail = f"{running}, the application {'runs' if active else 'is not running'}"
            message = _clip(f"{message} ({detail}{'; ' + problem if problem else ''})") or message
            logger.critical("update %s: %s; the device needs attention", record.version, message)
            run.state = self._persist(
                run.state.model_copy(
                    update={
                        "attention": message,
                        "update": run.record.model_copy(update={"error": message}),
                    }
                )
            )
        return self._report_final(run)

    def _fail(self, run: _Run, reason: str, *, blacklist: bool = True) -> InstallOutcome:
        """A pre-switch failure: the running release was never touched.

        Args:
            run: the update.
            reason: reported as the failure's message.
            blacklist: add the version to ``failed_versions`` (never offered
                again); False when the device's configuration was at fault.
        """
        record = run.record
        logger.error("update %s failed: %s", record.version, reason)
        self.releases.discard(record.version)
        self.releases.remove_download(record)
        return self._finish(run, UpdateStatus.FAILED, reason, blacklist=blacklist)

    def _server_fault(self, run: _Run, reason: str) -> InstallOutcome:
        """The server sent something that did not verify: drop it, report it, retry later.

        Only a package whose signature verified may mark a version failed
        (DESIGN.md section 10): junk named ``v2.0.0`` must never make the real,
        signed ``v2.0.0`` be skipped. The download is deleted (so the next try
        fetches it afresh), the update record dropped, and a ``downloading``
        report carries the reason to the server, whose row stays open.
        """
        record = run.record
        version, update_id = record.version, record.update_id
        message = (
            f"server fault: {reason} ({version} is not marked failed on the device; "
            "it is tried again later)"
        )
        logger.error("update %s (%s): %s", version, update_id, message)
        self._abandon(run, "its download did not verify")
        self._report(update_id, UpdateStatus.DOWNLOADING, message)
        return InstallOutcome(InstallResult.SERVER_FAULT, version, _clip(message))

    def _finish(
        self, run: _Run, status: UpdateStatus, reason: str, *, blacklist: bool = True
    ) -> InstallOutcome:
        record = run.record
        failed = list(run.state.failed_versions)
        if blacklist and record.source == UpdateSource.SERVER and record.version not in failed:
            failed.append(record.version)
        run.state = self._persist(
            run.state.model_copy(
                update={
                    "failed_versions": failed,
                    "update": record.model_copy(
                        update={
                            "state": UpdateState.REPORTING,
                            "final_status": status,
                            "error": _clip(reason),
                        }
                    ),
                }
            )
        )
        return self._report_final(run)

    def _report_final(self, run: _Run) -> InstallOutcome:
        record = run.record
        status = record.final_status or UpdateStatus.FAILED
        self._report(
            record.update_id if record.source == UpdateSource.SERVER else None, status, record.error
        )
        run.state = self._persist(run.state.model_copy(update={"update": None}))
        result = {
            UpdateStatus.COMPLETED: InstallResult.COMPLETED,
            UpdateStatus.ROLLED_BACK: InstallResult.ROLLED_BACK,
        }.get(status, InstallResult.FAILED)
        return InstallOutcome(result, record.version, record.error)

    def _abandon(self, run: _Run, reason: str) -> None:
        """Drop a pre-switch update without a report (the server moved on)."""
        record = run.record
        if record.state not in PRE_SWITCH_STATES:
            raise StateError(
                f"update {record.version} is in state {record.state}: it must finish before another starts"
            )
        logger.info("abandoning update %s: %s", record.version, reason)
        self.releases.discard(record.version)
        self.releases.remove_download(record)
        run.state = self._persist(run.state.model_copy(update={"update": None}))

    def _report(self, update_id: int | None, status: UpdateStatus, message: str | None) -> None:
        if update_id is None or self.reporter is None:
            return
        try:
            self.reporter(update_id, status, _clip(message) if message else None)
        except (OSError, JaviaError) as error:
            logger.error(
                "could not queue the %s report for update %s: %s", status, update_id, error
            )

    # -- recovery and housekeeping ----------------------------------------------------

    def _recover_locked(self) -> InstallOutcome | None:
        """Clean up, then run the recovery action :data:`RECOVERY` names for the saved state.

        Every :class:`Recovery` action has its own handler in
        :data:`_RECOVERY_HANDLERS` (checked when this module is imported), and
        the action the table names is the one that runs: a new state or
        action cannot be added without saying what recovery does with it.
        """
        state = self.store.load()
        keep = None
        if state.update is not None and state.update.source == UpdateSource.SERVER:
            keep = state.update.update_id
        self.releases.remove_debris(keep_download=keep)
        record = state.update
        if record is None:
            return None
        action = RECOVERY[record.state]
        run = _Run(state=state)
        logger.info("unfinished update %s in state %s: %s", record.version, record.state, action)
        if record.state in PRE_SWITCH_STATES and record.source == UpdateSource.DIRECTORY:
            # Nobody will tell the agent to go on with a package directory.
            self._abandon(run, "interrupted; run javia agent install again")
            return None
        return _RECOVERY_HANDLERS[action](self, run)

    def _recover_nothing(self, run: _Run) -> InstallOutcome | None:
        return None

    def _recover_download(self, run: _Run) -> InstallOutcome | None:
        """RESUME_DOWNLOAD: the ``.partial`` payload was kept by the clean-up; resume when told."""
        record = run.record
        logger.info(
            "download of %s (update %s) resumes when the server next says to install",
            record.version,
            record.update_id,
        )
        return None

    def _recover_verification(self, run: _Run) -> InstallOutcome | None:
        """REVERIFY: the payload is verified again from its first byte when next told to install."""
        record = run.record
        logger.info("%s is verified again when the server next says to install", record.version)
        return None

    def _recover_staging(self, run: _Run) -> InstallOutcome | None:
        """RESTAGE: remove the half-written release; staging starts afresh when next told."""
        record = run.record
        self.releases.discard(record.version)
        return None

    def _recover_switch(self, run: _Run) -> InstallOutcome | None:
        """CHECK_CURRENT: ``current`` already moved: health check; else redo the switch."""
        if self.current_release() == run.record.version:
            return self._resume_post_switch(run, UpdateState.HEALTH_CHECK)
        return self._resume_post_switch(run, UpdateState.SWITCHING)

    def _recover_health_check(self, run: _Run) -> InstallOutcome | None:
        """RECHECK_HEALTH: check the new release again, or roll back if it is not current."""
        if self.current_release() == run.record.version:
            return self._resume_post_switch(run, UpdateState.HEALTH_CHECK)
        return self._roll_back(run, "the agent restarted during the health check")

    def _recover_commit(self, run: _Run) -> InstallOutcome | None:
        return self._commit(run)

    def _recover_rollback(self, run: _Run) -> InstallOutcome | None:
        return self._roll_back(run, run.record.error or "interrupted while rolling back")

    def _recover_report(self, run: _Run) -> InstallOutcome | None:
        return self._report_final(run)

    def _resume_post_switch(self, run: _Run, step: UpdateState) -> InstallOutcome:
        if step == UpdateState.HEALTH_CHECK:
            try:
                self.service.start()  # no-op if it is running; needed after a reboot in command mode
            except JaviaError as error:
                return self._roll_back(run, f"{run.record.version} did not start again: {error}")
        return self._advance(run, step)


#: The handler of each recovery action (see :meth:`Installer._recover_locked`).
_RECOVERY_HANDLERS: Mapping[Recovery, Callable[[Installer, _Run], InstallOutcome | None]] = {
    Recovery.NOTHING: Installer._recover_nothing,
    Recovery.RESUME_DOWNLOAD: Installer._recover_download,
    Recovery.REVERIFY: Installer._recover_verification,
    Recovery.RESTAGE: Installer._recover_staging,
    Recovery.CHECK_CURRENT: Installer._recover_switch,
    Recovery.RECHECK_HEALTH: Installer._recover_health_check,
    Recovery.COMMIT: Installer._recover_commit,
    Recovery.ROLL_BACK: Installer._recover_rollback,
    Recovery.REPORT: Installer._recover_report,
}
if set(_RECOVERY_HANDLERS) != set(Recovery):  # pragma: no cover - caught by any import
    raise RuntimeError("every recovery action needs a handler in _RECOVERY_HANDLERS")


def _clip(text: str | None) -> str | None:
    if text is None:
        return None
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.strerror:
        text = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    return text


def _tail(result: subprocess.CompletedProcess[bytes]) -> str:
    """The last non-blank line of stderr, else of stdout (clipped)."""
    for stream in (result.stderr, result.stdout):
        lines = [
            line for line in (stream or b"").decode("utf-8", "replace").splitlines() if line.strip()
        ]
        if lines:
            return lines[-1].strip()[:300]
    return "no output"
