"""Application versions ``vX.Y.Z`` (DESIGN.md section 2). Pure: no I/O.

A version is the letter ``v`` followed by three non-negative integers written in
ASCII digits without leading zeros, separated by dots; nothing before, after or
around it. Ordering is numeric, so ``v1.10.0 > v1.9.0``.

Example:
    >>> Version.parse("v1.10.0") > Version.parse("v1.9.0")
    True
    >>> str(Version.parse("v0.0.1"))
    'v0.0.1'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from javia_updates.errors import VersionError

__all__ = ["Version", "VersionError", "EXPECTED_FORM"]

EXPECTED_FORM = "vX.Y.Z with non-negative whole numbers without leading zeros, e.g. v1.2.3"

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
                form ``vX.Y.Z``; the message shows the expected form.
        """
        if not isinstance(text, str):
            raise VersionError(f"version must be a string in the form {EXPECTED_FORM}")
        match = _PATTERN.fullmatch(text)
        if match is None:
            shown = text if len(text) <= 40 else text[:40] + "…"
            raise VersionError(f"invalid version {shown!r}: expected {EXPECTED_FORM}")
        return cls(*(int(part) for part in match.groups()))

    @classmethod
    def is_valid(cls, text: str) -> bool:
        """Return whether ``text`` parses as a version (never raises)."""
        return isinstance(text, str) and _PATTERN.fullmatch(text) is not None

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
