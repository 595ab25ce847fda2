"""The installer: the agent's one entry point for changing what runs (DESIGN.md section 7).

:class:`Installer` holds the configuration and collaborators of an update and
its public operations (install a server directive or a package directory,
recover after a crash, abandon a withdrawn update). The update itself is
driven by a table, Mender-style (STYLE.md):

- :mod:`javia_agent.flow`: the (state, event) → next state table that *is*
  the flow, failure edges and loop-breaker edges included;
- :mod:`javia_agent.driver`: runs the saved state's step, follows the table,
  saves, repeats; and recovery after a crash, through the same table;
- :mod:`javia_agent.steps`: one module per step (download, verify, stage,
  switch, health, commit, rollback, report), each returning an event;
- :mod:`javia_agent.releases`: ``releases/<version>``, the ``current`` link,
  pruning and debris (RAUC's slots).

The order of the steps is the safety argument: the payload is verified
before it is staged, staged before the service is stopped, and "good" only
after its health check; any failure before the switch leaves the running
release untouched, any after it rolls back. Each state is saved before its
step runs (:mod:`javia_agent.state`), so the device always ends up on a
complete old or new release.

Test hook: ``JAVIA_AGENT_PAUSE_AT`` (:mod:`javia_agent.pause`) makes the agent
stop still at a named point so the crash tests can SIGKILL it there; it is
read only when set and is not a setting for devices.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from javia_agent import driver
from javia_agent._fs import remove_interrupted_writes
from javia_agent.client import DeviceClient
from javia_agent.clock import Clock
from javia_agent.config import AgentConfig, AgentPaths
from javia_agent.environments import PythonEnvironments
from javia_agent.errors import CrashLoopError, StateError
from javia_agent.flow import Event
from javia_agent.pause import PAUSE_AT_ENV, no_checkpoint, pause_hook_from_environment
from javia_agent.releases import Releases
from javia_agent.retry_policy import RetrySchedule
from javia_agent.services import AppService, protect_environment_file
from javia_agent.state import (
    PRE_SWITCH_STATES,
    AgentState,
    StateStore,
    UpdateRecord,
    UpdateSource,
    UpdateState,
)
from javia_agent.steps import download, report
from javia_agent.steps.common import Run, clip
from javia_agent.steps.download import MAX_STALLED_DOWNLOADS
from javia_core.errors import JaviaError
from javia_core.failures import FailureDetails
from javia_core.models import InstallDirective, UpdateStatus, UpdateType
from javia_core.versioning import Version

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# Verifying, unpacking and the manifest's rules need cryptography (its Rust
# extension and libcrypto, about 6 MiB of resident memory): they are imported
# by the steps that install, never while the agent idles between heartbeats
# (docs/benchmarks.md, agent idle memory).

__all__ = [
    "MAX_STALLED_DOWNLOADS",
    "PAUSE_AT_ENV",
    "InstallOutcome",
    "InstallResult",
    "Installer",
    "Reporter",
    "pause_hook_from_environment",
]

logger = logging.getLogger(__name__)

#: Sends (or queues) one status report: (update id, status, error message or None).
#: Queues a status report: (update id, status, message), with ``failure=`` a
#: :class:`~javia_core.failures.FailureDetails` when the report carries one.
Reporter = Callable[..., None]
Keyring = Mapping[str, "Ed25519PublicKey"]


def _nothing() -> None:
    return None


def __getattr__(name: str) -> ModuleType:
    """``installer.verification``: :mod:`javia_agent.verification`, imported on first use."""
    if name == "verification":
        from javia_agent import verification

        return verification
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _load_keyring(directory: Path) -> Keyring:
    """The trusted keys in ``directory`` (:func:`javia_core.keys.load_keyring`), read now."""
    from javia_core.keys import load_keyring

    return load_keyring(directory)


class InstallResult(StrEnum):
    """How an install attempt ended."""

    COMPLETED = "completed"  # the new release is running and committed
    FAILED = "failed"  # refused before the switch; the old release kept running
    ROLLED_BACK = "rolled_back"  # the new release was unhealthy; the old one runs again
    RETRY_LATER = "retry_later"  # network trouble or shutdown; state kept to resume
    STAGED = "staged"  # staged ahead of its install time; the old release still runs
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
        wait_seconds: for :attr:`InstallResult.RETRY_LATER` after a transient
            fault: seconds until the next try is due (its backoff).
    """

    result: InstallResult
    version: str
    reason: str | None = None
    retry_after_seconds: float | None = None
    wait_seconds: float | None = None


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
        retry_schedule: backoff and deadline of transient faults
            (:mod:`javia_agent.retry_policy`).
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
    retry_schedule: RetrySchedule = field(default_factory=RetrySchedule)
    disk_reserve_bytes: int = 0
    free_bytes: Callable[[Path], int] = download.available_bytes
    should_stop: Callable[[], bool] = field(default=lambda: False)
    runner: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run
    keepalive: Callable[[], object] = _nothing
    keepalive_during: Callable[[], AbstractContextManager[object]] = nullcontext
    checkpoint: Callable[[str], None] = no_checkpoint

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
            retry_schedule=RetrySchedule(
                deadline_seconds=config.retry_deadline_seconds,
                base_seconds=config.retry_base_seconds,
                max_seconds=config.retry_max_seconds,
            ),
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
            return driver.recover(self)

    def _remove_interrupted_writes(self) -> None:
        paths = self.paths
        remove_interrupted_writes(
            paths.state_dir,
            {
                paths.state_file.name,
                paths.pid_file.name,
                paths.heartbeat_file.name,
                paths.app_env_file.name,
                paths.application_file.name,
            },
        )
        remove_interrupted_writes(paths.outbox_dir)
        protect_environment_file(paths.app_env_file)

    def prepare(self, directive: InstallDirective) -> InstallOutcome:
        """Download, verify and stage ``directive``'s update ahead of its install time.

        The same steps as :meth:`install` up to :attr:`UpdateState.STAGED`,
        where it holds: the release is unpacked and its Python environment
        built, its system packages only downloaded (``apt-get install
        --download-only``); the running release is untouched. A later
        :meth:`install` of the same update goes on from there (stop, switch,
        start, health). An update already staged is left as it is.

        Returns:
            :attr:`InstallResult.STAGED` once held; otherwise as :meth:`install`
            (a failure, a retry later, a server fault).

        Raises:
            StateError, RuntimeError: as :meth:`install`.
        """
        if self.is_staged(directive):
            return InstallOutcome(InstallResult.STAGED, str(directive.version), "staged already")
        return self.install(directive, prepare_only=True)

    def is_staged(self, directive: InstallDirective) -> bool:
        """Whether ``directive``'s update is saved staged (read-only; the release is checked at use)."""
        record = self.store.load().update
        return (
            record is not None
            and record.state == UpdateState.STAGED
            and record.source == UpdateSource.SERVER
            and record.update_id == directive.update_id
            and record.version == str(directive.version)
        )

    def install(self, directive: InstallDirective, *, prepare_only: bool = False) -> InstallOutcome:
        """Install the update a server directive names (or resume it).

        Args:
            directive: the pending update from the heartbeat answer; its
                ``version`` must be the signed manifest's.
            prepare_only: stop once staged (:meth:`prepare`).

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
            driver.recover(self)
            state = self.store.load()
            version = str(directive.version)  # a parsed Version (InstallDirective): vX.Y.Z
            if version in state.failed_versions:
                return InstallOutcome(
                    InstallResult.SKIPPED, version, f"{version} failed on this device before"
                )
            if self.current_release() == version:
                self.report(directive.update_id, UpdateStatus.COMPLETED, None)
                return InstallOutcome(InstallResult.ALREADY_RUNNING, version, "already running")
            running_version = self.running_version()
            if running_version is not None and directive.version < running_version:
                # Refused before any download; reported failed (the row can never
                # succeed here) but not marked failed: the device never ran it.
                reason = (
                    f"{version} is older than the running {running_version}: refusing a downgrade"
                )
                logger.error("update %s (%s): %s", version, directive.update_id, reason)
                self.report(directive.update_id, UpdateStatus.FAILED, reason)
                return InstallOutcome(InstallResult.FAILED, version, reason)
            run = Run(state=state, directive=directive, prepare_only=prepare_only)
            record = state.update
            resume = (
                record is not None
                and record.source == UpdateSource.SERVER
                and record.update_id == directive.update_id
                and record.version == version
                and record.state in PRE_SWITCH_STATES
            )
            if record is not None and not resume:
                report.abandon(self, run, f"superseded by update {directive.update_id} ({version})")
            if resume and record is not None:
                wait = _retry_wait(record, self.clock.wall())
                if wait is not None:  # a transient fault's backoff is not over
                    return InstallOutcome(
                        InstallResult.RETRY_LATER, version, record.error, wait_seconds=wait
                    )
                try:
                    self.save(run, record.state, attempts=record.attempts + 1)
                except CrashLoopError as error:
                    # The table's loop row: marked failed only if its payload had
                    # verified (staging).
                    run.reason = str(error)
                    return driver.start(self, run, record.state, Event.LOOP_DETECTED)
                logger.info(
                    "resuming update %s (%s) at %s", version, directive.update_id, record.state
                )
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
                self.persist(run, run.state.model_copy(update={"update": new}))
                logger.info(
                    "installing update %s (%s), running %s", version, directive.update_id, running
                )
            return driver.drive(self, run)

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
        from javia_core.package_reader import read_package_dir

        package_dir = Path(package_dir).resolve()
        read_package_dir(package_dir)  # refuse a missing or incomplete package before touching disk
        with self._locked():
            driver.recover(self)
            state = self.store.load()
            manifest_bytes, signature_bytes, _ = read_package_dir(package_dir)
            verified = verification.verify_metadata(
                manifest_bytes,
                signature_bytes,
                self.keyring(),
                current_version=self.running_version(),
            )
            download.check_disk_space(self, verified.manifest, download_bytes=0)
            run = Run(state=state, manifest=verified.manifest)
            if state.update is not None:
                report.abandon(self, run, "a package directory is being installed instead")
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
            self.persist(run, run.state.model_copy(update={"update": record}))
            logger.info("installing %s from %s", record.version, package_dir)
            return driver.drive(self, run)

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
            report.abandon(self, Run(state=state), reason)
            return True

    # -- what the steps and the driver use ---------------------------------------------

    def persist(self, run: Run, state: AgentState) -> None:
        """Save ``state`` as ``run``'s state (see :meth:`StateStore.save`), then pass the checkpoint.

        Raises:
            CrashLoopError: the save cap tripped; nothing was written.
            StateError: the state file cannot be written.
        """
        run.state = self.store.save(state)
        self.checkpoint(str(run.state.state))

    def save(self, run: Run, step: UpdateState, **changes: object) -> None:
        """Save ``run``'s update in state ``step`` with ``changes`` (see :meth:`persist`)."""
        record = run.record.model_copy(update={"state": step, **changes})
        self.persist(run, run.state.model_copy(update={"update": record}))

    def package_dir(self, record: UpdateRecord) -> Path:
        """Where the update's package is: its download directory or the package directory."""
        if record.source == UpdateSource.DIRECTORY:
            return Path(record.package_dir or "")
        if record.update_id is None:
            raise StateError(f"update {record.version} from the server has no update id")
        return self.paths.download_dir(record.update_id)

    def report(
        self,
        update_id: int | None,
        status: UpdateStatus,
        message: str | None,
        *,
        failure: FailureDetails | None = None,
    ) -> None:
        """Queue a status report (server updates only); a queueing error is logged.

        ``failure`` (with ``failed`` or ``rolled_back``) is passed to the
        reporter as its ``failure`` keyword, only when there is one.
        """
        if update_id is None or self.reporter is None:
            return
        extra = {} if failure is None else {"failure": failure}
        try:
            self.reporter(update_id, status, clip(message) if message else None, **extra)
        except (OSError, JaviaError) as error:
            logger.error(
                "could not queue the %s report for update %s: %s", status, update_id, error
            )


def _retry_wait(record: UpdateRecord, now: datetime) -> float | None:
    """Seconds until ``record``'s next try after a transient fault, or None if it is due."""
    if record.retry_at is None or now >= record.retry_at:
        return None
    return (record.retry_at - now).total_seconds()
