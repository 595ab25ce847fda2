"""STAGED: the release is complete on disk; hold it until install time, then finish it.

Staged ahead of the window (:attr:`Run.prepare_only`), the step reports
``staged`` and holds (:attr:`~javia_agent.flow.Event.HOLD`): the running
release is untouched and the agent waits for the install time. When the
install directive comes (or at once, for an update staged on the way), it
finishes what may change the system outside the release: apt installs the
signed system packages (from apt's cache when they were downloaded ahead)
and the optional setup command runs; then the switch.

A release found staged on disk (staged by an earlier drive, or the agent
restarted since) is checked again first: every file the signed manifest
lists must be there with its size, mode and SHA-256, and the Python
environment complete. A release that does not match is discarded and made
again from the verified payload (:attr:`~javia_agent.flow.Event.STALE`),
never switched to.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from javia_agent import releases as releases_module
from javia_agent.errors import PackageManagerLockError
from javia_agent.flow import Event
from javia_agent.steps.common import Run, pre_switch, run_in_release
from javia_agent.steps.stage import install_system_packages, verified_manifest
from javia_core.models import UpdateStatus

if TYPE_CHECKING:
    from javia_agent.installer import Installer
    from javia_core.manifest import Manifest

__all__ = ["release_mismatch", "run"]

logger = logging.getLogger(__name__)

_SETUP_TIMEOUT_SECONDS = 1800.0
_CHUNK_BYTES = 1024 * 1024


def release_mismatch(release: Path, manifest: Manifest) -> str | None:
    """What in ``release`` differs from the signed ``manifest``, or ``None`` if nothing.

    Every listed file must be a regular file (no symbolic link on the way)
    with the signed size, permission bits and SHA-256. Files the manifest
    does not list (the ``.venv`` link, caches) are not looked at.

    Args:
        release: ``releases/<version>``.
        manifest: the verified manifest.

    Returns:
        One line naming the first difference, or ``None``.
    """
    try:
        info = os.lstat(release)
    except OSError as error:
        return f"{release} cannot be read: {error.strerror}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{release} is not a directory"
    for entry in manifest.files:
        path = release / entry.path
        try:
            parents_ok = all(
                not os.path.islink(release.joinpath(*Path(entry.path).parts[:depth]))
                for depth in range(1, len(Path(entry.path).parts))
            )
            if not parents_ok:
                return f"{entry.path}: a directory on its way is a symbolic link"
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as error:
            return f"{entry.path}: {error.strerror}"
        with os.fdopen(descriptor, "rb") as handle:
            status = os.fstat(handle.fileno())
            if not stat.S_ISREG(status.st_mode):
                return f"{entry.path} is not a regular file"
            if status.st_size != entry.size:
                return f"{entry.path} is {status.st_size} bytes, signed {entry.size}"
            if stat.S_IMODE(status.st_mode) != entry.mode:
                return (
                    f"{entry.path} has mode {stat.S_IMODE(status.st_mode):o}, signed {entry.mode:o}"
                )
            digest = hashlib.sha256()
            while chunk := handle.read(_CHUNK_BYTES):
                digest.update(chunk)
            if digest.hexdigest() != entry.sha256:
                return f"{entry.path} does not match its signed SHA-256"
    return None


def run(installer: Installer, run: Run) -> Event:
    """Hold a release staged ahead, or finish it for the switch; see the module docstring."""
    record = run.record
    if run.prepare_only:
        installer.report(record.update_id, UpdateStatus.STAGED, None)
        logger.info(
            "update %s (%s) staged in releases/%s; %s keeps running until the install time",
            record.version,
            record.update_id,
            record.version,
            installer.current_release() or "nothing",
        )
        return Event.HOLD
    stale: list[str] = []

    def body() -> None:
        manifest = verified_manifest(installer, run)
        run.package_verified = True  # verified at verifying, re-verified from disk if resumed
        release = installer.paths.release_dir(manifest.parsed_version)
        if not run.staged_here:
            with installer.keepalive_during():
                problem = release_mismatch(release, manifest)
            if problem is not None:
                stale.append(problem)
                return
            if installer.python_envs is not None:
                installer.python_envs.prepare(release)  # reused if complete, else built again
            installer.report(record.update_id, UpdateStatus.INSTALLING, None)
        _finish(installer, manifest, release)

    event = pre_switch(installer, run, body)
    if stale and event == Event.SUCCESS:
        logger.warning(
            "staged release %s no longer matches its signed manifest (%s): staging it again",
            record.version,
            stale[0],
        )
        installer.releases.discard(record.version)
        run.reason = stale[0]
        return Event.STALE
    return event


def _finish(installer: Installer, manifest: Manifest, release: Path) -> None:
    """apt's install of the signed system packages, then the setup command; undo on failure."""
    try:
        if manifest.system_packages:
            install_system_packages(installer, manifest, release)
        if installer.setup_command:
            run_in_release(
                installer,
                installer.setup_command,
                what="the setup command",
                release=release,
                timeout=_SETUP_TIMEOUT_SECONDS,
            )
    except PackageManagerLockError:
        raise  # kept staged: apt is tried again later
    except BaseException:
        releases_module._remove_tree(release)
        installer.releases.prune_environments()
        raise
