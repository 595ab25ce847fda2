"""The dashboard in a real browser (headless Chromium): what an operator sees and does.

One server process with four devices and a two-phase rollout serves every test
here (``conftest.py``). Set ``DASHBOARD_SCREENSHOTS=docs/images`` to save the
screenshots of the main pages shown in the README (docs/dashboard.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dashboard_helpers import API_KEY, FAILURE_MESSAGE, HOSTILE_NAME, DashboardFleet

VIEWPORT = {"width": 1280, "height": 860}


@pytest.fixture
def page(browser: Any, dashboard_fleet: DashboardFleet) -> Iterator[Any]:
    """A fresh browser context (no cookies) and page; JavaScript errors and dialogs recorded."""
    context = browser.new_context(viewport=VIEWPORT, base_url=dashboard_fleet.url)
    context.set_default_timeout(5000)
    tab = context.new_page()
    tab.dialogs = []
    tab.errors = []
    tab.on("dialog", lambda dialog: (tab.dialogs.append(dialog.message), dialog.dismiss()))
    tab.on("pageerror", lambda error: tab.errors.append(str(error)))
    tab.on("console", lambda message: record_console_error(tab.errors, message))
    yield tab
    context.close()


def record_console_error(errors: list[str], message: Any) -> None:
    """Console errors but the expected one: the page's first request without a session (401)."""
    if message.type == "error" and "status of 401" not in message.text:
        errors.append(message.text)


def log_in(page: Any, key: str = API_KEY) -> None:
    page.goto("/dashboard/")
    page.wait_for_url("**/dashboard/login")
    page.fill("#api_key", key)
    page.click("button[type=submit]")


def shoot(page: Any, screenshots: Path | None, name: str) -> None:
    if screenshots is not None:
        page.screenshot(path=str(screenshots / name), full_page=True)


def test_a_wrong_key_is_refused_and_opens_nothing(page: Any, screenshots: Path | None) -> None:
    log_in(page, "not-the-admin-key")
    assert page.locator(".login-box .error").inner_text() == "That admin key was not accepted."
    assert page.context.cookies() == []
    shoot(page, screenshots, "dashboard-login.png")
    page.goto("/dashboard/#/")
    page.wait_for_url("**/dashboard/login")


def test_the_operator_sees_the_fleet_pauses_the_rollout_and_reads_a_failure(
    page: Any, dashboard_fleet: DashboardFleet, screenshots: Path | None
) -> None:
    log_in(page)
    page.wait_for_url("**/dashboard/")
    cookie = next(c for c in page.context.cookies() if c["name"] == "javia_dashboard_session")
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (
        True,
        "Strict",
        "/dashboard",
    )

    # The fleet: counts, every device (the hostile name as plain text), the rollout.
    page.wait_for_selector("#count-total .number")
    assert page.locator("#count-total .number").inner_text() == "4"
    assert page.locator("#count-online .number").inner_text() == "4"
    names = page.locator("#devices .device-link").all_inner_texts()
    assert sorted(names) == sorted(dashboard_fleet.devices)
    assert page.locator("#devices img").count() == 0
    assert page.get_by_text("outdoor", exact=True).count() == 1
    page.wait_for_selector("#live:has-text('live')")
    shoot(page, screenshots, "dashboard-fleet.png")

    # The rollout: phases, state, actions; pause changes the server's state.
    page.click("#rollouts .rollout-link:text('v1.1.0')")
    page.wait_for_selector("#rollout-summary .s-active")
    assert page.locator("#phases tbody tr").count() == 2
    assert page.locator("#rollout-devices .device-row").count() == 4
    assert FAILURE_MESSAGE.splitlines()[0] in page.locator("#rollout-devices").inner_text()
    shoot(page, screenshots, "dashboard-rollout.png")
    page.click("button[data-command=pause]")
    page.wait_for_selector("#rollout-summary .s-paused")
    assert dashboard_fleet.rollout_state() == "paused"
    assert page.locator("button[data-command=resume]").is_visible()
    page.click("button[data-command=resume]")
    page.wait_for_selector("#rollout-summary .s-active")
    assert dashboard_fleet.rollout_state() == "active"

    # A device's history with its failure; the hostile name is text on its own page too.
    page.click("#rollout-devices .device-link:text('garage')")
    page.wait_for_selector("#device-history .history-row")
    history = page.locator("#device-history").inner_text()
    assert "failed" in history and "ValueError: bad config" in history
    shoot(page, screenshots, "dashboard-device.png")
    page.goto(f"/dashboard/#/device/{dashboard_fleet.devices[HOSTILE_NAME]}")
    page.wait_for_selector(f"#device-name:text-is('{HOSTILE_NAME}')")
    assert page.locator("main img").count() == 0

    assert page.dialogs == [], "a device-supplied string ran as script"
    assert page.errors == []


def test_a_state_change_without_the_csrf_token_is_refused_and_logging_out_ends_the_session(
    page: Any, dashboard_fleet: DashboardFleet
) -> None:
    log_in(page)
    page.wait_for_selector("#count-total .number")
    statuses = page.evaluate(
        """async () => {
            const post = (headers) => fetch("api/updates/v1.1.0/pause", {
                method: "POST", credentials: "same-origin",
                headers: Object.assign({"Content-Type": "application/json"}, headers),
                body: "{}"});
            const missing = await post({});
            const wrong = await post({"X-CSRF-Token": "forged"});
            return [missing.status, wrong.status];
        }"""
    )
    assert statuses == [403, 403]
    assert dashboard_fleet.rollout_state() == "active"
    # The API keeps the admin key: the session cookie opens none of it.
    assert page.evaluate('async () => (await fetch("/api/v1/devices/")).status') == 401

    page.click("#logout")
    page.wait_for_url("**/dashboard/login?logged-out")
    assert page.locator(".notice").inner_text() == "Logged out."
    assert page.context.cookies() == []
    assert page.evaluate('async () => (await fetch("api/overview")).status') == 401


def test_a_malformed_address_shows_not_found_without_a_script_error(page: Any) -> None:
    log_in(page)
    page.wait_for_selector("#count-total .number")
    page.goto("/dashboard/#/device/%E0")
    assert page.locator("#view h1").inner_text() == "Not found"
    page.click("text=← Fleet")
    page.wait_for_selector("#count-total .number")
    assert page.errors == []


def test_a_structured_failure_is_shown_field_by_field_as_text(
    page: Any, dashboard_fleet: DashboardFleet
) -> None:
    """A ``failure`` object on a history row (sent by servers that record one) is shown
    generically, every key and value as text, however hostile."""
    failure = {
        "class": "health_check",
        "step": "health",
        "exit_code": 3,
        "output_tail": "line one\n<script>alert(2)</script>\n<img src=x onerror=alert(3)>",
        "details": {"signal": None, "reason": "<b>not bold</b>"},
    }

    def add_failure(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        for row in body["history"]["items"]:
            row["failure"] = failure
        route.fulfill(response=response, json=body)

    page.route("**/dashboard/api/devices/*", add_failure)
    log_in(page)
    page.goto(f"/dashboard/#/device/{dashboard_fleet.devices['garage']}")
    page.wait_for_selector("#device-history details.failure")
    shown = page.locator("#device-history details.failure").inner_text()
    for expected in (
        "health_check",
        "exit_code",
        "3",
        "<script>alert(2)</script>",
        "<b>not bold</b>",
    ):
        assert expected in shown
    assert page.locator("main img, main script, main b").count() == 0
    assert page.dialogs == []
