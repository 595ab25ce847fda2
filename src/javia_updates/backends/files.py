"""Package objects as files in the server's data directory (the ``local`` blob store).

Layout::

    <data_dir>/packages/<key>/manifest.json
    <data_dir>/packages/<key>/manifest.sig
    <data_dir>/packages/<key>/payload.tar.gz
    <data_dir>/uploads/                      streaming uploads in progress

Every object is written to a temporary file in its final directory, flushed
with ``fsync``, renamed into place with ``os.replace`` and the directory is
fsynced, so after a crash an object is either absent or complete.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from javia_core.errors import BackendError, NotFoundError
from javia_updates.backends.base import BlobStore

__all__ = ["STALE_UPLOAD_SECONDS", "FileBlobStore"]

#: An upload file older than this (seconds) belongs to a request that died.
STALE_UPLOAD_SECONDS = 24 * 3600

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _check_segment(value: str, what: str) -> str:
    if not _SEGMENT.fullmatch(value) or value in (".", ".."):
        raise BackendError(
            f"invalid blob {what} {value[:80]!r}: expected letters, digits, '.', '_' or '-'"
        )
    return value


def _make_directories(directory: Path) -> None:
    """Create ``directory`` and every missing parent with mode 0750, whatever the umask.

    ``Path.mkdir(mode=..., parents=True)`` gives only the last directory that
    mode; the parents it creates get the umask's (0755 under 022), which would
    open a version's directory to every local user.

    Raises:
        OSError: a directory cannot be created or its mode set.
    """
    missing: list[Path] = []
    for candidate in (directory, *directory.parents):
        if candidate.is_dir():
            break
        missing.append(candidate)
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o750)
        except FileExistsError:
            continue  # made by another server process meanwhile
        os.chmod(path, 0o750)


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class FileBlobStore(BlobStore):
    """Package objects under ``root/packages``; uploads stream into ``root/uploads``.

    Args:
        root: the server's data directory; created if missing.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.packages = self.root / "packages"
        self._uploads = self.root / "uploads"

    def prepare(self, *, now: float | None = None) -> None:
        """Create the directories (mode 0750) if missing; drop abandoned uploads.

        An upload file untouched for :data:`STALE_UPLOAD_SECONDS` (a day) was
        left by a server that died mid-request; it is removed.

        Args:
            now: the current time as a Unix timestamp (default: the system clock).

        Raises:
            BackendError: the directories cannot be created.
        """
        try:
            for directory in (self.packages, self._uploads):
                _make_directories(directory)
        except OSError as error:
            raise BackendError(f"cannot create {self.root}: {error.strerror}") from None
        current = time.time() if now is None else now
        for leftover in self._uploads.iterdir():
            try:
                if current - leftover.stat().st_mtime > STALE_UPLOAD_SECONDS:
                    leftover.unlink()
            except OSError:
                continue  # another server removed it, or it is not ours to remove

    def _path(self, key: str, name: str | None = None) -> Path:
        parts = key.split("/")
        for part in parts:
            _check_segment(part, "key")
        path = self.packages.joinpath(*parts)
        return path if name is None else path / _check_segment(name, "name")

    def _write(self, key: str, name: str, fill) -> None:  # type: ignore[no-untyped-def]
        target = self._path(key, name)
        try:
            _make_directories(target.parent)
            descriptor, temp_name = tempfile.mkstemp(prefix=f".{name}.", dir=target.parent)
        except OSError as error:
            raise BackendError(f"cannot write {target}: {error.strerror}") from None
        temp = Path(temp_name)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                fill(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp, 0o640)
            os.replace(temp, target)
            _fsync_dir(target.parent)
        except OSError as error:
            temp.unlink(missing_ok=True)
            raise BackendError(f"cannot write {target}: {error.strerror}") from None
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, name: str, data: bytes) -> None:
        """Write ``data`` atomically (temp file, fsync, rename, fsync directory)."""
        self._write(key, name, lambda handle: handle.write(data))

    def put_file(self, key: str, name: str, source: Path) -> None:
        """Move ``source`` into place; copied first when it is on another file system.

        ``source`` is gone afterwards, whether the move succeeded or not.
        """
        source = Path(source)
        target = self._path(key, name)
        try:
            _make_directories(target.parent)
            with open(source, "rb+") as handle:
                os.fsync(handle.fileno())
            if os.stat(source).st_dev == os.stat(target.parent).st_dev:
                os.chmod(source, 0o640)
                os.replace(source, target)
                _fsync_dir(target.parent)
                return
        except OSError as error:
            source.unlink(missing_ok=True)
            raise BackendError(f"cannot store {target}: {error.strerror}") from None
        try:
            with open(source, "rb") as reader:
                self._write(
                    key, name, lambda handle: shutil.copyfileobj(reader, handle, 1024 * 1024)
                )
        finally:
            source.unlink(missing_ok=True)

    def size(self, key: str, name: str) -> int:
        """Size of the object in bytes.

        Raises:
            NotFoundError: no such object.
        """
        try:
            return os.stat(self._path(key, name)).st_size
        except FileNotFoundError:
            raise NotFoundError(
                f"package object {key}/{name} is missing from the blob store"
            ) from None

    def iter_range(
        self, key: str, name: str, start: int, end: int, *, chunk_size: int = 256 * 1024
    ) -> Iterator[bytes]:
        """Open the object now and return an iterator over bytes ``[start, end)``.

        Raises:
            NotFoundError: no such object (raised by this call, not by the iterator).
        """
        path = self._path(key, name)
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed by the generator below
        except FileNotFoundError:
            raise NotFoundError(
                f"package object {key}/{name} is missing from the blob store"
            ) from None
        return self._chunks(handle, start, end, chunk_size)

    @staticmethod
    def _chunks(handle, start: int, end: int, chunk_size: int) -> Iterator[bytes]:  # type: ignore[no-untyped-def]
        with handle:
            handle.seek(start)
            remaining = end - start
            while remaining > 0:
                chunk = handle.read(min(chunk_size, remaining))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk

    def delete(self, key: str) -> None:
        """Remove the package directory ``key`` and its objects, if present.

        Everything that can be removed is removed; nothing is silently left.

        Raises:
            BackendError: an object or the directory could not be removed (the
                message names it and why), e.g. so that a failed publish can
                log the leftover.
        """
        path = self._path(key)
        problems: list[str] = []

        def note(failed: str, error: BaseException) -> None:
            if not isinstance(error, FileNotFoundError):
                problems.append(f"{failed}: {getattr(error, 'strerror', None) or error}")

        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=lambda _function, failed, error: note(failed, error))
        else:
            shutil.rmtree(path, onerror=lambda _function, failed, info: note(failed, info[1]))
        if problems:
            raise BackendError(
                f"cannot delete package {key} from {self.packages}: {'; '.join(problems[:3])}"
            )
        parent = path.parent
        while parent != self.packages:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def upload_dir(self) -> Path:
        """``<data_dir>/uploads``, on the same file system as the packages."""
        self._uploads.mkdir(mode=0o750, parents=True, exist_ok=True)
        return self._uploads
