"""Every tar member of a verified payload, checked against its signed manifest (DESIGN.md section 3).

The rules :func:`walk_members` enforces while streaming, in one pass: only
regular files and directories; safe relative paths within the manifest's
bounds (:func:`~javia_core.manifest.path_bound_violation`); no
setuid/setgid/sticky bit and no group- or other-writable mode; every file
listed, of the listed size and SHA-256, seen once; the inflated stream (tar
headers included), the unpacked bytes and the member count capped by what the
manifest declares; every listed file present. Checked bytes go to a
:class:`~javia_agent.staging_sink.Sink`; this module writes nothing itself.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import tarfile
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from javia_agent.staging_sink import Sink
from javia_core.errors import PackageError
from javia_core.manifest import FileEntry, Manifest, path_bound_violation

__all__ = ["walk_members"]

_CHUNK_BYTES = 1024 * 1024
_BLOCK = 512
# Per tar member, room for its header, a PAX extended header (which repeats the
# path) and block padding; the whole stream may also carry two end-of-archive
# blocks padded to a 10 KiB record (POSIX.1-2001 ustar/pax layout).
_HEADER_ALLOWANCE_PER_MEMBER = 4 * _BLOCK
_TRAILER_ALLOWANCE = 2 * tarfile.RECORDSIZE


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


def walk_members(payload: BinaryIO, manifest: Manifest, sink: Sink) -> None:
    """Check every member of the verified payload against ``manifest``; hand data to ``sink``.

    The single member-walking routine behind
    :func:`~javia_agent.verification.extract_payload` (a
    :class:`~javia_agent.staging_sink.StagingSink`) and
    :func:`~javia_agent.verification.check_payload` (a
    :class:`~javia_agent.staging_sink.DiscardSink`). ``payload`` must already
    have passed the size and SHA-256 checks against ``manifest``.

    Args:
        payload: the verified ``payload.tar.gz``, open for reading at its start.
        manifest: the verified manifest listing every file.
        sink: where checked directories and file bytes go.

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
    sink: Sink,
) -> set[str]:
    """The member loop of :func:`walk_members`; returns the names seen."""
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
    sink: Sink,
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
