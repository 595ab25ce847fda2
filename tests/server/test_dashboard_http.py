"""The dashboard over HTTP (no browser): login, cookie attributes, CSRF, which credential opens
what, security headers, and the actions offered per rollout state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import javia_updates.dashboard
from javia_core.models import RolloutOut, RolloutState
from javia_updates.dashboard.app import CONTENT_SECURITY_POLICY, COOKIE_NAME
from javia_updates.dashboard.views import rollout_actions
from javia_updates.server import create_app
from javia_updates.settings import ServerSettings
from shared_helpers import Clock


@pytest.fixture
def api_key(settings: ServerSettings) -> str:
    """The admin key of the ``client`` fixture's server."""
    return settings.require_api_key()


def make_client(
    tmp_path: Path, clock: Clock, *, api_key: str, base_url: str = "http://testserver"
) -> TestClient:
    """Another server application on the same data directory as the ``client`` fixture's."""
    settings = ServerSettings(api_key=api_key, data_dir=tmp_path / "data")
    return TestClient(create_app(settings, clock=clock), base_url=base_url)


def log_in(client: TestClient, key: str) -> Any:
    return client.post("/dashboard/login", data={"api_key": key}, follow_redirects=False)


def csrf(client: TestClient) -> dict[str, str]:
    return {"X-CSRF-Token": client.get("/dashboard/api/session").json()["csrf_token"]}


@pytest.fixture
def published(device: dict[str, Any], publish: Any) -> str:
    """v1.1.0 published to one online device; returns the version."""
    response, _package = publish("v1.1.0")
    assert response.status_code == 201, response.text
    return "v1.1.0"


def test_login_sets_a_strict_http_only_cookie_scoped_to_the_dashboard(
    client: TestClient, api_key: str
) -> None:
    answer = log_in(client, api_key)
    assert (answer.status_code, answer.headers["location"]) == (303, "./")
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=v1.")
    for attribute in ("HttpOnly", "Max-Age=28800", "Path=/dashboard", "SameSite=strict"):
        assert attribute in cookie
    assert "Secure" not in cookie  # plain http on loopback: a Secure cookie would never return


def test_over_https_the_cookie_is_secure(tmp_path: Path, clock: Clock, api_key: str) -> None:
    with make_client(tmp_path, clock, api_key=api_key, base_url="https://testserver") as client:
        assert "Secure" in log_in(client, api_key).headers["set-cookie"]


def test_a_wrong_or_missing_key_is_401_with_the_form_and_no_cookie(client: TestClient) -> None:
    for form in ({"api_key": "wrong"}, {}, {"api_key": "x" * 5000}):
        answer = client.post("/dashboard/login", data=form, follow_redirects=False)
        assert answer.status_code == 401
        assert "That admin key was not accepted." in answer.text
        assert "set-cookie" not in answer.headers


def test_the_json_endpoints_take_the_session_and_never_the_admin_key(
    client: TestClient, published: str, api_key: str, admin: dict[str, str]
) -> None:
    for path in ("/dashboard/api/overview", f"/dashboard/api/updates/{published}"):
        assert client.get(path, headers=admin).status_code == 401
    log_in(client, api_key)
    overview = client.get("/dashboard/api/overview").json()
    assert overview["counts"] == {"total": 1, "online": 1, "offline": 0, "updating": 0}
    assert [u["version"] for u in overview["updates"]] == [published]
    assert overview["updates"][0]["actions"] == ["pause", "cancel"]
    assert overview["updates"][0]["rollout"]["state"] == "active"
    assert overview["updates"][0]["status_counts"] == {"pending": 1}
    # The device still runs v1.0.0, which was never published here.
    assert (overview["versions"], overview["other_versions"]) == (
        [{"version": published, "devices": 0}],
        1,
    )
    # ... and the session opens nothing of the API.
    assert client.get("/api/v1/devices/").status_code == 401


def test_a_state_change_needs_the_sessions_csrf_token(
    client: TestClient, published: str, api_key: str, admin: dict[str, str]
) -> None:
    log_in(client, api_key)
    path = f"/dashboard/api/updates/{published}/pause"
    assert client.post(path, json={}).status_code == 403
    assert client.post(path, json={}, headers={"X-CSRF-Token": "forged"}).status_code == 403
    other = TestClient(client.app)
    log_in(other, api_key)
    assert client.post(path, json={}, headers=csrf(other)).status_code == 403
    assert (
        client.get(f"/api/v1/updates/{published}", headers=admin).json()["rollout"]["state"]
        == "active"
    )

    paused = client.post(path, json={"reason": "kitchen reports"}, headers=csrf(client))
    assert paused.status_code == 200
    assert paused.json()["update"]["rollout"]["state"] == "paused"
    assert paused.json()["update"]["actions"] == ["resume", "cancel"]
    audit = client.get("/api/v1/audit", headers=admin).json()["items"]
    assert any(e["action"] == "rollout.pause" and e["actor"] == "dashboard" for e in audit)
    refused = client.post(
        f"/dashboard/api/updates/{published}/approve", json={}, headers=csrf(client)
    )
    assert refused.status_code == 409
    assert "approve refused" in refused.json()["detail"]


def test_a_cross_site_state_change_is_refused_even_with_the_token(
    client: TestClient, published: str, api_key: str, admin: dict[str, str]
) -> None:
    log_in(client, api_key)
    path = f"/dashboard/api/updates/{published}/pause"
    token = csrf(client)
    for cross_site in (
        {"Origin": "http://evil.example"},
        {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://testserver:8080"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://evil.example", "Sec-Fetch-Site": "same-origin"},
    ):
        answer = client.post(path, json={}, headers={**token, **cross_site})
        assert answer.status_code == 403, cross_site
        assert "another site" in answer.json()["detail"]
    assert (
        client.get(f"/api/v1/updates/{published}", headers=admin).json()["rollout"]["state"]
        == "active"
    )
    refused = client.post(
        "/dashboard/login",
        data={"api_key": api_key},
        headers={"Origin": "http://evil.example"},
        follow_redirects=False,
    )
    assert refused.status_code == 403 and "set-cookie" not in refused.headers
    # A browser's own login form under Referrer-Policy: no-referrer sends Origin: null.
    own_form = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}
    again = client.post(
        "/dashboard/login", data={"api_key": api_key}, headers=own_form, follow_redirects=False
    )
    assert again.status_code == 303
    token = csrf(client)
    same_origin = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    paused = client.post(path, json={}, headers={**token, **same_origin})
    assert paused.status_code == 200, paused.text
    resumed = client.post(
        f"/dashboard/api/updates/{published}/resume",
        json={},
        headers={**token, "Sec-Fetch-Site": "none"},
    )
    assert resumed.status_code == 200, resumed.text


def test_an_api_key_on_a_dashboard_post_is_told_to_log_in(
    client: TestClient, published: str, api_key: str, admin: dict[str, str]
) -> None:
    answer = client.post(f"/dashboard/api/updates/{published}/pause", json={}, headers=admin)
    assert answer.status_code == 401
    assert "log in" in answer.json()["detail"] and "CSRF" not in answer.json()["detail"]
    # With a session cookie but the admin key instead of the token: say what the key opens.
    log_in(client, api_key)
    answer = client.post(f"/dashboard/api/updates/{published}/pause", json={}, headers=admin)
    assert answer.status_code == 403 and "/api/v1" in answer.json()["detail"]


def test_logout_needs_the_token_and_deletes_the_cookie(client: TestClient, api_key: str) -> None:
    log_in(client, api_key)
    assert client.post("/dashboard/logout").status_code == 403
    answer = client.post("/dashboard/logout", headers=csrf(client))
    assert answer.status_code == 204
    assert f'{COOKIE_NAME}=""' in answer.headers["set-cookie"]
    assert client.get("/dashboard/api/overview").status_code == 401


def test_a_session_expires_after_eight_hours(
    client: TestClient, clock: Clock, api_key: str
) -> None:
    log_in(client, api_key)
    clock.advance(hours=8, seconds=-1)
    assert client.get("/dashboard/api/overview").status_code == 200
    clock.advance(seconds=1)
    assert client.get("/dashboard/api/overview").status_code == 401


def test_every_server_process_on_the_data_directory_accepts_the_session(
    tmp_path: Path, clock: Clock, api_key: str
) -> None:
    with (
        make_client(tmp_path, clock, api_key=api_key) as first,
        make_client(tmp_path, clock, api_key=api_key) as second,
    ):
        log_in(first, api_key)
        second.cookies = first.cookies
        assert second.get("/dashboard/api/overview").status_code == 200
    with make_client(tmp_path, clock, api_key="a-new-admin-key-0123456789") as rotated:
        rotated.cookies = first.cookies
        assert rotated.get("/dashboard/api/overview").status_code == 401


def test_every_dashboard_answer_carries_the_security_headers(client: TestClient) -> None:
    for path in (
        "/dashboard/",
        "/dashboard/login",
        "/dashboard/static/app.js",
        "/dashboard/api/overview",
    ):
        headers = client.get(path).headers
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "'unsafe-inline'" not in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
    # The API keeps its own headers: the dashboard's policy is not applied there.
    assert "content-security-policy" not in client.get("/api/v1/health").headers


def test_the_page_inserts_no_data_as_html() -> None:
    """The page's script never hands data to an HTML parser (the browser tests show it too)."""
    static = Path(javia_updates.dashboard.__file__).parent / "static"
    script = (static / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script
    for page in ("index.html", "login.html"):
        html = (static / page).read_text()
        assert "<script>" not in html and " style=" not in html and " on" + "click" not in html


@pytest.mark.parametrize(
    ("state", "awaiting_phase_approval", "expected"),
    [
        (RolloutState.AWAITING_APPROVAL, False, ["approve", "cancel"]),
        (RolloutState.ACTIVE, False, ["pause", "cancel"]),
        (RolloutState.ACTIVE, True, ["approve", "pause", "cancel"]),
        (RolloutState.PAUSED, False, ["resume", "cancel"]),
        (RolloutState.HALTED, False, ["cancel"]),
        (RolloutState.CANCELLED, False, []),
        (RolloutState.COMPLETED, False, ["cancel"]),
    ],
)
def test_the_actions_offered_are_the_moves_the_state_table_allows(
    state: RolloutState, awaiting_phase_approval: bool, expected: list[str]
) -> None:
    rollout = RolloutOut(
        state=state,
        phase=0,
        phases=[10, 100],
        phase_soak_seconds=3600,
        halt_failure_rate=10.0,
        halt_min_devices=5,
        awaiting_phase_approval=awaiting_phase_approval,
    )
    assert rollout_actions(rollout) == expected
    assert rollout_actions(None) == []
