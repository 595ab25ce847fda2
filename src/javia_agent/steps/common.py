"""What the steps share: the update being driven, the pre-switch error mapping, commands.

:func:`pre_switch` is the one place that turns an exception raised before the
switch into an :class:`~javia_agent.flow.Event` (the old ``except`` clauses);
the table then says what each event does.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from javia_agent.errors import (
    CommandFailedError,
    ConfigError,
    DiskSpaceError,
    DownloadError,
    InstallError,
    PackageManagerLockError,
    command_output,
)
from javia_agent.failure_details import FailureEvidence, evidence_of_error
from javia_agent.flow import Event
from javia_agent.retry_policy import transient_reason
from javia_agent.services import application_environment
from javia_agent.state import AgentState, UpdateRecord, UpdateSource
from javia_core.errors import JaviaError
from javia_core.models import InstallDirective

if TYPE_CHECKING:
    from javia_agent.installer import Installer, InstallOutcome
    from javia_core.manifest import Manifest

__all__ = [
    "Abandon",
    "DownloadGaveUp",
    "RetryLater",
    "Run",
    "clip",
    "pre_switch",
    "reason_of",
    "run_command",
    "run_in_release",
]

logger = logging.getLogger(__name__)

_MAX_ERROR_CHARS = 2000


class RetryLater(Exception):
    """Network trouble or shutdown: the update is kept to resume."""

    def __init__(self, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class Abandon(Exception):
    """The update is gone from the server."""


class DownloadGaveUp(DownloadError):
    """The payload never arrived whole: the update is reported failed, not marked failed."""


@dataclass
class Run:
    """One update being driven through its steps: the latest saved state.

    Attributes:
        state: the state as last saved.
        directive: the server directive (server updates, in ``install`` only).
        manifest: the verified manifest, once verified in this process.
        package_verified: the payload matched its verified, signed manifest
            (set at staging): only from then on may a failure mark the
            version failed (DESIGN.md section 10).
        reason: why the last step failed (the next row's reason).
        retry_after_seconds: the server's ``Retry-After`` for a retry later.
        wait_seconds: a transient fault's backoff: the next try is due then.
        evidence: what the failing step saw (the failure report's details).
        outcome: how the update ended, set by the edge that ended it.
        prepare_only: stage ahead of the install time and stop there
            (:meth:`~javia_agent.installer.Installer.prepare`).
        staged_here: the release was staged by this drive (not found staged
            on disk, which is checked against the manifest before use).
    """

    state: AgentState
    directive: InstallDirective | None = None
    manifest: Manifest | None = None
    package_verified: bool = False
    reason: str | None = None
    retry_after_seconds: float | None = None
    wait_seconds: float | None = None
    evidence: FailureEvidence | None = None
    outcome: InstallOutcome | None = None
    prepare_only: bool = False
    staged_here: bool = False

    @property
    def record(self) -> UpdateRecord:
        if self.state.update is None:  # pragma: no cover - guarded by callers
            raise RuntimeError("no update in progress")
        return self.state.update


def pre_switch(installer: Installer, run: Run, body: Callable[[], None]) -> Event:
    """Run a pre-switch step's ``body``; map what it raises to an event.

    The keyring is checked first (an empty keyring is the device's
    configuration at fault). Then: :class:`RetryLater` and a busy dpkg lock
    → ``RETRY_LATER``; :class:`Abandon` → ``ABANDON``; the device's
    configuration or disk, or a payload that never came → ``GIVE_UP``; a
    transient fault of a server update (:func:`javia_agent.retry_policy.transient_reason`:
    an index or mirror down, a full disk) → ``RETRY_LATER`` with ``retrying``
    reported, or ``GIVE_UP`` at its deadline (:mod:`javia_agent.steps.retrying`); any
    other error → ``SERVER_FAULT`` while a server update's payload has not
    verified (junk must never mark the real version failed), else ``FAILURE``.
    """
    try:
        if not installer.keyring():
            where = f" ({installer.keyring_dir})" if installer.keyring_dir is not None else ""
            raise ConfigError(
                f"this device has no trusted keys in its keyring{where}: copy the operator's "
                "public key (*.pub) there; the update is offered again afterwards"
            )
        body()
    except RetryLater as error:
        run.reason, run.retry_after_seconds = str(error), error.retry_after_seconds
        return Event.RETRY_LATER
    except PackageManagerLockError as error:
        logger.warning("staging %s paused: %s", run.record.version, error)
        run.reason = str(error)
        return Event.RETRY_LATER
    except Abandon as error:
        run.reason = str(error)
        return Event.ABANDON
    except (JaviaError, OSError, subprocess.SubprocessError) as error:
        run.reason = reason_of(error)
        run.evidence = evidence_of_error(error, str(run.record.state))
        transient = transient_reason(error)
        if transient is not None and run.record.source == UpdateSource.SERVER:
            from javia_agent.steps.retrying import retry_or_give_up

            return retry_or_give_up(installer, run, transient[1])
        if isinstance(error, (ConfigError, DiskSpaceError, DownloadGaveUp)):
            return Event.GIVE_UP
        if not run.package_verified and run.record.source == UpdateSource.SERVER:
            return Event.SERVER_FAULT
        return Event.FAILURE if run.package_verified else Event.GIVE_UP
    return Event.SUCCESS


def run_command(
    installer: Installer,
    argv: list[str],
    *,
    what: str,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    check: bool = True,
    kind: str = "setup",
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` with the installer's runner, pinging the watchdog meanwhile.

    Raises:
        CommandFailedError: it timed out or (``check``) failed; ``kind`` names
            the command (``setup``, ``health``, ``apt``), with its exit status
            and the end of its output.
        InstallError: it could not start.
    """
    full_env = {**os.environ, **env}
    try:
        with installer.keepalive_during():
            result = installer.runner(
                argv, cwd=cwd, env=full_env, capture_output=True, timeout=timeout, check=False
            )
    except subprocess.TimeoutExpired as expired:
        raise CommandFailedError(
            f"{what} ({argv[0]}) did not finish within {timeout:.0f} s",
            kind=kind,
            output=command_output(expired.stdout, expired.stderr),
        ) from None
    except OSError as error:
        raise InstallError(f"{what} ({argv[0]}) could not run: {error.strerror}") from None
    if check and result.returncode != 0:
        raise CommandFailedError(
            f"{what} ({argv[0]}) exited with status {result.returncode}: {tail(result)}",
            kind=kind,
            exit_code=result.returncode,
            output=command_output(result.stdout, result.stderr),
        )
    return result


def run_in_release(
    installer: Installer,
    argv: Sequence[str],
    *,
    what: str,
    release: Path,
    timeout: float,
    kind: str = "setup",
) -> None:
    """Run an operator's command (setup, health) in ``release`` with the application's environment.

    ``kind`` names the command in a failure report (:func:`run_command`).

    Raises:
        InstallError: as :func:`run_command` (it failed, timed out, could not start).
    """
    run_command(
        installer,
        list(argv),
        what=what,
        cwd=release,
        env=application_environment(release, installer.paths.activity_file, installer.app_env),
        timeout=timeout,
        kind=kind,
    )


def clip(text: str | None) -> str | None:
    """``text`` cut to the 2,000 characters a report carries."""
    if text is None:
        return None
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


def reason_of(error: BaseException) -> str:
    """A one-line reason for ``error`` (an ``OSError`` as its strerror and file)."""
    text = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.strerror:
        text = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    return text


def tail(result: subprocess.CompletedProcess[bytes]) -> str:
    """The last non-blank line of stderr, else of stdout (clipped)."""
    for stream in (result.stderr, result.stdout):
        lines = [
            line for line in (stream or b"").decode("utf-8", "replace").splitlines() if line.strip()
        ]
        if lines:
            return lines[-1].strip()[:300]
    return "no output"
