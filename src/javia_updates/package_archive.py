"""The payload archive of a package: a deterministic gzip tar (DESIGN.md section 3).

Members are relative to the application root, sorted by path (each directory
before its content), regular files and the directories that contain them
only, owner root (uid/gid 0), modification time :data:`PAYLOAD_MTIME`, PAX
format, gzip without a timestamp: the same tree always gives the same bytes.
Each file is hashed while it is archived, so the manifest entries describe
exactly the bytes in the archive; a file that changes meanwhile is refused.
Operator side.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from javia_core.errors import PackageError
from javia_core.manifest import FileEntry
from javia_updates.package_tree import VERSION_FILE_NAME, SourceFile, normalized_mode

__all__ = ["DIRECTORY_MODE", "PAYLOAD_MTIME", "sha256_of", "write_payload"]

#: Modification time of every archive member, seconds since the Unix epoch
#: (1980-01-01T00:00:00Z, the earliest time every archive tool accepts).
PAYLOAD_MTIME = 315_532_800
#: Permission bits of the directories in the archive.
DIRECTORY_MODE = 0o755

_CHUNK_BYTES = 1024 * 1024
_GZIP_LEVEL = 9


class _HashingReader:
    """Reads exactly ``size`` bytes from ``handle``, hashing and reporting progress."""

    def __init__(self, handle: BinaryIO, on_bytes: Callable[[int], None]) -> None:
        self._handle = handle
        self._on_bytes = on_bytes
        self.digest = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size if size >= 0 else _CHUNK_BYTES)
        self.digest.update(data)
        self.count += len(data)
        if data:
            self._on_bytes(len(data))
        return data


def sha256_of(path: Path) -> tuple[str, int]:
    """The SHA-256 (hex) and size in bytes of the file at ``path``."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _tar_info(path: str, *, size: int, mode: int, directory: bool) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.size = 0 if directory else size
    info.mode = mode
    info.mtime = PAYLOAD_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _parent_directories(paths: Sequence[str]) -> list[str]:
    directories: set[str] = set()
    for path in paths:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            directories.add("/".join(parts[:depth]))
    return sorted(directories)


def write_payload(
    archive_path: Path,
    sources: Sequence[SourceFile],
    version_bytes: bytes,
    version_mode: int,
    progress: Callable[[int, int], None] | None,
) -> list[FileEntry]:
    """Write the payload tar.gz at ``archive_path`` (created, never overwritten).

    Args:
        archive_path: the file to create.
        sources: the files to archive (from
            :func:`~javia_updates.package_tree.collect_files`).
        version_bytes: the ``VERSION`` file's content in the archive (it
            replaces the source file's, or is added).
        version_mode: the ``VERSION`` member's permission bits.
        progress: called as ``progress(done_bytes, total_bytes)``.

    Returns:
        The manifest entries of the files the archive holds, sorted by path.

    Raises:
        PackageError: a source file cannot be read, is no longer a regular
            file, or changed while it was archived.
        FileExistsError: ``archive_path`` exists.
    """
    paths = sorted({source.path for source in sources} | {VERSION_FILE_NAME})
    by_path = {source.path: source for source in sources}
    total = sum(source.size for source in sources if source.path != VERSION_FILE_NAME) + len(
        version_bytes
    )
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    if progress is not None:
        progress(0, total)
    # Directories first in their sorted place: tar order is sorted by path over
    # files and directories together, so each directory precedes its content.
    members = sorted(
        [(path, False) for path in paths] + [(path, True) for path in _parent_directories(paths)]
    )
    entries: list[FileEntry] = []
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    with (
        open(os.open(archive_path, flags, 0o644), "wb") as raw,
        gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, compresslevel=_GZIP_LEVEL, mtime=0
        ) as compressed,
        tarfile.open(
            fileobj=compressed, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8"
        ) as archive,
    ):
        for path, is_directory in members:
            if is_directory:
                archive.addfile(_tar_info(path, size=0, mode=DIRECTORY_MODE, directory=True))
                continue
            if path == VERSION_FILE_NAME:
                reader = _HashingReader(io.BytesIO(version_bytes), advance)
                info = _tar_info(path, size=len(version_bytes), mode=version_mode, directory=False)
                archive.addfile(info, reader)
                entries.append(
                    FileEntry(
                        path=path,
                        sha256=reader.digest.hexdigest(),
                        size=info.size,
                        mode=version_mode,
                    )
                )
                continue
            source = by_path[path]
            entries.append(_add_source(archive, source, advance))
    return entries


def _add_source(
    archive: tarfile.TarFile, source: SourceFile, advance: Callable[[int], None]
) -> FileEntry:
    try:
        descriptor = os.open(source.absolute, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as error:
        raise PackageError(f"cannot read {source.path}: {error.strerror}") from None
    with open(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise PackageError(f"{source.path} is no longer a regular file")
        mode = normalized_mode(stat.S_IMODE(info.st_mode))
        reader = _HashingReader(handle, advance)
        member = _tar_info(source.path, size=info.st_size, mode=mode, directory=False)
        try:
            archive.addfile(member, reader)
        except OSError as error:
            raise PackageError(
                f"{source.path} changed while it was being packaged ({error}): try again"
            ) from None
        if reader.count != info.st_size or handle.read(1):
            raise PackageError(f"{source.path} changed while it was being packaged: try again")
    return FileEntry(
        path=source.path, sha256=reader.digest.hexdigest(), size=info.st_size, mode=mode
    )
