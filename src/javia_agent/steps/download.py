"""DOWNLOADING: fetch and verify the metadata, check disk space, stream the payload (resumable).

The manifest and signature are verified (trusted key, newer than the running
version, the version the server offered) *before* the payload is fetched;
only verified metadata is kept on disk. The payload streams to a ``.partial``
file capped at the signed size. Before it, free disk space is checked for the
download plus the unpacked release plus a reserve (:func:`check_disk_space`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from javia_agent._fs import atomic_write
from javia_agent.errors import (
    AuthenticationError,
    DiskSpaceError,
    DownloadCancelledError,
    DownloadError,
    DownloadTooLargeError,
    InstallError,
    NetworkError,
    ServerError,
)
from javia_agent.flow import Event
from javia_agent.state import UpdateState
from javia_agent.steps.common import Abandon, DownloadGaveUp, RetryLater, Run, pre_switch
from javia_core.models import UpdateStatus

if TYPE_CHECKING:
    from javia_agent.installer import Installer
    from javia_core.manifest import Manifest

__all__ = ["MAX_STALLED_DOWNLOADS", "available_bytes", "check_disk_space", "run"]

logger = logging.getLogger(__name__)

#: Agent cycles in a row whose download attempt ended without a new payload
#: byte before the update is reported ``failed`` (each cycle already retried
#: the download ``RetryPolicy.attempts`` times).
MAX_STALLED_DOWNLOADS = 5


def run(installer: Installer, run: Run) -> Event:
    """Report ``downloading`` and download; see the module docstring."""

    def body() -> None:
        installer.report(run.record.update_id, UpdateStatus.DOWNLOADING, None)
        _download(installer, run, installer.package_dir(run.record))

    return pre_switch(installer, run, body)


def _download(installer: Installer, run: Run, package_dir: Path) -> None:
    from javia_agent import verification
    from javia_core.manifest import MANIFEST_NAME, PAYLOAD_NAME, SIGNATURE_NAME

    directive = run.directive
    client = installer.client
    if directive is None or client is None:  # pragma: no cover - guarded by install()
        raise RuntimeError("downloading needs a directive and a client")
    package_dir.mkdir(parents=True, exist_ok=True)
    had_bytes = downloaded_bytes(package_dir)
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
                directive.manifest_url, should_stop=installer.should_stop
            )
            signature_bytes = client.download_signature(
                directive.signature_url, should_stop=installer.should_stop
            )
        verified = verification.verify_metadata(
            manifest_bytes,
            signature_bytes,
            installer.keyring(),
            current_version=installer.running_version(),
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
        check_disk_space(installer, verified.manifest, download_bytes=size - have)
        if not have and _fetch_delta(installer, run, verified.manifest, package_dir):
            return
        client.download_payload(
            directive.download_url,
            payload,
            size,
            resume=True,
            should_stop=installer.should_stop,
            progress=lambda received, total: _ping(installer),
        )
    except DownloadTooLargeError:
        raise
    except DownloadCancelledError as error:  # shutting down: not the download's fault
        logger.warning("download of %s paused: %s", directive.version, error)
        raise RetryLater(str(error)) from None
    except NetworkError as error:
        # No answer at all (Wi-Fi down, server unreachable): the package is not
        # at fault, so this never counts towards giving up on it.
        logger.warning("download of %s paused: %s", directive.version, error)
        raise RetryLater(str(error)) from None
    except (DownloadError, AuthenticationError) as error:
        _count_stalled_download(installer, run, package_dir, had_bytes, error)
        logger.warning("download of %s paused: %s", directive.version, error)
        raise RetryLater(str(error)) from None
    except ServerError as error:
        if error.status_code in (404, 410):
            raise Abandon(
                f"update {directive.update_id} is gone from the server ({error})"
            ) from None
        if error.status_code is None or error.status_code >= 500 or error.status_code == 429:
            logger.warning("download of %s paused: %s", directive.version, error)
            raise RetryLater(str(error), error.retry_after_seconds) from None
        raise


def _fetch_delta(installer: Installer, run: Run, manifest: Manifest, package_dir: Path) -> bool:
    """Try the delta download (:mod:`javia_agent.delta_download`); False: download the archive.

    Files are reused from every installed release but the one being
    installed, the running release first, then the others highest first.
    """
    from javia_agent import delta_download
    from javia_core.versioning import Version

    directive, client = run.directive, installer.client
    if directive is None or client is None:  # pragma: no cover - guarded by _download
        return False
    releases_dir = installer.paths.releases_dir
    current = installer.current_release()
    found: list[tuple[bool, Version, Path]] = []
    try:
        children = list(releases_dir.iterdir())
    except OSError:
        children = []
    for child in children:
        try:
            version = Version.parse(child.name)
        except ValueError:
            continue
        if child.name != manifest.version and child.is_dir() and not child.is_symlink():
            found.append((child.name == current, version, child))
    releases = [path for _current, _version, path in sorted(found, reverse=True)]
    plan = delta_download.fetch_delta(
        client,
        manifest,
        directive.update_id,
        package_dir,
        releases,
        should_stop=installer.should_stop,
        keepalive=installer.keepalive,
    )
    return plan is not None


def _ping(installer: Installer) -> None:
    """Each downloaded chunk: ping the watchdog (a stalled read times out on its own)."""
    installer.keepalive()


def downloaded_bytes(package_dir: Path) -> int:
    """Payload bytes on disk (complete or ``.partial``) for a download directory."""
    from javia_core.manifest import PAYLOAD_NAME

    payload = package_dir / PAYLOAD_NAME
    have = 0
    for candidate in (payload, payload.with_name(payload.name + ".partial")):
        try:
            have = max(have, candidate.stat().st_size)
        except OSError:
            continue
    return have


def _count_stalled_download(
    installer: Installer, run: Run, package_dir: Path, had_bytes: int, error: Exception
) -> None:
    """Count an interrupted download cycle that got no new byte; give up after a few.

    A payload the server can never deliver (it cuts every answer at the
    same offset) would otherwise be retried every cycle forever, and the
    device would never report ``failed`` nor move on to a newer update.
    The count is kept in ``state.json`` so restarts do not reset it; any
    progress resets it.

    Raises:
        DownloadGaveUp: :data:`MAX_STALLED_DOWNLOADS` cycles in a row made
            no progress; the update is failed (and the partial file dropped).
    """
    record = run.record
    progressed = downloaded_bytes(package_dir) > had_bytes
    stalled = 0 if progressed else record.stalled_cycles + 1
    if stalled != record.stalled_cycles:
        installer.save(run, UpdateState.DOWNLOADING, stalled_cycles=stalled)
    if stalled >= MAX_STALLED_DOWNLOADS:
        raise DownloadGaveUp(
            f"download of {record.version} gave up after {stalled} attempts in a row "
            f"without a new byte (stuck at {had_bytes:,} bytes): {error}"
        )


def available_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path``."""
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


def check_disk_space(installer: Installer, manifest: Manifest, *, download_bytes: int) -> None:
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
    paths = installer.paths
    needs: dict[int, tuple[Path, list[str], int]] = {}
    for directory, what, count in (
        (paths.downloads_dir, "download", max(0, download_bytes)),
        (paths.releases_dir, "unpacked release", manifest.unpacked_size),
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
    reserve = installer.disk_reserve_bytes
    for path, parts, total in needs.values():
        required = total + reserve
        free = installer.free_bytes(path)
        if free < required:
            raise DiskSpaceError(
                f"not enough disk space for {manifest.version} on {path}: needs "
                f"{_amount(required)} ({', '.join(parts)}, reserve "
                f"{reserve:,} bytes) but only {_amount(free)} are free"
            )
