"""STAGING: extract into ``releases/<version>``, prepare it, run its setup; old release untouched.

:func:`~javia_agent.verification.extract_payload` writes a private staging
directory and renames it into place only when every member checked out; then
the release's Python environment is built or reused from
``requirements.txt`` (:mod:`javia_agent.environments`), its signed system
packages installed (:mod:`javia_agent.apt`, waiting for the dpkg lock) and
the optional setup command run. A failure removes the half-made release.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from javia_agent import releases as releases_module
from javia_agent.apt import apt_install_argv, apt_lock_failure, wait_for_dpkg_lock
from javia_agent.errors import (
    CommandFailedError,
    InstallError,
    PackageManagerLockError,
    command_output,
)
from javia_agent.flow import Event
from javia_agent.services import application_environment
from javia_agent.steps.common import Run, pre_switch, run_command, tail
from javia_core.models import UpdateStatus

if TYPE_CHECKING:
    from javia_agent.installer import Installer
    from javia_core.manifest import Manifest

__all__ = ["run"]

logger = logging.getLogger(__name__)

_APT_TIMEOUT_SECONDS = 1800.0
_SETUP_TIMEOUT_SECONDS = 1800.0


def run(installer: Installer, run: Run) -> Event:
    """Report ``installing`` and stage the verified payload; see the module docstring."""

    def body() -> None:
        from javia_agent import verification
        from javia_core.manifest import PAYLOAD_NAME
        from javia_core.package_reader import read_package_dir

        record = run.record
        package_dir = installer.package_dir(record)
        installer.report(record.update_id, UpdateStatus.INSTALLING, None)
        if run.manifest is None:  # resumed at staging: re-establish trust from disk
            manifest_bytes, signature_bytes, _ = read_package_dir(package_dir)
            run.manifest = verification.verify_metadata(
                manifest_bytes,
                signature_bytes,
                installer.keyring(),
                current_version=installer.running_version(),
                expected_version=record.version,
            ).manifest
        run.package_verified = True  # its SHA-256 matched the signed manifest at verifying
        _stage(installer, run.manifest, package_dir / PAYLOAD_NAME)

    return pre_switch(installer, run, body)


def _stage(installer: Installer, manifest: Manifest, payload: Path) -> None:
    """Extract into ``releases/<version>`` and run the setup steps; remove it on failure."""
    from javia_agent import verification

    paths = installer.paths
    release = paths.release_dir(manifest.parsed_version)
    paths.releases_dir.mkdir(parents=True, exist_ok=True)
    if release.exists() or release.is_symlink():
        if installer.current_release() == manifest.version:  # pragma: no cover - refused earlier
            raise InstallError(f"{manifest.version} is the running release")
        releases_module._remove_tree(release)  # left over from an interrupted staging
    with installer.keepalive_during():
        verification.extract_payload(payload, manifest, release)
    installer.checkpoint("staging.extracted")
    try:
        if installer.python_envs is not None:
            installer.python_envs.prepare(release)
        if manifest.system_packages:
            _install_system_packages(installer, manifest, release)
        if installer.setup_command:
            run_command(
                installer,
                list(installer.setup_command),
                what="the setup command",
                cwd=release,
                env=application_environment(release, paths.activity_file, installer.app_env),
                timeout=_SETUP_TIMEOUT_SECONDS,
            )
    except BaseException:
        releases_module._remove_tree(release)
        installer.releases.prune_environments()
        raise


def _install_system_packages(installer: Installer, manifest: Manifest, release: Path) -> None:
    """``apt-get install -- NAMES`` once the dpkg lock is free (waiting up to the limit).

    Raises:
        PackageManagerLockError: another package manager kept the lock
            (the update is tried again later).
        InstallError: a name breaks Debian policy, or apt failed.
    """
    clock = installer.clock
    argv = apt_install_argv(installer.apt_command, manifest.system_packages)
    deadline = clock.monotonic() + installer.dpkg_lock_timeout_seconds
    while True:
        wait_for_dpkg_lock(
            installer.dpkg_lock_file,
            timeout_seconds=max(0.0, deadline - clock.monotonic()),
            monotonic=clock.monotonic,
            sleep=clock.sleep,
            keepalive=installer.keepalive,
        )
        result = run_command(
            installer,
            argv,
            what="installing system packages",
            cwd=release,
            env={"DEBIAN_FRONTEND": "noninteractive"},
            timeout=_APT_TIMEOUT_SECONDS,
            check=False,
        )
        if result.returncode == 0:
            return
        output = (result.stderr or b"").decode("utf-8", "replace") + (result.stdout or b"").decode(
            "utf-8", "replace"
        )
        if not apt_lock_failure(output):
            raise CommandFailedError(
                f"installing system packages ({argv[0]}) exited with status "
                f"{result.returncode}: {tail(result)}",
                kind="apt",
                exit_code=result.returncode,
                output=command_output(result.stdout, result.stderr),
            )
        if clock.monotonic() >= deadline:
            raise PackageManagerLockError(
                f"apt could not get the dpkg lock within {installer.dpkg_lock_timeout_seconds:g} s "
                f"({tail(result)}); will try again later"
            )
        logger.info("apt found the dpkg lock taken; waiting for it again")
        clock.sleep(1.0)
