"""What the dashboard's browser tests share: the system Chromium, the admin key, the fleet."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
API_KEY = "dashboard-test-admin-key-0123456789"
#: A device name that would run script if the page ever inserted it as HTML.
HOSTILE_NAME = "<img src=x onerror=alert(1)>"
FAILURE_MESSAGE = "health check failed: app exited with status 3\nTraceback: ValueError: bad config"
#: Where the browser tests save screenshots of the main pages, when set (docs/dashboard.md).
SCREENSHOTS_VARIABLE = "DASHBOARD_SCREENSHOTS"


@dataclass
class DashboardFleet:
    """A running server with four devices and the rollout of v1.1.0 (two phases, 50% and 100%).

    ``devices`` maps each device's name to its uuid; ``kitchen`` completed the
    update, ``garage`` failed it with :data:`FAILURE_MESSAGE`, the others wait.
    """

    url: str
    devices: dict[str, str]
    tokens: dict[str, str]

    @property
    def admin(self) -> dict[str, str]:
        return {"X-API-Key": API_KEY}

    def rollout_state(self) -> str:
        """The rollout's state as the API (not the page) reports it."""
        response = httpx.get(f"{self.url}/api/v1/updates/v1.1.0", headers=self.admin)
        response.raise_for_status()
        state: str = response.json()["rollout"]["state"]
        return state


def report_unavailable(reason: str, environ: Mapping[str, str] | None = None) -> NoReturn:
    """Skip the requesting test, or fail it in CI (``CI=true``), like ``tests/postgres.py``.

    Raises:
        pytest.fail.Exception: ``CI`` is ``true``/``1``/``yes`` (any case).
        pytest.skip.Exception: otherwise.
    """
    environ = os.environ if environ is None else environ
    if environ.get("CI", "").strip().lower() in {"true", "1", "yes"}:
        pytest.fail(f"dashboard browser tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"dashboard browser tests skipped: {reason}")
