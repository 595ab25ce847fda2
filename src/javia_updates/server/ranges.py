"""HTTP byte ranges for resumable downloads (RFC 9110 section 14). Pure.

Only a single range is served: ``bytes=N-``, ``bytes=N-M`` and the suffix form
``bytes=-S``. As RFC 9110 section 14.2 allows, a Range header the server does
not understand (another unit, several ranges, bad syntax, ``N > M``) is
ignored and the whole object is sent with 200; the client sees the status and
must not append a 200 body to a partial file. A syntactically valid range
that starts at or beyond the end of the object is unsatisfiable (416).
"""

from __future__ import annotations

import re

__all__ = ["RangeNotSatisfiableError", "parse_byte_range"]

_SINGLE = re.compile(r"^bytes=([0-9]{0,19})-([0-9]{0,19})$", re.IGNORECASE)


class RangeNotSatisfiableError(Exception):
    """The requested range lies outside the object (answer 416 with ``Content-Range: bytes */size``)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"requested range is outside the object of {size} bytes")
        self.size = size


def parse_byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Interpret a ``Range`` header for an object of ``size`` bytes.

    Args:
        header: the header value, or None when absent.
        size: the object's length in bytes.

    Returns:
        ``(first, last)`` byte positions, inclusive, with ``last < size``; or
        None to send the whole object (no header, or one that is ignored).

    Raises:
        RangeNotSatisfiableError: a valid single range that selects no byte
            (``first >= size``, or a zero-length suffix).
    """
    if header is None:
        return None
    match = _SINGLE.fullmatch(header.strip().replace(" ", ""))
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text:
        if not last_text:
            return None
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiableError(size)
        return max(0, size - suffix), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else None
    if last is not None and last < first:
        return None
    if first >= size:
        raise RangeNotSatisfiableError(size)
    return first, size - 1 if last is None else min(last, size - 1)
