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

The signed archive is trusted only as far as the manifest says: even a package
signed by a trusted key cannot write outside its release directory, create
links or devices, or unpack more than it declared.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import secrets
import stat
import tarfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from javia_agent._fs import remove_tree
from javia_core.errors import PackageError
from javia_core.manifest import (
    FileEntry,
    Manifest,
    Signature,
    path_bound_violation,
    verify_manifest,
)
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

#: Permission bits of the directories created on extraction.
DIRECTORY_MODE = 0o755
_CHUNK_BYTES = 1024 * 1024
_BLOCK = 512
# Per tar member, room for its header, a PAX extended header (which repeats the
# path) and block padding; the whole stream may also carry two end-of-archive
# blocks padded to a 10 KiB record (POSIX.1-2001 ustar/pax layout).
_HEADER_ALLOWANCE_PER_MEMBER = 4 * _BLOCK
_TRAILER_ALLOWANCE = 2 * tarfile.RECORDSIZE


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


class _CappedReader:
    """A read-only stream that fails once more than ``limit`` bytes come out of it.

    Wraps the gzip decompressor, so an archive that inflates past what the
    manifest allows is stopped while inflating, not after.
    """

    def __init__(self, inner: BinaryIO, limit: int) -> None:
        self._inner = inner
        self._limit = limit
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = _CHUNK_BYTES
        allowed = self._limit - self.count + 1
        data = self._inner.read(min(size, max(allowed, 1)))
        self.count += len(data)
        if self.count > self._limit:
            raise PackageError(
                f"archive inflates past {self._limit} bytes, more than the signed manifest allows "
                "(unpacked_size plus tar headers): refusing it"
            )
        return data


class _FileSink(Protocol):
    def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...


class _Sink(Protocol):
    def make_directory(self, path: str) -> None: ...

    def open_file(self, path: str, mode: int) -> _FileSink: ...


class _DiscardFile:
    def write(self, data: bytes) -> None:
        return None

    def finish(self) -> None:
        return None


class _DiscardSink:
    """Checks only: every byte is hashed and dropped."""

    def make_directory(self, path: str) -> None:
        return None

    def open_file(self, path: str, mode: int) -> _FileSink:
        return _DiscardFile()


class _WrittenFile:
    def __init__(self, descriptor: int, mode: int) -> None:
        self._descriptor = descriptor
        self._mode = mode

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._descriptor, view)
            view = view[written:]

    def finish(self) -> None:
        try:
            os.fchmod(self._descriptor, self._mode)
        finally:
            os.close(self._descriptor)


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@dataclass
class _StagingSink:
    """Writes files under ``root`` only.

    Every path is opened component by component relative to directory file
    descriptors with ``O_NOFOLLOW``, and files are created with ``O_EXCL``, so
    nothing (a link planted by another process included) can redirect a write
    outside ``root`` or onto an existing file.
    """

    root: Path
    _open_files: list[_WrittenFile] = field(default_factory=list)

    def _open_parent(self, parts: list[str], create: bool) -> int:
        _check_parts(parts)
        descriptor = os.open(self.root, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC)
        try:
            for part in parts:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, DIRECTORY_MODE, dir_fd=descriptor)
                child = os.open(
                    part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=descriptor
                )
                os.close(descriptor)
                descriptor = child
        except BaseException:
            os.close(descriptor)
            raise
        return descriptor

    def make_directory(self, path: str) -> None:
        descriptor = self._open_parent(path.split("/"), create=True)
        try:
            os.fchmod(descriptor, DIRECTORY_MODE)
        finally:
            os.close(descriptor)

    def open_file(self, path: str, mode: int) -> _FileSink:
        *parents, name = path.split("/")
        _check_parts([name])
        directory = self._open_parent(parents, create=True)
        try:
            descriptor = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                0o600,
                dir_fd=directory,
            )
        finally:
            os.close(directory)
        return _WrittenFile(descriptor, mode & 0o777)


def _check_parts(parts: list[str]) -> None:
    # Defence in depth: the member checks refuse these paths before any sink
    # sees them; the staging sink refuses them again rather than trust that.
    for part in parts:
        if part in ("", ".", "..") or "/" in part or "\x00" in part:
            raise PackageError(f"refusing to write the unsafe path component {part!r}")


def _unsafe_path_reason(name: str) -> str | None:
    if not name:
        return "an empty path"
    if name.startswith("/"):
        return "an absolute path"
    if "\\" in name:
        return "a backslash in its path"
    if "\x00" in name:
        return "a NUL byte in its path"
    parts = name.split("/")
    if ".." in parts:
        return "a '..' path component"
    if any(part in ("", ".") for part in parts):
        return "an empty or '.' path component"
    problem = path_bound_violation(name)
    if problem is not None:
        return f"a path that {problem}"
    return None


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link (-> {member.linkname[:80]!r})"
    if member.islnk():
        return f"a hard link (-> {member.linkname[:80]!r})"
    if member.ischr() or member.isblk():
        return "a device file"
    if member.isfifo():
        return "a FIFO"
    if member.issparse():
        return "a sparse file"
    return f"an unsupported tar member type {member.type!r}"


def _shown(name: str) -> str:
    return repr(name if len(name) <= 120 else name[:120] + "…")


def _implied_directories(manifest: Manifest) -> set[str]:
    directories: set[str] = set()
    for entry in manifest.files:
        parts = entry.path.split("/")
        for depth in range(1, len(parts)):
            directories.add("/".join(parts[:depth]))
    return directories


def _walk_members(payload: BinaryIO, manifest: Manifest, sink: _Sink) -> None:
    """Check every member of the verified payload against ``manifest``; hand data to ``sink``.

    The single member-walking routine behind :func:`extract_payload` (writing
    sink) and :func:`check_payload` (discarding sink).

    Raises:
        PackageError: naming the first member that breaks a rule.
    """
    files = {entry.path: entry for entry in manifest.files}
    directories = _implied_directories(manifest)
    member_limit = len(files) + len(directories)
    longest_path = max((len(path.encode("utf-8")) for path in files), default=0)
    inflate_limit = (
        manifest.unpacked_size
        + (member_limit + 1) * (_HEADER_ALLOWANCE_PER_MEMBER + 2 * longest_path)
        + _TRAILER_ALLOWANCE
    )

    # Decompress here rather than with tarfile's 'r|gz', so that the inflated
    # stream itself (tar headers included, not only file data) is capped.
    with gzip.GzipFile(fileobj=payload, mode="rb") as decompressed:
        capped = _CappedReader(decompressed, inflate_limit)  # type: ignore[arg-type]
        try:
            archive = tarfile.open(fileobj=capped, mode="r|")  # type: ignore[call-overload]  # noqa: SIM115 - closed by the with below
        except PackageError:
            raise
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
            raise PackageError(f"payload is not a readable tar.gz archive: {error}") from None
        with archive:
            seen = _walk_archive(archive, manifest, files, directories, member_limit, sink)

    missing = sorted(set(files) - seen)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise PackageError(
            f"listed file {_shown(missing[0])}{more} is missing from the archive: refusing it"
        )


def _walk_archive(
    archive: tarfile.TarFile,
    manifest: Manifest,
    files: dict[str, FileEntry],
    directories: set[str],
    member_limit: int,
    sink: _Sink,
) -> set[str]:
    """The member loop of :func:`_walk_members`; returns the names seen."""
    seen: set[str] = set()
    member_count = 0
    unpacked = 0
    while True:
        try:
            member = archive.next()
        except PackageError:
            raise
        except (tarfile.TarError, OSError, EOFError, zlib.error, UnicodeError) as error:
            raise PackageError(
                f"payload is corrupt after {member_count} members: {error}"
            ) from None
        if member is None:
            break
        name = member.name
        member_count += 1
        if member_count > member_limit:
            raise PackageError(
                f"archive has more members than the {member_limit} the manifest allows "
                f"(files and their directories), at {_shown(name)}: refusing it"
            )
        reason = _unsafe_path_reason(name)
        if reason is not None:
            raise PackageError(f"archive member {_shown(name)} has {reason}: refusing it")
        if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
            raise PackageError(
                f"archive member {_shown(name)} is {_member_kind(member)}: only regular "
                "files and directories are allowed"
            )
        if member.mode & 0o7000:
            raise PackageError(
                f"archive member {_shown(name)} has mode {member.mode:o} with a setuid, "
                "setgid or sticky bit: refusing it"
            )
        if member.mode & 0o022:
            raise PackageError(
                f"archive member {_shown(name)} has mode {member.mode:o}, writable by group "
                "or others: refusing it (expected e.g. 644 or 755)"
            )
        if name in seen:
            raise PackageError(f"archive member {_shown(name)} appears twice: refusing it")
        seen.add(name)

        if member.type == tarfile.DIRTYPE:
            if name not in directories:
                raise PackageError(
                    f"archive directory {_shown(name)} holds no file listed in the manifest: "
                    "refusing it"
                )
            with _writing(name):
                sink.make_directory(name)
            continue

        entry = files.get(name)
        if entry is None:
            raise PackageError(
                f"archive member {_shown(name)} is not listed in the signed manifest: refusing it"
            )
        if member.size != entry.size:
            raise PackageError(
                f"archive member {_shown(name)} is {member.size} bytes, but the manifest "
                f"lists {entry.size} bytes: refusing it"
            )
        if unpacked + member.size > manifest.unpacked_size:
            raise PackageError(
                f"archive member {_shown(name)} takes the unpacked size past the signed "
                f"{manifest.unpacked_size} bytes: refusing it"
            )
        unpacked += _copy_member(archive, member, entry.sha256, entry.size, entry.mode, sink)
    return seen


@contextlib.contextmanager
def _writing(name: str) -> Iterator[None]:
    """Turn a failed write (disk full, I/O error) into a one-line PackageError."""
    try:
        yield
    except OSError as error:
        raise PackageError(f"cannot write {_shown(name)}: {error.strerror or error}") from None


def _copy_member(
    archive: tarfile.TarFile,
    member: tarfile.TarInfo,
    expected_sha256: str,
    expected_size: int,
    mode: int,
    sink: _Sink,
) -> int:
    name = member.name
    source = archive.extractfile(member)
    if source is None:  # pragma: no cover - regular members always have data
        raise PackageError(f"archive member {_shown(name)} has no data")
    with _writing(name):
        output = sink.open_file(name, mode)
    digest = hashlib.sha256()
    copied = 0
    try:
        while True:
            try:
                chunk = source.read(min(_CHUNK_BYTES, expected_size - copied + 1))
            except PackageError:
                raise
            except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
                raise PackageError(f"archive member {_shown(name)} is truncated: {error}") from None
            if not chunk:
                break
            copied += len(chunk)
            if copied > expected_size:
                raise PackageError(
                    f"archive member {_shown(name)} holds more than the listed "
                    f"{expected_size} bytes: refusing it"
                )
            digest.update(chunk)
            with _writing(name):
                output.write(chunk)
    finally:
        with _writing(name):
            output.finish()
    if copied != expected_size:
        raise PackageError(
            f"archive member {_shown(name)} holds {copied} bytes, but the manifest lists "
            f"{expected_size} bytes: refusing it"
        )
    actual = digest.hexdigest()
    if actual != expected_sha256:
        raise PackageError(
            f"archive member {_shown(name)} has SHA-256 {actual}, but the manifest lists "
            f"{expected_sha256}: refusing it"
        )
    return copied


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
        _walk_members(payload, manifest, _DiscardSink())


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
            _walk_members(payload, manifest, _StagingSink(staging))
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
    _fsync_directory(parent)


def _fsync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):
        descriptor = os.open(path, os.O_RDONLY | _DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


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
