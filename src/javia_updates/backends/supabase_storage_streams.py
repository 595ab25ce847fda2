"""Streamed bodies of Supabase Storage transfers, exact to the byte (DESIGN.md section 5).

:func:`file_chunks` feeds an upload from a spooled file and fails if the file
changes size while it is sent; :class:`ObjectStream` hands on exactly the
requested range of a download, dropping any bytes before it (a 200 answer to
a range request) and failing if the download breaks off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import httpx

from javia_core.errors import BackendError
from javia_updates.backends.supabase_storage_api import SupabaseStorageError

__all__ = ["ObjectStream", "file_chunks"]

_UPLOAD_CHUNK_BYTES = 1024 * 1024


def file_chunks(handle: BinaryIO, size: int, source: Path) -> Iterator[bytes]:
    """Exactly ``size`` bytes of ``handle`` in 1 MiB chunks.

    Raises:
        BackendError: the file is shorter or longer than ``size`` (it changed).
    """
    remaining = size
    while remaining > 0:
        chunk = handle.read(min(_UPLOAD_CHUNK_BYTES, remaining))
        if not chunk:
            raise BackendError(f"{source} shrank while it was uploaded: {remaining} bytes missing")
        remaining -= len(chunk)
        yield chunk
    if handle.read(1):
        raise BackendError(f"{source} grew while it was uploaded: expected {size} bytes")


class ObjectStream(Iterator[bytes]):
    """Exactly ``length`` bytes of a streamed response, after dropping ``skip`` bytes.

    Closes the response when done, on error, on :meth:`close`, or when
    garbage-collected unfinished.
    """

    def __init__(
        self, response: httpx.Response, *, skip: int, length: int, chunk_size: int, target: str
    ) -> None:
        self._response = response
        self._chunks = response.iter_bytes(chunk_size)
        self._skip = skip
        self._length = length
        self._remaining = length
        self._target = target

    def __iter__(self) -> ObjectStream:
        return self

    def __next__(self) -> bytes:
        while self._remaining > 0:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                received = self._length - self._remaining
                self.close()
                raise SupabaseStorageError(
                    f"download of {self._target} from Supabase Storage ended after "
                    f"{received} of {self._length} bytes"
                ) from None
            except httpx.HTTPError as error:
                received = self._length - self._remaining
                self.close()
                raise SupabaseStorageError(
                    f"download of {self._target} from Supabase Storage broke off after "
                    f"{received} of {self._length} bytes ({type(error).__name__}: {error})"
                ) from None
            if self._skip:
                dropped = min(self._skip, len(chunk))
                self._skip -= dropped
                chunk = chunk[dropped:]
            if not chunk:
                continue
            chunk = chunk[: self._remaining]
            self._remaining -= len(chunk)
            if self._remaining == 0:
                self.close()
            return chunk
        self.close()
        raise StopIteration

    def close(self) -> None:
        """Release the connection; the iterator yields nothing more."""
        self._remaining = 0
        self._response.close()

    def __del__(self) -> None:
        # Best effort, maybe at interpreter shutdown: any failure is ignored.
        with contextlib.suppress(Exception):
            self._response.close()
