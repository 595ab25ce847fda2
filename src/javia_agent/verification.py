"""Package verification and safe extraction on the device (DESIGN.md section 3).

One code path serves network installs, ``javia agent verify`` and
``javia agent install``:

1. :func:`verify_metadata`: the Ed25519 signature over the exact manifest bytes
   by a key in the device's keyring (no keys: refuse), then anti-rollback (the
   version must be newer than the running one) and, for network installs, that
   the manifest is the one the server offered (no mix-and-match).
2. :func:`verify_archive`: the payload's size, then its SHA-256, against the
   signed manifest. The archive is not opened as a tar before this passes.
3. :func:`extract_payload` / :func:`check_payload`: every tar member checked
   against the manifest's ``files`` while streaming: only regular files and
   directories; safe relative paths within the manifest's bounds (at most
   :data:`~javia_core.manifest.MAX_PATH_COMPONENTS` components,
   :data:`~javia_core.manifest.MAX_PATH_COMPONENT_BYTES` bytes each,
   :data:`~javia_core.manifest.MAX_PATH_BYTES` bytes in all); no
   setuid/setgid/sticky bit and no group- or other-writable mode; listed,
   of the listed size and SHA-256, seen once; unpacked bytes and member count
   capped; every listed file present. Extraction writes into a private staging
   directory next to the destination and renames it into place only when all
   checks passed. A refused extraction removes its staging directory
   (:func:`javia_agent._fs.remove_tree`, safe at any depth); one left by a
   crash is removed by the installer's start-up clean-up.

This module holds the signature, version and archive-hash checks and the
public entry points; the member rules are :mod:`javia_agent.payload_members`
and the writing of checked members is :mod:`javia_agent.staging_sink`.

The signed archive is trusted only as far as the manifest says: even a package
signed by a trusted key cannot write outside its release directory, create
links or devices, or unpack more than it declared.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from javia_agent._fs import fsync_directory, remove_tree
from javia_agent.payload_members import walk_members
from javia_agent.staging_sink import DIRECTORY_MODE, DiscardSink, StagingSink
from javia_core.errors import PackageError
from javia_core.manifest import Manifest, Signature, verify_manifest
from javia_core.package_reader import read_package_dir
from javia_core.versioning import Version

__all__ = [
    "DIRECTORY_MODE",
    "VerifiedPackage",
    "check_payload",
    "extract_payload",
    "verify_archive",
    "verify_metadata",
    "verify_package_dir",
]

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class VerifiedPackage:
    """A manifest whose signature verified against the keyring.

    Attributes:
        manifest: the parsed, signed manifest.
        key_id: the id of the keyring key that signed it (16 hex digits).
    """

    manifest: Manifest
    key_id: str


def verify_metadata(
    manifest_bytes: bytes,
    signature_bytes: bytes,
    keyring: Mapping[str, Ed25519PublicKey],
    *,
    current_version: Version | None,
    expected_version: str | None = None,
    expected_app: str | None = None,
) -> VerifiedPackage:
    """Verify the manifest's signature, then the version rules.

    Args:
        manifest_bytes: the exact bytes of ``manifest.json`` as received.
        signature_bytes: the bytes of ``manifest.sig``.
        keyring: trusted public keys by key id; empty refuses everything.
        current_version: the version the device runs, or ``None`` on a device
            with no application installed yet.
        expected_version: the version the server said it was offering; the
            signed manifest must name the same (no mix-and-match of one
            update's metadata with another's package).
        expected_app: the application this device runs, if known; the
            manifest must name the same.

    Returns:
        The verified manifest and the signing key id.

    Raises:
        SignatureError: no trusted keys, malformed signature file, key not in
            the keyring, or the signature does not verify.
        ManifestError: the signed bytes are not a valid manifest.
        PackageError: the version is not newer than ``current_version``
            (anti-rollback, DESIGN.md section 3), or it or the app differs from
            what was expected.
    """
    manifest = verify_manifest(manifest_bytes, signature_bytes, keyring)
    key_id = Signature.from_bytes(signature_bytes).key_id
    version = manifest.parsed_version
    if current_version is not None:
        if version < current_version:
            raise PackageError(
                f"{version} is not newer than the running {current_version}: refusing a downgrade"
            )
        if version == current_version:
            raise PackageError(
                f"{version} is not newer than the running {current_version}: "
                "refusing to install the same version again"
            )
    if expected_version is not None and manifest.version != expected_version:
        raise PackageError(
            f"the signed manifest is for {manifest.version[:40]}, but {expected_version[:40]} "
            "was offered: refusing a package that does not match its update"
        )
    if expected_app is not None and manifest.app != expected_app:
        raise PackageError(
            f"the package is for app {manifest.app!r}, but this device runs {expected_app[:64]!r}: "
            "refusing it"
        )
    return VerifiedPackage(manifest=manifest, key_id=key_id)


@contextlib.contextmanager
def _verified_payload(payload_path: Path, manifest: Manifest) -> Iterator[BinaryIO]:
    """Open the payload, check size then SHA-256, and yield it rewound.

    The same open file is then read as a tar, so a file swapped on disk
    after the check is never the one unpacked.
    """
    expected_size = manifest.archive.size
    try:
        handle = open(payload_path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise PackageError(f"payload {payload_path} does not exist") from None
    except OSError as error:
        raise PackageError(f"cannot open payload {payload_path}: {error.strerror}") from None
    with handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise PackageError(f"payload {payload_path} is not a regular file")
        if info.st_size != expected_size:
            raise PackageError(
                f"payload is {info.st_size} bytes, but the signed manifest says "
                f"{expected_size} bytes: refusing it"
            )
        digest = hashlib.sha256()
        remaining = expected_size
        while remaining > 0:
            chunk = handle.read(min(_CHUNK_BYTES, remaining))
            if not chunk:
                raise PackageError(
                    f"payload shrank while being read: got {expected_size - remaining} of "
                    f"{expected_size} bytes"
                )
            digest.update(chunk)
            remaining -= len(chunk)
        if handle.read(1):
            raise PackageError(f"payload grew past the signed size of {expected_size} bytes")
        actual = digest.hexdigest()
        if actual != manifest.archive.sha256:
            raise PackageError(
                f"payload SHA-256 is {actual}, but the signed manifest says "
                f"{manifest.archive.sha256}: refusing it"
            )
        handle.seek(0)
        yield handle


def verify_archive(payload_path: Path, manifest: Manifest) -> None:
    """Check the payload's size (first) and SHA-256 against the signed manifest.

    Reads the file in 1 MiB chunks and never opens it as a tar.

    Args:
        payload_path: the downloaded ``payload.tar.gz``.
        manifest: the verified manifest (see :func:`verify_metadata`).

    Raises:
        PackageError: the file is missing or not a regular file, or its size in
            bytes or its SHA-256 differs; the message gives expected and actual.
    """
    with _verified_payload(payload_path, manifest):
        pass


def check_payload(payload_path: Path, manifest: Manifest) -> None:
    """Run every check :func:`extract_payload` runs, writing nothing.

    Verifies the archive's size and SHA-256 first, then walks every member,
    hashing and discarding its data.

    Args:
        payload_path: the ``payload.tar.gz``.
        manifest: the verified manifest.

    Raises:
        PackageError: the first problem found, in one line naming the member.
    """
    with _verified_payload(payload_path, manifest) as payload:
        walk_members(payload, manifest, DiscardSink())


def extract_payload(payload_path: Path, manifest: Manifest, destination: Path) -> None:
    """Verify the payload and unpack it into ``destination``, all or nothing.

    The archive's size and SHA-256 are checked before it is opened as a tar.
    Files are written into a new private staging directory next to the
    destination (``destination.parent / ".staging-<name>-<random>"``), every
    member checked against the manifest while streaming (see the module
    docstring). Only when every check passed are the files flushed to disk
    (``os.sync``), the staging directory given mode 0755 and renamed to
    ``destination``. File modes come from the manifest (``0o777`` mask);
    directories get 0755.

    Args:
        payload_path: the ``payload.tar.gz``.
        manifest: the verified manifest.
        destination: the directory to create, e.g.
            ``/opt/javia/app/releases/v1.2.3``. It must not exist; its parent
            must.

    Raises:
        PackageError: ``destination`` exists or its parent does not, the
            payload fails verification, or a member breaks a rule (the message
            names it). The staging directory is removed and ``destination``
            is not created.
    """
    destination = Path(destination)
    parent = destination.parent
    if os.path.lexists(destination):
        raise PackageError(f"{destination} already exists: refusing to extract over it")
    if not parent.is_dir():
        raise PackageError(f"cannot extract into {destination}: {parent} is not a directory")
    with _verified_payload(payload_path, manifest) as payload:
        staging = parent / f".staging-{destination.name}-{secrets.token_hex(8)}"
        try:
            os.mkdir(staging, 0o700)
        except OSError as error:
            raise PackageError(
                f"cannot create staging directory {staging}: {error.strerror}"
            ) from None
        try:
            walk_members(payload, manifest, StagingSink(staging))
            os.sync()
            os.chmod(staging, DIRECTORY_MODE)
            if os.path.lexists(destination):
                raise PackageError(
                    f"{destination} appeared during extraction: refusing to replace it"
                )
            os.rename(staging, destination)
        except BaseException as error:
            try:
                remove_tree(staging)
            except OSError as cleanup:  # the installer's start-up clean-up tries again
                logger.warning("cannot remove staging directory %s: %s", staging, cleanup)
            if isinstance(error, OSError):
                raise PackageError(
                    f"cannot move the extracted release into {destination}: {error.strerror}"
                ) from None
            raise
    with contextlib.suppress(OSError):
        fsync_directory(parent)


def verify_package_dir(
    directory: Path,
    keyring: Mapping[str, Ed25519PublicKey],
    *,
    current_version: Version | None,
) -> VerifiedPackage:
    """Everything installation checks, short of writing (``javia agent verify``).

    Reads ``manifest.json``, ``manifest.sig`` and ``payload.tar.gz`` from
    ``directory``, verifies the signature and version rules
    (:func:`verify_metadata`), then the archive and every member
    (:func:`check_payload`).

    Args:
        directory: the package directory.
        keyring: trusted public keys by key id.
        current_version: the running version, or ``None`` if none.

    Returns:
        The verified manifest and signing key id.

    Raises:
        PackageError: a missing file, a downgrade, or an unsafe or altered payload.
        SignatureError: no trusted keys, an untrusted key or a bad signature.
        ManifestError: the signed manifest is malformed.
    """
    manifest_bytes, signature_bytes, payload_path = read_package_dir(directory)
    verified = verify_metadata(
        manifest_bytes, signature_bytes, keyring, current_version=current_version
    )
    check_payload(payload_path, verified.manifest)
    return verified
