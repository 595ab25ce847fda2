"""Fixtures for end-to-end tests: a real server, real agents, real applications."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from javia_devtools.demo import LocalFleet, example_app_dir


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[LocalFleet]:
    """A running server and a signing key; devices are added by the test."""
    fleet = LocalFleet(tmp_path, heartbeat_seconds=0.5, health_seconds=1.0)
    fleet.generate_key()
    fleet.start_server()
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A copy of the example application at v1.0.0."""
    target = tmp_path / "pi_client"
    shutil.copytree(example_app_dir(), target, ignore=shutil.ignore_patterns("__pycache__"))
    return target
