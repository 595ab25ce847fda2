"""The DESIGN.md public contracts stay importable where DESIGN.md names them.

Sections 2 and 4 name ``javia_updates.versioning.Version.parse`` and
``javia_updates.scheduling.next_window_start``; the code lives in
``javia_core`` and those modules re-export it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import javia_core.scheduling
import javia_core.versioning


def test_version_parse_is_importable_from_javia_updates() -> None:
    from javia_updates.versioning import Version, VersionError

    assert Version is javia_core.versioning.Version
    assert str(Version.parse("v1.10.0")) == "v1.10.0"
    assert Version.parse("v1.10.0") > Version.parse("v1.9.0")
    with pytest.raises(VersionError):
        Version.parse("1.0.0")
    assert issubclass(VersionError, ValueError)


def test_next_window_start_is_importable_from_javia_updates() -> None:
    from javia_updates.scheduling import next_window_start

    assert next_window_start is javia_core.scheduling.next_window_start
    after = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert next_window_start(after, "UTC") == datetime(2026, 1, 2, 2, 0, tzinfo=UTC)


def test_the_scheduling_re_export_is_the_whole_public_surface() -> None:
    import javia_updates.scheduling

    assert set(javia_updates.scheduling.__all__) == set(javia_core.scheduling.__all__)
    for name in javia_core.scheduling.__all__:
        assert getattr(javia_updates.scheduling, name) is getattr(javia_core.scheduling, name)
