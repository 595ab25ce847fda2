"""Fixtures for the security tests: an isolated server app with a hand-moved clock and
a small world of devices and credentials (see ``security_helpers``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from security_helpers import API_KEY, START, World, build_world

from javia_updates.server import create_app
from javia_updates.settings import ServerSettings
from shared_helpers import Clock, isolate_javia_environment


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No JAVIA_* variable or settings file of the machine running the tests leaks in."""
    isolate_javia_environment(monkeypatch, tmp_path)
    monkeypatch.setenv("JAVIA_OPERATOR_CONFIG", str(tmp_path / "no-such-operator.toml"))


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def make_client(tmp_path: Path, clock: Clock) -> Iterator[Callable[..., TestClient]]:
    """make_client(**settings) -> a TestClient of a fresh app in its own data directory."""
    opened: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        data_dir = tmp_path / f"data-{len(opened)}"
        settings = ServerSettings(api_key=API_KEY, data_dir=data_dir, **overrides)
        client = TestClient(create_app(settings, clock=clock))
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture
def world(client: TestClient) -> World:
    return build_world(client)
