"""The authorization matrix: every route of the app × every kind of credential.

Each route is called as device A would see it (A's uuid in the path, the
update assigned to A) with: no credentials, a wrong admin key, A's token, B's
token, a revoked token, an enrollment token and the admin key. The expected
status of every cell is written down here; a route added to the app without a
row fails :func:`test_every_route_of_the_app_has_a_matrix_row`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi.testclient import TestClient
from security_helpers import ADMIN, World, bearer, build_world, make_package
from starlette.routing import Mount

from javia_updates.server import auth

CREDENTIALS = (
    "none",
    "wrong_admin_key",
    "device_a",
    "device_b",
    "revoked_token",
    "enrollment_token",
    "admin",  # last: some admin calls change the world (revoke A, rotate A's token)
)


@dataclass(frozen=True)
class Row:
    """Expected status per credential, and how to build the request from the world."""

    statuses: tuple[int, int, int, int, int, int, int]
    path: Callable[[World], str]
    request: Callable[[World], dict[str, Any]] = field(default=lambda world: {})
    #: Whether a refusal is ``{"detail": ...}`` JSON (the dashboard's login form answers HTML).
    json_errors: bool = True

    def expected(self) -> dict[str, int]:
        return dict(zip(CREDENTIALS, self.statuses, strict=True))


PUBLIC = (200,) * 7
#                none wrong  A    B  revoked enroll admin
ADMIN_ONLY = (401, 401, 403, 403, 403, 403, 200)
ADMIN_OR_A = (401, 401, 200, 403, 401, 401, 200)
A_ONLY = (401, 403, 200, 403, 401, 401, 403)
#: The dashboard's data and actions open only to its session cookie (docs/dashboard.md).
SESSION_ONLY = (401,) * 7


def a(suffix: str = "") -> Callable[[World], str]:
    return lambda world: f"/api/v1/devices/{world.device_a}{suffix}"


def update(suffix: str = "") -> Callable[[World], str]:
    return lambda world: f"/api/v1/updates/{world.update_id}{suffix}"


def fixed(path: str) -> Callable[[World], str]:
    return lambda world: path


ANY_DEVICE = (401, 401, 200, 200, 401, 401, 200)


def first_object(world: World) -> str:
    """The object route of the published package's first file (content-addressed)."""
    manifest = world.client.get(f"/api/v1/updates/{world.update_id}/manifest", headers=ADMIN)
    return f"/api/v1/objects/{manifest.json()['files'][0]['sha256']}"


def publish_request(world: World) -> dict[str, Any]:
    return {"files": make_package("v1.2.0").files()}


MATRIX: dict[tuple[str, str], Row] = {
    # documentation: public
    ("GET", "/openapi.json"): Row(PUBLIC, fixed("/openapi.json")),
    ("HEAD", "/openapi.json"): Row(PUBLIC, fixed("/openapi.json")),
    ("GET", "/docs"): Row(PUBLIC, fixed("/docs")),
    ("HEAD", "/docs"): Row(PUBLIC, fixed("/docs")),
    ("GET", "/docs/oauth2-redirect"): Row(PUBLIC, fixed("/docs/oauth2-redirect")),
    ("HEAD", "/docs/oauth2-redirect"): Row(PUBLIC, fixed("/docs/oauth2-redirect")),
    ("GET", "/redoc"): Row(PUBLIC, fixed("/redoc")),
    ("HEAD", "/redoc"): Row(PUBLIC, fixed("/redoc")),
    ("GET", "/api/v1/health"): Row(PUBLIC, fixed("/api/v1/health")),
    # devices
    ("POST", "/api/v1/devices/register"): Row(
        (401, 401, 403, 403, 401, 201, 201),
        fixed("/api/v1/devices/register"),
        lambda world: {"json": {"device_name": "new"}},
    ),
    ("GET", "/api/v1/devices/"): Row(ADMIN_ONLY, fixed("/api/v1/devices/")),
    ("GET", "/api/v1/devices/{device_uuid}"): Row(ADMIN_ONLY, a()),
    ("POST", "/api/v1/devices/{device_uuid}/revoke"): Row(ADMIN_ONLY, a("/revoke")),
    ("POST", "/api/v1/devices/{device_uuid}/rotate-token"): Row(ADMIN_ONLY, a("/rotate-token")),
    ("POST", "/api/v1/devices/{device_uuid}/tags"): Row(
        ADMIN_ONLY, a("/tags"), lambda world: {"json": {"add": ["kitchen"]}}
    ),
    ("GET", "/api/v1/devices/{device_uuid}/updates"): Row(ADMIN_OR_A, a("/updates")),
    ("POST", "/api/v1/devices/{device_uuid}/heartbeat"): Row(
        A_ONLY, a("/heartbeat"), lambda world: {"json": {"current_version": "v1.0.0"}}
    ),
    ("GET", "/api/v1/devices/{device_uuid}/updates/check"): Row(ADMIN_OR_A, a("/updates/check")),
    ("GET", "/api/v1/devices/{device_uuid}/wakeup"): Row(A_ONLY, a("/wakeup")),
    ("GET", "/api/v1/wakeups"): Row(ADMIN_ONLY, fixed("/api/v1/wakeups")),
    ("POST", "/api/v1/devices/{device_uuid}/updates/{update_id}/status"): Row(
        A_ONLY,
        lambda world: f"/api/v1/devices/{world.device_a}/updates/{world.update_id}/status",
        lambda world: {"json": {"status": "downloading"}},
    ),
    # updates
    ("GET", "/api/v1/updates/"): Row(ADMIN_ONLY, fixed("/api/v1/updates/")),
    ("POST", "/api/v1/updates/"): Row(
        (401, 401, 403, 403, 403, 403, 201), fixed("/api/v1/updates/"), publish_request
    ),
    ("POST", "/api/v1/updates/plan"): Row(
        ADMIN_ONLY,
        fixed("/api/v1/updates/plan"),
        lambda world: {"json": {"update_type": "scheduled", "version": "v9.0.0"}},
    ),
    ("GET", "/api/v1/updates/{reference}"): Row(ADMIN_ONLY, update()),
    ("GET", "/api/v1/updates/{reference}/devices"): Row(ADMIN_ONLY, update("/devices")),
    ("GET", "/api/v1/updates/{reference}/plan"): Row(ADMIN_ONLY, update("/plan")),
    ("GET", "/api/v1/updates/{reference}/failures"): Row(ADMIN_ONLY, update("/failures")),
    # The matrix's update runs on no device: the admin passes and is told so (409).
    ("GET", "/api/v1/updates/{reference}/revert-source"): Row(
        (401, 401, 403, 403, 403, 403, 409), update("/revert-source")
    ),
    ("POST", "/api/v1/updates/{reference}/{command}"): Row(
        ADMIN_ONLY, update("/pause"), lambda world: {"json": {"reason": "matrix"}}
    ),
    ("GET", "/api/v1/updates/{reference}/manifest"): Row(ADMIN_OR_A, update("/manifest")),
    ("GET", "/api/v1/updates/{reference}/signature"): Row(ADMIN_OR_A, update("/signature")),
    ("GET", "/api/v1/updates/{reference}/download"): Row(ADMIN_OR_A, update("/download")),
    # delta downloads: the index as the package; objects and patches for any device
    ("GET", "/api/v1/updates/{reference}/delta-index"): Row(ADMIN_OR_A, update("/delta-index")),
    ("GET", "/api/v1/objects/{sha256}"): Row(ANY_DEVICE, first_object),
    ("GET", "/api/v1/patches/{base}/{target}"): Row(
        (401, 401, 404, 404, 401, 401, 404), lambda world: f"/api/v1/patches/{'a' * 64}/{'b' * 64}"
    ),
    ("GET", "/api/v1/downloads/stats"): Row(ADMIN_ONLY, fixed("/api/v1/downloads/stats")),
    # audit and enrollment tokens
    ("GET", "/api/v1/audit"): Row(ADMIN_ONLY, fixed("/api/v1/audit")),
    ("POST", "/api/v1/enrollment-tokens/"): Row(
        (401, 401, 403, 403, 403, 403, 201),
        fixed("/api/v1/enrollment-tokens/"),
        lambda world: {"json": {"max_uses": 1}},
    ),
    ("GET", "/api/v1/enrollment-tokens/"): Row(ADMIN_ONLY, fixed("/api/v1/enrollment-tokens/")),
    ("POST", "/api/v1/enrollment-tokens/{token_id}/revoke"): Row(
        ADMIN_ONLY, lambda world: f"/api/v1/enrollment-tokens/{world.enrollment_id}/revoke"
    ),
    # the dashboard: its page, form and files are public; no API credential opens the rest
    ("GET", "/dashboard/"): Row(PUBLIC, fixed("/dashboard/")),
    ("GET", "/dashboard/login"): Row(PUBLIC, fixed("/dashboard/login")),
    ("GET", "/dashboard/static/{path}"): Row(PUBLIC, fixed("/dashboard/static/app.js")),
    ("HEAD", "/dashboard/static/{path}"): Row(PUBLIC, fixed("/dashboard/static/app.js")),
    ("POST", "/dashboard/login"): Row(
        SESSION_ONLY,
        fixed("/dashboard/login"),
        lambda world: {"data": {"api_key": "not-the-key"}},
        json_errors=False,
    ),
    ("POST", "/dashboard/logout"): Row(SESSION_ONLY, fixed("/dashboard/logout")),
    ("GET", "/dashboard/api/session"): Row(SESSION_ONLY, fixed("/dashboard/api/session")),
    ("GET", "/dashboard/api/overview"): Row(SESSION_ONLY, fixed("/dashboard/api/overview")),
    ("GET", "/dashboard/api/updates/{reference}"): Row(
        SESSION_ONLY, lambda world: f"/dashboard/api/updates/{world.update_id}"
    ),
    ("GET", "/dashboard/api/devices/{device_uuid}"): Row(
        SESSION_ONLY, lambda world: f"/dashboard/api/devices/{world.device_a}"
    ),
    ("POST", "/dashboard/api/updates/{reference}/{command}"): Row(
        SESSION_ONLY, lambda world: f"/dashboard/api/updates/{world.update_id}/pause"
    ),
    # metrics: the admin key or the metrics token (none configured here), never a device's
    ("GET", "/metrics"): Row((401,) * 6 + (200,), fixed("/metrics")),
    # webhooks (the matrix's world has none: the admin passes and is told so, 404)
    ("POST", "/api/v1/webhooks/"): Row(
        (401, 401, 403, 403, 403, 403, 201),
        fixed("/api/v1/webhooks/"),
        lambda world: {"json": {"url": "https://example.com/hook", "events": ["device.failed"]}},
    ),
    ("GET", "/api/v1/webhooks/"): Row(ADMIN_ONLY, fixed("/api/v1/webhooks/")),
    ("DELETE", "/api/v1/webhooks/{webhook_id}"): Row(
        (401, 401, 403, 403, 403, 403, 404), fixed("/api/v1/webhooks/99")
    ),
    ("POST", "/api/v1/webhooks/{webhook_id}/test"): Row(
        (401, 401, 403, 403, 403, 403, 404), fixed("/api/v1/webhooks/99/test")
    ),
    ("GET", "/api/v1/webhooks/deliveries"): Row(ADMIN_ONLY, fixed("/api/v1/webhooks/deliveries")),
}


def iter_routes(app: FastAPI) -> Iterator[tuple[str, str]]:
    """Every (method, path) the app serves, whatever FastAPI version built it.

    Routes are plain Starlette routes (``path``, ``methods``), or, in newer
    FastAPI, included routers that expand to route contexts. Anything else
    fails the test rather than being skipped silently.
    """
    for route in app.routes:
        if isinstance(route, Mount):
            if isinstance(route.app, FastAPI):
                for method, path in iter_routes(route.app):
                    yield method, route.path + path
            elif isinstance(route.app, StaticFiles):
                yield from (("GET", f"{route.path}/{{path}}"), ("HEAD", f"{route.path}/{{path}}"))
            else:
                raise AssertionError(f"cannot enumerate mount {route!r}: extend iter_routes")
            continue
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:
            for context in contexts():
                for method in sorted(getattr(context.original_route, "methods", None) or ()):
                    yield method, context.path
            continue
        methods = getattr(route, "methods", None)
        path = getattr(route, "path", None)
        if path is None or methods is None:
            raise AssertionError(f"cannot enumerate route {route!r}: extend iter_routes")
        for method in sorted(methods):
            yield method, path


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    """The app; a held wake-up request is answered idle after 50 ms instead of 90 s."""
    return make_client(wakeup_hold_seconds=0.05)


def test_every_route_of_the_app_has_a_matrix_row(client: TestClient) -> None:
    served = set(iter_routes(client.app))
    assert served == set(MATRIX), (
        f"routes without a matrix row: {sorted(served - set(MATRIX))}; "
        f"rows without a route: {sorted(set(MATRIX) - served)}"
    )


@pytest.mark.parametrize("route", sorted(MATRIX), ids=lambda route: f"{route[0]} {route[1]}")
def test_authorization_matrix(route: tuple[str, str], client: TestClient) -> None:
    world = build_world(client)
    row = MATRIX[route]
    method, _template = route
    mismatches = []
    for credential, expected in row.expected().items():
        headers = world.credentials()[credential]
        response = client.request(method, row.path(world), headers=headers, **row.request(world))
        if response.status_code != expected:
            mismatches.append(f"{credential}: {response.status_code} (expected {expected})")
        elif response.status_code >= 400 and row.json_errors:
            body = response.json()
            assert isinstance(body.get("detail"), str) and body["detail"], (credential, body)
    assert not mismatches, f"{method} {row.path(world)}: " + "; ".join(mismatches)


def test_device_b_cannot_change_device_a_records(world: World) -> None:
    client = world.client
    before = client.get(f"/api/v1/devices/{world.device_a}", headers=ADMIN).json()
    row_before = client.get(f"/api/v1/updates/{world.update_id}/devices", headers=ADMIN).json()
    as_b = bearer(world.token_b)
    client.post(
        f"/api/v1/devices/{world.device_a}/heartbeat",
        json={"current_version": "v9.9.9", "metadata": {"owner": "b"}},
        headers=as_b,
    )
    client.post(
        f"/api/v1/devices/{world.device_a}/updates/{world.update_id}/status",
        json={"status": "failed", "error_message": "sabotage"},
        headers=as_b,
    )
    # B's own path with A's update id: B has no row for it.
    response = client.post(
        f"/api/v1/devices/{world.device_b}/updates/{world.update_id}/status",
        json={"status": "completed"},
        headers=as_b,
    )
    assert response.status_code == 404
    after = client.get(f"/api/v1/devices/{world.device_a}", headers=ADMIN).json()
    row_after = client.get(f"/api/v1/updates/{world.update_id}/devices", headers=ADMIN).json()
    assert after["current_version"] == before["current_version"] == "v1.0.0"
    assert "owner" not in after["metadata"]
    assert row_after == row_before
    assert [row["status"] for row in row_after["items"]] == ["pending"]


def test_admin_key_is_compared_in_constant_time(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(left: bytes, right: bytes) -> bool:
        compared.append((left, right))
        return real(left, right)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    wrong = world.client.get("/api/v1/devices/", headers={"X-API-Key": "guess"})
    right = world.client.get("/api/v1/devices/", headers=ADMIN)
    assert (wrong.status_code, right.status_code) == (401, 200)
    assert compared == [(b"guess", ADMIN["X-API-Key"].encode()), (ADMIN["X-API-Key"].encode(),) * 2]


def test_an_admin_key_that_is_not_ascii_is_refused_without_a_server_error(world: World) -> None:
    response = world.client.get("/api/v1/devices/", headers={"X-API-Key": "schlüssel".encode()})
    assert response.status_code == 401
    assert response.json()["detail"]
