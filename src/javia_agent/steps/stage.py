"""STAGING: extract into ``releases/<version>`` and build its Python environment; old release untouched.

:func:`~javia_agent.verification.extract_payload` writes a private staging
directory and renames it into place only when every member checked out; then
the release's Python environment is built or reused from
``requirements.txt`` (:mod:`javia_agent.environments`). Staged ahead of the
install time (:attr:`Run.prepare_only`), the signed system packages are
downloaded too (``apt-get install --download-only``). Everything that may
change the system outside the release — apt's install, the setup command —
is the next state's (:mod:`javia_agent.steps.staged`). A failure removes the
half-made release.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from javia_agent import releases as releases_module
from javia_agent.apt import (
    apt_download_argv,
    apt_install_argv,
    apt_lock_failure,
    wait_for_dpkg_lock,
)
from javia_agent.errors import (
    CommandFailedError,
    InstallError,
    PackageManagerLockError,
    command_output,
)
from javia_agent.flow import Event
from javia_agent.steps.common import Run, pre_switch, run_command, tail
from javia_core.models import UpdateStatus

if TYPE_CHECKING:
    from javia_agent.installer import Installer
    from javia_core.manifest import Manifest

__all__ = ["install_system_packages", "run", "verified_manifest"]

logger = logging.getLogger(__name__)

_APT_TIMEOUT_SECONDS = 1800.0


def verified_manifest(installer: Installer, run: Run) -> Manifest:
    """The update's manifest, verified in this process (re-established from disk if resumed)."""
    from javia_agent import delta_download, verification

    if run.manifest is None:  # resumed past verifying: re-establish trust from disk
        record = run.record
        # The manifest and signature only: a delta download keeps no payload archive.
        manifest_bytes, signature_bytes = delta_download.read_metadata(
            installer.package_dir(record)
        )
        run.manifest = verification.verify_metadata(
            manifest_bytes,
            signature_bytes,
            installer.keyring(),
            current_version=installer.running_version(),
            expected_version=record.version,
        ).manifest
    return run.manifest


def run(installer: Installer, run: Run) -> Event:
    """Stage the verified payload; see the module docstring.

    Reports ``installing`` unless staging ahead of the install time (the
    server's row then goes from ``downloading`` to ``staged``).
    """

    def body() -> None:
        from javia_core.manifest import PAYLOAD_NAME

        record = run.record
        package_dir = installer.package_dir(record)
        if not run.prepare_only:
            installer.report(record.update_id, UpdateStatus.INSTALLING, None)
        manifest = verified_manifest(installer, run)
        run.package_verified = True  # its SHA-256 matched the signed manifest at verifying
        _stage(installer, run, manifest, package_dir / PAYLOAD_NAME)
        run.staged_here = True

    return pre_switch(installer, run, body)


def _stage(installer: Installer, run: Run, manifest: Manifest, payload: Path) -> None:
    """Extract (or copy a delta tree) into ``releases/<version>``, build its environment.

    Removes the half-made release on failure.
    """
    from javia_agent import delta_download, verification

    paths = installer.paths
    release = paths.release_dir(manifest.parsed_version)
    paths.releases_dir.mkdir(parents=True, exist_ok=True)
    if release.exists() or release.is_symlink():
        if installer.current_release() == manifest.version:  # pragma: no cover - refused earlier
            raise InstallError(f"{manifest.version} is the running release")
        releases_module._remove_tree(release)  # left over from an interrupted staging
    with installer.keepalive_during():
        tree = delta_download.assembled_tree(payload.parent)
        if tree is not None:  # a delta download: copy the checked tree, hashing it again
            delta_download.install_tree(tree, manifest, release)
        else:
            verification.extract_payload(payload, manifest, release)
    installer.checkpoint("staging.extracted")
    try:
        if installer.python_envs is not None:
            installer.python_envs.prepare(release)
        if run.prepare_only and manifest.system_packages:
            install_system_packages(installer, manifest, release, download_only=True)
    except BaseException:
        releases_module._remove_tree(release)
        installer.releases.prune_environments()
        raise


def install_system_packages(
    installer: Installer, manifest: Manifest, release: Path, *, download_only: bool = False
) -> None:
    """``apt-get install -- NAMES`` once the dpkg lock is free (waiting up to the limit).

    Args:
        installer: the installer (apt command, dpkg lock, clock).
        manifest: the verified manifest (its signed ``system_packages``).
        release: the staged release (apt's working directory).
        download_only: fetch into apt's cache only (``--download-only``).

    Raises:
        PackageManagerLockError: another package manager kept the lock
            (the update is tried again later).
        InstallError: a name breaks Debian policy, or apt failed.
    """
    clock = installer.clock
    build = apt_download_argv if download_only else apt_install_argv
    argv = build(installer.apt_command, manifest.system_packages)
    what = "downloading system packages" if download_only else "installing system packages"
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
            what=what,
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
                f"{what} ({argv[0]}) exited with status {result.returncode}: {tail(result)}",
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
