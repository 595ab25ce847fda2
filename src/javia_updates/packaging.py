"""Build a signed package from an application directory (DESIGN.md section 3). Operator side.

A package directory holds three files:

- ``payload.tar.gz``: the application tree as a gzip tar, members relative to
  its root, sorted by path, regular files and the directories that contain
  them only, owner root (uid/gid 0), a fixed modification time and no
  absolute paths, so the same tree always gives the same bytes;
- ``manifest.json``: the canonical manifest listing every file with its
  SHA-256, size in bytes and permission bits, plus the archive's own SHA-256
  and size;
- ``manifest.sig``: the Ed25519 signature over the exact manifest bytes.

Secrets and junk are left out by default (:data:`DEFAULT_EXCLUDES`, plus the
patterns of a ``.javiaignore`` file at the root of the application), and a
symbolic link anywhere in the tree is refused rather than followed or packaged.
Files that still look like secrets (private keys, cloud and service tokens)
are packaged but named in :attr:`BuiltPackage.warnings`
(:func:`find_secret_warnings`), so the operator sees them before devices do.

The agent reads package directories with
:func:`javia_core.package_reader.read_package_dir` (installs from a USB stick);
this module is the operator's builder: it checks the publish inputs, assembles
and signs the manifest and writes the package directory. The tree walk and
exclude rules are :mod:`javia_updates.package_tree`, the deterministic archive
:mod:`javia_updates.package_archive`, the secret scan
:mod:`javia_updates.secret_scan`; their public names are re-exported here.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from javia_core.errors import ManifestError, PackageError
from javia_core.manifest import (
    MANIFEST_NAME,
    PAYLOAD_NAME,
    SIGNATURE_NAME,
    ArchiveInfo,
    KeyringChanges,
    Manifest,
    check_description_length,
    key_id_for,
    sign_manifest,
    validate_apt_package,
)
from javia_core.models import UpdateType
from javia_core.versioning import Version
from javia_updates.package_archive import PAYLOAD_MTIME, sha256_of, write_payload
from javia_updates.package_tree import (
    DEFAULT_EXCLUDES,
    FILE_MODE,
    IGNORE_FILE_NAME,
    VERSION_FILE_NAME,
    ExcludeRules,
    SourceFile,
    collect_files,
    normalized_mode,
    read_app_version,
)
from javia_updates.secret_scan import find_secret_warnings

__all__ = [
    "DEFAULT_EXCLUDES",
    "IGNORE_FILE_NAME",
    "PAYLOAD_MTIME",
    "VERSION_FILE_NAME",
    "BuiltPackage",
    "ExcludeRules",
    "SourceFile",
    "build_package",
    "collect_files",
    "find_secret_warnings",
    "keyring_changes",
    "normalized_mode",
    "read_app_version",
    "sanitize_app_name",
]

_APP_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class BuiltPackage:
    """A package written by :func:`build_package`.

    Attributes:
        directory: the package directory.
        manifest: the signed manifest.
        manifest_bytes: the exact bytes of ``manifest.json`` (what was signed).
        signature_bytes: the bytes of ``manifest.sig``.
        manifest_path: ``directory / "manifest.json"``.
        signature_path: ``directory / "manifest.sig"``.
        payload_path: ``directory / "payload.tar.gz"``.
        warnings: one line per packaged file that looks like a secret (see
            :func:`find_secret_warnings`); the package was built anyway.
    """

    directory: Path
    manifest: Manifest
    manifest_bytes: bytes
    signature_bytes: bytes
    manifest_path: Path
    signature_path: Path
    payload_path: Path
    warnings: tuple[str, ...] = ()


def sanitize_app_name(name: str) -> str:
    """Turn a directory name into a valid manifest ``app`` name.

    Characters other than letters, digits, ``.``, ``_`` and ``-`` become ``-``;
    leading non-alphanumerics are dropped; the result is cut to 64 characters.
    An empty result becomes ``app``.
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", name)
    cleaned = re.sub(r"^[^A-Za-z0-9]+", "", cleaned)[:64]
    return cleaned or "app"


def keyring_changes(
    add_keys: Sequence[Path], retire_keys: Sequence[str], signing_key_id: str | None
) -> KeyringChanges | None:
    """The manifest's ``keyring`` field from public key files and key ids to retire.

    The one check of ``javia publish --add-key/--retire-key``, with or
    without ``--dry-run`` (:func:`build_package` calls it).

    Args:
        add_keys: public key files (``*.pub``) to trust.
        retire_keys: key ids (16 lower-case hex digits) to stop trusting.
        signing_key_id: the key signing the package (it cannot be retired);
            None when it is not known (a dry run with an encrypted key).

    Returns:
        The changes, or None when there are none.

    Raises:
        SigningKeyError: a file in ``add_keys`` is missing or not an Ed25519 public key.
        ManifestError: a key id is malformed, listed twice, or signs the package.
    """
    if not add_keys and not retire_keys:
        return None
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from javia_core.keys import load_public_key

    pems = []
    for path in add_keys:
        key = load_public_key(Path(path))
        pems.append(key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode())
    retire = tuple(dict.fromkeys(key_id.strip().lower() for key_id in retire_keys))
    if signing_key_id in retire:
        raise ManifestError(
            f"cannot retire key {signing_key_id}: it signs this very package; retire a key "
            "with a package signed by its successor"
        )
    try:
        return KeyringChanges(add=tuple(dict.fromkeys(pems)), retire=retire)
    except ValidationError as error:
        problems = "; ".join(
            str(item["msg"]).removeprefix("Value error, ") for item in error.errors()[:3]
        )
        raise ManifestError(f"invalid keyring changes: {problems}") from None


def _new_manifest(**fields: Any) -> Manifest:
    try:
        return Manifest(**fields)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors()[:3]
        )
        raise ManifestError(f"cannot build the manifest: {problems}") from None


def _write_new(path: Path, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    with open(os.open(path, flags, 0o644), "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _replace_version_file(app_dir: Path, version: Version) -> None:
    path = app_dir / VERSION_FILE_NAME
    mode = 0o644
    if path.is_symlink():
        raise PackageError(f"{path} is a symbolic link: refusing to write through it")
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
    temporary = app_dir / f".{VERSION_FILE_NAME}.javia-tmp-{os.getpid()}"
    temporary.unlink(missing_ok=True)
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as handle:
        handle.write(f"{version}\n".encode("ascii"))
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(temporary, mode)
    os.replace(temporary, path)


def build_package(
    app_dir: Path,
    output_dir: Path,
    *,
    version: Version,
    update_type: UpdateType,
    description: str,
    system_packages: Sequence[str],
    private_key: Ed25519PrivateKey,
    now: datetime,
    app_name: str | None = None,
    write_version_file: bool = True,
    progress: Callable[[int, int], None] | None = None,
    add_keys: Sequence[Path] = (),
    retire_keys: Sequence[str] = (),
) -> BuiltPackage:
    """Build and sign a package from ``app_dir`` into ``output_dir``.

    Writes ``payload.tar.gz``, ``manifest.sig`` and, last, ``manifest.json``
    (DESIGN.md section 3). The payload's ``VERSION`` holds ``version`` (the
    source file's content is replaced in the archive, or the file added).

    Args:
        app_dir: the application directory; see :func:`collect_files` for
            what is left out and refused.
        output_dir: the package directory; created if missing. It must not
            already hold a package.
        version: the version being published.
        update_type: scheduled, urgent or instant (DESIGN.md section 4); signed.
        description: release notes shown to operators (at most 10,000 characters).
        system_packages: Debian package names (optionally ``name=version``)
            the device installs with apt; signed.
        private_key: the operator's Ed25519 signing key.
        now: the build time, an aware datetime (stored as UTC, whole seconds).
        app_name: the manifest ``app``; defaults to the application
            directory's name made valid by :func:`sanitize_app_name`.
        write_version_file: after the package is complete, also write the new
            version into ``app_dir/VERSION`` (atomically).
        progress: called as ``progress(done_bytes, total_bytes)`` while files
            are archived.
        add_keys: public key files (``*.pub``) devices trust from this
            package on (key rotation; signed into ``keyring.add``).
        retire_keys: key ids devices stop trusting after this package
            (``keyring.retire``); never the id of ``private_key``.

    Returns:
        The written package; its ``warnings`` name files that look like
        secrets (:func:`find_secret_warnings`).

    Raises:
        ManifestError: an invalid system package name, app name or
            description, a naive ``now``, or invalid keyring changes (a key id
            that is not 16 hex digits, retiring the signing key, a key both
            added and retired); raised before anything is written.
        SigningKeyError: a file in ``add_keys`` is not an Ed25519 public key.
        PackageError: the application tree cannot be packaged (see
            :func:`collect_files`), ``output_dir`` already holds a package, or a
            file changed while it was being read.
    """
    app_dir = Path(app_dir)
    output_dir = Path(output_dir)
    if not isinstance(version, Version):
        raise TypeError("version must be a javia_core.versioning.Version")
    packages = tuple(validate_apt_package(spec) for spec in system_packages)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ManifestError("created_at (now) must be an aware datetime, e.g. UTC")
    check_description_length(description)
    name = app_name if app_name is not None else sanitize_app_name(app_dir.resolve().name)
    if not _APP_NAME_PATTERN.fullmatch(name):
        raise ManifestError(
            f"invalid app name {name[:80]!r}: expected 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    update_type = UpdateType(update_type)
    changes = keyring_changes(add_keys, retire_keys, key_id_for(private_key.public_key()))

    sources = collect_files(app_dir)
    warnings = tuple(find_secret_warnings(sources))
    version_source = next((s for s in sources if s.path == VERSION_FILE_NAME), None)
    version_mode = version_source.mode if version_source is not None else FILE_MODE
    version_bytes = f"{version}\n".encode("ascii")

    manifest_path = output_dir / MANIFEST_NAME
    signature_path = output_dir / SIGNATURE_NAME
    payload_path = output_dir / PAYLOAD_NAME
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PackageError(
            f"cannot create output directory {output_dir}: {error.strerror}"
        ) from None
    existing = [p.name for p in (manifest_path, signature_path, payload_path) if os.path.lexists(p)]
    if existing:
        raise PackageError(
            f"{output_dir} already holds a package ({', '.join(existing)}): "
            "refusing to overwrite it; choose an empty output directory"
        )

    temporary_payload = output_dir / f".{PAYLOAD_NAME}.partial-{os.getpid()}"
    written: list[Path] = []
    try:
        temporary_payload.unlink(missing_ok=True)
        entries = write_payload(temporary_payload, sources, version_bytes, version_mode, progress)
        archive_sha256, archive_size = sha256_of(temporary_payload)
        manifest = _new_manifest(
            app=name,
            version=str(version),
            created_at=now,
            update_type=update_type,
            description=description,
            system_packages=packages,
            files=tuple(entries),
            archive=ArchiveInfo(name=PAYLOAD_NAME, sha256=archive_sha256, size=archive_size),
            unpacked_size=sum(entry.size for entry in entries),
            keyring=changes,
        )
        manifest_bytes = manifest.to_bytes()
        signature_bytes = sign_manifest(manifest_bytes, private_key).to_bytes()
        if os.path.lexists(payload_path):
            raise PackageError(f"{payload_path} appeared while packaging: refusing to overwrite it")
        os.rename(temporary_payload, payload_path)
        written.append(payload_path)
        _write_new(signature_path, signature_bytes)
        written.append(signature_path)
        _write_new(manifest_path, manifest_bytes)
        written.append(manifest_path)
    except FileExistsError as error:
        for path in written:
            path.unlink(missing_ok=True)
        raise PackageError(
            f"{error.filename} appeared while packaging: refusing to overwrite it"
        ) from None
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    finally:
        temporary_payload.unlink(missing_ok=True)

    if write_version_file:
        _replace_version_file(app_dir, version)
    return BuiltPackage(
        directory=output_dir,
        manifest=manifest,
        manifest_bytes=manifest_bytes,
        signature_bytes=signature_bytes,
        manifest_path=manifest_path,
        signature_path=signature_path,
        payload_path=payload_path,
        warnings=warnings,
    )
