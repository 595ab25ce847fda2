"""Re-exports :mod:`javia_core.versioning`, where versions live.

Kept because DESIGN.md section 2 names ``javia_updates.versioning.Version.parse``
as a public contract; new code imports :mod:`javia_core.versioning`.
"""

from javia_core.versioning import EXPECTED_FORM, MAX_COMPONENT, Version, VersionError

__all__ = ["EXPECTED_FORM", "MAX_COMPONENT", "Version", "VersionError"]
