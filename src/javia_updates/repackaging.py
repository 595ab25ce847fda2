"""Re-sign a published release's content as a new version (the revert's roll-forward). Operator side.

``javia updates revert`` (docs/rollouts.md, "Revert") downloads the healthy
release's package, and before any of its bytes are reused:

1. :func:`verify_downloaded_package`: the manifest's signature verifies with the
   operator's public key, and the payload's SHA-256 and size are the signed ones;
2. :func:`unpack_payload`: every archive member is a directory or a regular
   file the manifest lists, each file's SHA-256 and size are the signed ones,
   and it is written with the signed permission bits;
3. :func:`repackage`: the unpacked tree is packaged by
   :func:`javia_updates.packaging.build_package` as the new version (its
   ``VERSION`` file holds the new version) and signed; the new manifest must
   list the same files as the old one, ``VERSION`` aside.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zlib
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from javia_core.errors import PackageError
from javia_core.manifest import Manifest, key_id_for, verify_manifest
from javia_core.models import UpdateType
from javia_core.package_reader import read_package_dir
from javia_core.versioning import Version
from javia_updates.package_archive import sha256_of
from javia_updates.packaging import VERSION_FILE_NAME, BuiltPackage, build_package

__all__ = ["repackage", "unpack_payload", "verify_downloaded_package"]

_CHUNK_BYTES = 1024 * 1024


def verify_downloaded_package(directory: Path, public_key: Ed25519PublicKey) -> Manifest:
    """Verify a package directory against ``public_key`` and return its manifest.

    Raises:
        PackageError: a file is missing, or the payload's SHA-256 or size is
            not the manifest's.
        SignatureError: the package is signed by another key, or the signature
            does not verify.
        ManifestError: the signed bytes are not a valid manifest.
    """
    manifest_bytes, signature_bytes, payload_path = read_package_dir(directory)
    manifest = verify_manifest(
        manifest_bytes, signature_bytes, {key_id_for(public_key): public_key}
    )
    sha256, size = sha256_of(payload_path)
    if (sha256, size) != (manifest.archive.sha256, manifest.archive.size):
        raise PackageError(
            f"the downloaded payload of {manifest.version} is not the signed one: "
            f"expected {manifest.archive.size} bytes with SHA-256 {manifest.archive.sha256[:16]}…, "
            f"got {size} bytes with {sha256[:16]}…"
        )
    return manifest


def unpack_payload(payload_path: Path, manifest: Manifest, destination: Path) -> None:
    """Unpack a verified payload into ``destination`` (created; must be empty or absent).

    Raises:
        PackageError: a member is neither a directory nor a regular file, is not
            in the manifest, appears twice, or differs from its manifest entry;
            or a listed file is missing.
    """
    entries = {entry.path: entry for entry in manifest.files}
    directories = {
        "/".join(path.split("/")[:depth])
        for path in entries
        for depth in range(1, path.count("/") + 1)
    }
    destination.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(payload_path, mode="r:gz") as archive:
            written = _extract(archive, manifest, directories, destination)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise PackageError(f"cannot unpack the payload of {manifest.version}: {error}") from None
    missing = sorted(set(entries) - written)
    if missing:
        raise PackageError(
            f"the payload of {manifest.version} lacks {len(missing)} listed file(s), "
            f"e.g. {missing[0]!r}"
        )


def _extract(
    archive: tarfile.TarFile, manifest: Manifest, directories: set[str], destination: Path
) -> set[str]:
    """Write the archive's files under ``destination``; the paths written."""
    entries = {entry.path: entry for entry in manifest.files}
    written: set[str] = set()
    for member in archive:
        name = member.name.removeprefix("./").rstrip("/")
        if member.isdir() and name in directories:
            (destination / name).mkdir(parents=True, exist_ok=True)
            continue
        entry = entries.get(name)
        if entry is None or not member.isfile() or name in written:
            raise PackageError(
                f"the payload of {manifest.version} holds {name[:80]!r}, which its manifest "
                "does not list as a file: refusing to reuse it"
            )
        source = archive.extractfile(member)
        if source is None:  # pragma: no cover - isfile() members always have data
            raise PackageError(f"cannot read {name} from the payload of {manifest.version}")
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with source, open(os.open(target, flags, 0o600), "wb") as handle:
            while chunk := source.read(_CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
                handle.write(chunk)
        if (digest.hexdigest(), size) != (entry.sha256, entry.size):
            raise PackageError(
                f"{name} in the payload of {manifest.version} is not the signed file"
            )
        os.chmod(target, entry.mode)
        written.add(name)
    return written


def repackage(
    package_dir: Path,
    old: Manifest,
    workspace: Path,
    *,
    version: Version,
    update_type: UpdateType,
    description: str,
    private_key: Ed25519PrivateKey,
    now: datetime,
) -> BuiltPackage:
    """Build the content of the package in ``package_dir`` as ``version``, signed.

    Args:
        package_dir: the downloaded package.
        old: its manifest, as :func:`verify_downloaded_package` returned it.
        workspace: an empty directory for the unpacked tree and the new package.
        version: the new version.
        update_type: the new package's (signed) update type.
        description: its release notes.
        private_key: the operator's signing key.
        now: the build time (aware).

    The new package (in ``workspace / "package"``) keeps the old one's app name
    and system packages; its ``VERSION`` file holds ``version``.

    Raises:
        PackageError, ManifestError: see :func:`unpack_payload` and
            :func:`~javia_updates.packaging.build_package`; also when the new
            package would not hold exactly the old one's files.
    """
    app_dir = workspace / "content"
    unpack_payload(package_dir / old.archive.name, old, app_dir)
    built = build_package(
        app_dir,
        workspace / "package",
        version=version,
        update_type=update_type,
        description=description,
        system_packages=old.system_packages,
        private_key=private_key,
        now=now,
        app_name=old.app,
        write_version_file=False,
    )
    before = {entry.path for entry in old.files} - {VERSION_FILE_NAME}
    after = {entry.path for entry in built.manifest.files} - {VERSION_FILE_NAME}
    if before != after:
        difference = sorted(before ^ after)
        raise PackageError(
            f"the rebuilt package would not hold exactly the files of {old.version} "
            f"(differs in {len(difference)}, e.g. {difference[0]!r}): not publishing it"
        )
    return built
