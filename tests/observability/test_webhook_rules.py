"""The pure webhook rules: which change is which event, backoff and give-up, signatures, URLs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from javia_updates.backends.records import AuditEntry
from javia_updates.webhooks.delivery import RetryPolicy, display_url, next_state, retry_delay
from javia_updates.webhooks.events import (
    EVENT_TYPES,
    event_for_audit,
    signature,
    verify_signature,
)
from javia_updates.webhooks.models import check_webhook_url

NOW = datetime(2027, 1, 1, tzinfo=UTC)
POLICY = RetryPolicy(retry_seconds=10, retry_max_seconds=3600, give_up_seconds=86_400)


def test_rollout_commands_and_final_reports_are_events_other_changes_are_not() -> None:
    halted = event_for_audit(
        AuditEntry("server", "rollout.halt", {"update_id": 3, "version": "v2.0.0", "reason": "x"})
    )
    assert halted is not None and halted.type == "rollout.halted"
    assert halted.data["version"] == "v2.0.0" and halted.data["actor"] == "server"
    failed = event_for_audit(
        AuditEntry(
            "device:5c3e",
            "device_update.status",
            {"update_id": 3, "version": "v2.0.0", "to": "failed", "error_message": "boom"},
        )
    )
    assert failed is not None and failed.type == "device.failed"
    assert failed.data == {
        "update_id": 3,
        "version": "v2.0.0",
        "error_message": "boom",
        "status": "failed",
        "device_uuid": "5c3e",
    }
    for entry in (
        AuditEntry("device:5c3e", "device_update.status", {"to": "downloading"}),
        AuditEntry("admin", "device.token_rotate", {}),
        AuditEntry("server", "device_update.superseded", {}),
    ):
        assert event_for_audit(entry) is None


def test_every_documented_event_is_subscribable() -> None:
    documented = {
        "update.published",
        "rollout.paused",
        "rollout.resumed",
        "rollout.cancelled",
        "rollout.halted",
        "rollout.completed",
        "rollout.approved",
        "device.failed",
        "device.rolled_back",
        "device.registered",
    }
    assert documented <= EVENT_TYPES


@given(st.integers(min_value=1, max_value=60))
def test_retries_double_up_to_the_cap(attempts: int) -> None:
    delay = retry_delay(attempts, POLICY)
    assert delay == min(10 * 2 ** (attempts - 1), 3600)
    assert retry_delay(attempts + 1, POLICY) >= delay


def test_a_delivery_is_given_up_once_the_next_try_would_pass_the_give_up_time() -> None:
    state, retry_at = next_state(1, NOW, NOW, POLICY)
    assert state == "pending" and retry_at == NOW + timedelta(seconds=10)
    state, retry_at = next_state(20, NOW, NOW + timedelta(hours=23, minutes=30), POLICY)
    assert (state, retry_at) == ("failed", None)


@given(st.binary(max_size=200), st.text(min_size=1, max_size=40))
def test_a_signature_verifies_only_the_exact_body_with_the_secret(body: bytes, secret: str) -> None:
    header = signature(secret, body)
    assert verify_signature(secret, header=header, body=body)
    assert not verify_signature(secret, header=header, body=body + b" ")
    assert not verify_signature(secret + "x", header=header, body=body)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "file:///etc/passwd",
        "https://",
        "example.com/hook",
        "http://a b/",
        "http://127.0.0.1:99999/",
        "http://127.0.0.1:0/",
    ],
)
def test_webhook_urls_are_http_or_https_with_a_host(url: str) -> None:
    with pytest.raises(ValueError):
        check_webhook_url(url)


def test_urls_are_shown_without_credentials_or_query() -> None:
    shown = display_url("https://user:hunter2@hooks.example.com:8443/javia?token=abc")
    assert shown == "https://hooks.example.com:8443/javia?…"


def test_the_url_shown_is_the_url_called_minus_credentials_and_query() -> None:
    assert display_url("http://[::1]:18766/x") == "http://[::1]:18766/x"
    shown = display_url("http://127.0.0.1:8080/a%0d%0ab%20c?q=1")
    assert shown == "http://127.0.0.1:8080/a%0d%0ab%20c?…"
    assert all(char.isprintable() for char in shown)
