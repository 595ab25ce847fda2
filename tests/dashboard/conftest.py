"""Fixtures for the dashboard's browser tests: Debian's Chromium driven by Playwright, and a
real ``javia server`` process on loopback with devices, a rollout and a failure.

Chromium is the system's (``/usr/bin/chromium``, the Debian package ``chromium``);
Playwright's own browser downloads are never used. Without it the browser tests
skip with the reason, except in CI (``CI=true``), where they fail: ``.ci/run``
installs it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dashboard_helpers import (
    API_KEY,
    CHROMIUM,
    CHROMIUM_ARGS,
    FAILURE_MESSAGE,
    HOSTILE_NAME,
    SCREENSHOTS_VARIABLE,
    DashboardFleet,
    report_unavailable,
)

from javia_devtools.server_process import SERVER_MODULE_COMMAND, ServerProcess
from shared_helpers import bearer, build_package


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium from the system, shared by the browser tests of one module.

    Module scope, not session: Playwright's synchronous API keeps its event loop
    marked as running in this thread until it stops, and any later test in the
    same worker that calls ``asyncio.run`` would fail ("cannot be called from a
    running event loop"). Checked after it stops.
    """
    if not CHROMIUM.exists():
        report_unavailable(f"no {CHROMIUM}: install the Debian package 'chromium'")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        report_unavailable("the Python package 'playwright' is missing: pip install -e '.[dev]'")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
    assert asyncio.events._get_running_loop() is None, "Playwright left its event loop running"


def _report(
    fleet: DashboardFleet, name: str, update_id: int, *statuses: tuple[str, str | None]
) -> None:
    for status, message in statuses:
        response = httpx.post(
            f"{fleet.url}/api/v1/devices/{fleet.devices[name]}/updates/{update_id}/status",
            json={"status": status, "error_message": message},
            headers=bearer(fleet.tokens[name]),
        )
        assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def dashboard_fleet(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    signing_key: Ed25519PrivateKey,
) -> Iterator[DashboardFleet]:
    """The server and its fleet (see :class:`DashboardFleet`); stopped at the end of the module.

    The server starts while the browser launches (each takes seconds).
    """
    root = tmp_path_factory.mktemp("dashboard")
    server = ServerProcess(
        root / "data",
        API_KEY,
        log_path=root / "server.log",
        command=SERVER_MODULE_COMMAND,
        config_path=root / "absent.toml",
    )
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            starting = pool.submit(server.start)
            try:
                request.getfixturevalue("browser")
            finally:
                starting.result()
        yield _populate(DashboardFleet(server.url, {}, {}), signing_key)
    finally:
        server.stop()


def _populate(fleet: DashboardFleet, signing_key: Ed25519PrivateKey) -> DashboardFleet:
    for name, tags, timezone in (
        ("kitchen", ["kitchen", "ground-floor"], "Europe/Berlin"),
        ("hall", ["ground-floor"], "America/New_York"),
        ("garage", ["outdoor"], "Asia/Kolkata"),
        (HOSTILE_NAME, ["lab"], "UTC"),
    ):
        registered = httpx.post(
            f"{fleet.url}/api/v1/devices/register",
            json={"device_name": name, "tags": tags, "timezone": timezone},
            headers=fleet.admin,
        ).json()
        fleet.devices[name] = registered["device_uuid"]
        fleet.tokens[name] = registered["device_token"]
        beat = httpx.post(
            f"{fleet.url}/api/v1/devices/{registered['device_uuid']}/heartbeat",
            json={"current_version": "v1.0.0", "metadata": {"model": "Raspberry Pi 4"}},
            headers=bearer(registered["device_token"]),
        )
        assert beat.status_code == 200, beat.text
    package = build_package("v1.1.0", "instant", signing_key=signing_key)
    published = httpx.post(
        f"{fleet.url}/api/v1/updates/",
        files=package.files(),
        data={"phases": "50,100", "phase_soak_seconds": "1h", "halt_min_devices": "100"},
        headers=fleet.admin,
    )
    assert published.status_code == 201, published.text
    update_id = published.json()["id"]
    _report(fleet, "kitchen", update_id, ("downloading", None), ("completed", None))
    _report(fleet, "garage", update_id, ("downloading", None), ("failed", FAILURE_MESSAGE))
    return fleet


@pytest.fixture
def screenshots() -> Path | None:
    """The directory for screenshots (``DASHBOARD_SCREENSHOTS``), or None: none are taken."""
    value = os.environ.get(SCREENSHOTS_VARIABLE)
    if not value:
        return None
    directory = Path(value)
    directory.mkdir(parents=True, exist_ok=True)
    return directory
