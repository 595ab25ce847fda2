"""API fuzzing: schemathesis drives every operation of the server's OpenAPI schema.

Requests are generated from the schema (valid and invalid: wrong types, missing
fields, odd strings, huge numbers) and sent to the ASGI app in-process, as the
operator, as a registered device and with no credentials. The checks: no
response is a 5xx (a 5xx is a bug, DESIGN.md section 6), and every 4xx carries
a ``detail`` saying what was wrong. Bounded: at most :data:`MAX_EXAMPLES`
examples per operation and credential, so the whole module stays well under a
minute.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from security_helpers import ADMIN, API_KEY, World, bearer, build_world

from javia_updates.server import create_app
from javia_updates.settings import ServerSettings

#: Examples per operation for the operator and for a device; anonymous calls
#: stop at authentication, so fewer of them are enough.
MAX_EXAMPLES = 25
MAX_ANONYMOUS_EXAMPLES = 8


@schemathesis.check
def four_xx_has_a_detail(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx answer is JSON with a non-empty ``detail`` saying what was wrong."""
    if 400 <= response.status_code < 500:
        try:
            body = response.json()
        except ValueError:
            raise AssertionError(
                f"{response.status_code} without a JSON body: {response.text[:200]!r}"
            ) from None
        detail = body.get("detail") if isinstance(body, dict) else None
        if not detail:
            raise AssertionError(f"{response.status_code} without a detail: {body!r}")
    return None


@schemathesis.check
def no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 5xx is a bug."""
    if response.status_code >= 500:
        raise AssertionError(
            f"{case.method} {case.formatted_path} answered {response.status_code}: "
            f"{response.text[:300]}"
        )
    return None


def _fuzzed_app() -> tuple[Any, World]:
    """A fresh app with devices A and B, an update for A and an enrollment token."""
    data_dir = Path(tempfile.mkdtemp(prefix="javia-fuzz-"))
    fixed = datetime(2027, 3, 10, 12, 0, tzinfo=UTC)
    # heartbeat_burst=0: fuzzing is not a heartbeat storm; let every request reach the service.
    # A held wake-up request is answered idle after 50 ms instead of 90 s.
    server_settings = ServerSettings(
        api_key=API_KEY, data_dir=data_dir, heartbeat_burst=0, wakeup_hold_seconds=0.05
    )
    app = create_app(server_settings, clock=lambda: fixed)
    with TestClient(app) as client:
        world = build_world(client)
    return app, world


def _fuzz(who: str, max_examples: int) -> Any:
    """A test fuzzing every operation of its own app as ``who`` (admin, device or anonymous).

    Each credential gets its own app, so the operator's fuzzed calls (revoking
    tokens, say) never change what the device's run sees. A device's calls use
    its own uuid in the path, so they reach the service instead of stopping at
    the ownership check.
    """
    app, world = _fuzzed_app()
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    headers = {"admin": dict(ADMIN), "device": bearer(world.token_a), "anonymous": {}}[who]

    @schema.parametrize()
    @settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def test(case: Any) -> None:
        if who == "device" and "device_uuid" in (case.path_parameters or {}):
            case.path_parameters["device_uuid"] = world.device_a
        response = case.call(headers=headers)
        case.validate_response(response, checks=[no_server_error, four_xx_has_a_detail])

    test.__doc__ = f"Fuzzing as {who}: no 5xx, and every 4xx says what was wrong."
    return test


test_fuzzing_as_the_operator = _fuzz("admin", MAX_EXAMPLES)
test_fuzzing_as_a_device = _fuzz("device", MAX_EXAMPLES)
test_fuzzing_without_credentials = _fuzz("anonymous", MAX_ANONYMOUS_EXAMPLES)
