"""Where a payload's checked members go on the device (DESIGN.md section 3).

:class:`DiscardSink` keeps nothing (``javia agent verify``: the walk hashes
the bytes, the sink drops them);
:class:`StagingSink` writes under a private staging directory only, opening
every path component by component relative to directory file descriptors with
``O_NOFOLLOW`` and creating files with ``O_EXCL``. The rules deciding *what*
may be written live in :mod:`javia_agent.payload_members`; this module only
decides *how* it is written.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from javia_core.errors import PackageError

__all__ = ["DIRECTORY_MODE", "DiscardSink", "FileSink", "Sink", "StagingSink"]

#: Permission bits of the directories created on extraction.
DIRECTORY_MODE = 0o755
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class FileSink(Protocol):
    """One file being written: data in order, then ``finish`` (sets its mode, closes it)."""

    def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...


class Sink(Protocol):
    """Where the checked members of a payload go (paths are safe, relative, ``/``-separated)."""

    def make_directory(self, path: str) -> None: ...

    def open_file(self, path: str, mode: int) -> FileSink: ...


class _DiscardFile:
    def write(self, data: bytes) -> None:
        return None

    def finish(self) -> None:
        return None


class DiscardSink:
    """Checks only: every byte is hashed and dropped."""

    def make_directory(self, path: str) -> None:
        return None

    def open_file(self, path: str, mode: int) -> FileSink:
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


@dataclass
class StagingSink:
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

    def open_file(self, path: str, mode: int) -> FileSink:
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
