"""Application versions ``vX.Y.Z`` (DESIGN.md section 2). Pure: no I/O.

A version is the letter ``v`` followed by three non-negative integers written in
ASCII digits without leading zeros, separated by dots; nothing before, after or
around it. Each number is at most :data:`MAX_COMPONENT` (2**63 - 1, the largest
signed 64-bit integer a database column holds), so every version that parses
can be stored and compared by the server. Ordering is numeric, so
``v1.10.0 > v1.9.0``.

Example:
    >>> Version.parse("v1.10.0") > Version.parse("v1.9.0")
    True
    >>> str(Version.parse("v0.0.1"))
    'v0.0.1'
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

from javia_core.errors import VersionError

__all__ = ["EXPECTED_FORM", "MAX_COMPONENT", "Version", "VersionError"]

#: The largest number allowed in each of X, Y and Z: 2**63 - 1, the largest signed
#: 64-bit integer (SQLite INTEGER, PostgreSQL BIGINT).
MAX_COMPONENT = 2**63 - 1

EXPECTED_FORM = (
    "vX.Y.Z with non-negative whole numbers without leading zeros, "
    f"each at most {MAX_COMPONENT}, e.g. v1.2.3"
)
_MAX_DIGITS = len(str(MAX_COMPONENT))

# [0-9] rather than \d: \d also matches non-ASCII digits such as '١'.
_NUMBER = r"(0|[1-9][0-9]*)"
_PATTERN = re.compile(rf"v{_NUMBER}\.{_NUMBER}\.{_NUMBER}")


@dataclass(frozen=True, order=True, slots=True)
class Version:
    """A parsed ``vX.Y.Z`` version, totally ordered by (major, minor, patch)."""

    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse ``text`` as ``vX.Y.Z``.

        Args:
            text: the version string; no surrounding whitespace is accepted.

        Returns:
            The version; ``str()`` of it gives ``text`` back.

        Raises:
            VersionError: (a ``ValueError``) when ``text`` is not exactly of the
                form ``vX.Y.Z``, or when a number is above :data:`MAX_COMPONENT`;
                the message shows the expected form.
        """
        if not isinstance(text, str):
            raise VersionError(f"version must be a string in the form {EXPECTED_FORM}")
        if cls is Version:
            return _parse_cached(text)
        return cls(*_numbers(text))

    @classmethod
    def is_valid(cls, text: str) -> bool:
        """Return whether ``text`` parses as a version (never raises)."""
        try:
            cls.parse(text)
        except VersionError:
            return False
        return True

    def bump(self, part: Literal["major", "minor", "patch"]) -> Version:
        """Return the next version for a ``major``, ``minor`` or ``patch`` release."""
        if part == "major":
            return Version(self.major + 1, 0, 0)
        if part == "minor":
            return Version(self.major, self.minor + 1, 0)
        if part == "patch":
            return Version(self.major, self.minor, self.patch + 1)
        raise ValueError(f"unknown version part {part!r}: expected major, minor or patch")

    def __str__(self) -> str:
        return f"v{self.major}.{self.minor}.{self.patch}"


def _numbers(text: str) -> tuple[int, int, int]:
    """The three numbers of ``vX.Y.Z`` (see :meth:`Version.parse`); raises VersionError."""
    match = _PATTERN.fullmatch(text)
    if match is None:
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise VersionError(f"invalid version {shown!r}: expected {EXPECTED_FORM}")
    parts = match.groups()
    # Length first: int() of a very long digit string is slow, then refused.
    if any(len(part) > _MAX_DIGITS or int(part) > MAX_COMPONENT for part in parts):
        shown = text if len(text) <= 60 else text[:60] + "…"
        raise VersionError(
            f"version {shown} has a number above {MAX_COMPONENT}: expected {EXPECTED_FORM}"
        )
    major, minor, patch = (int(part) for part in parts)
    return major, minor, patch


@functools.lru_cache(maxsize=1024)
def _parse_cached(text: str) -> Version:
    # The server parses the same few version strings on every heartbeat; a
    # Version is immutable, so one instance per string is shared. Refused
    # strings raise and are not cached.
    return Version(*_numbers(text))
