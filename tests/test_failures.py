"""``javia_core.failures``: redaction never lets a secret through, bounds, causes."""

from __future__ import annotations

import base64
import os
import string

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from javia_core.failures import (
    MAX_FAILURE_COMPRESSED_BYTES,
    MAX_FAILURE_JSON_BYTES,
    FailureClass,
    FailureDetails,
    cause_of,
    failure_size,
    fit_failure,
    redact,
)
from javia_core.models import StatusReport, UpdateStatus

# Values a secret may take: long enough that surrounding random text does not
# hold it by chance.
_SECRET_ALPHABET = string.ascii_letters + string.digits + "+/=_-.~"
secret_values = st.text(_SECRET_ALPHABET, min_size=12, max_size=60)
surroundings = st.text(max_size=80)
names = st.sampled_from(
    [
        "API_KEY",
        "OPENAI_API_KEY",
        "DEVICE_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "db_password",
        "Password",
        "passphrase",
        "client_secret",
        "SESSION_COOKIE",
        "x-auth-token",
    ]
)
separators = st.sampled_from(["=", ": ", " = ", ":", "='", '="', '": "'])


def _assignment(name: str, separator: str, value: str) -> str:
    quote = separator[-1] if separator[-1] in "'\"" else ""
    return f"{name}{separator}{value}{quote}"


@settings(max_examples=150)
@given(surroundings, names, separators, secret_values, surroundings)
@example("", "API_KEY", "=", "[REDACTED]abcdefgh", "")
def test_an_assigned_secret_never_survives(
    before: str, name: str, separator: str, value: str, after: str
) -> None:
    assume(value not in before + after)
    text = f"{before}\n{_assignment(name, separator, value)}\n{after}"
    assert value not in redact(text)


@settings(max_examples=150)
@given(surroundings, secret_values, surroundings)
def test_a_known_secret_never_survives(before: str, secret: str, after: str) -> None:
    assume(secret not in before + after)
    # Anywhere, even glued to other text, and even when it overlaps the marker.
    assert secret not in redact(before + secret + after + secret, [secret])


@given(st.text(min_size=6, max_size=30), st.text(max_size=40))
@example("REDACTED", "")
@example("[REDACTED]", "x")
@example("ACTED]", "[RED")
def test_a_known_secret_never_survives_even_against_the_marker(secret: str, text: str) -> None:
    assert secret not in redact(text + secret + text, [secret])


@given(surroundings, st.text(string.ascii_letters + string.digits + "+/=\n", min_size=20))
def test_pem_blocks_never_survive_whole_or_cut(before: str, body: str) -> None:
    assume(body.strip() not in before + "after")
    block = f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----"
    assert body.strip() not in redact(f"{before}\n{block}\nafter")
    # A tail that starts inside the block (its BEGIN line cut off).
    cut = block[len("-----BEGIN PRIVATE KEY-----") + 1 :]
    assert body.strip() not in redact(cut + "\nafter")
    # A text cut inside the block (its END line missing).
    assert body.strip() not in redact(f"{before}\n" + block[: -len("-----END PRIVATE KEY-----")])


@given(secret_values, st.sampled_from(["Bearer", "bearer", "Basic", "token"]))
def test_authorisation_values_never_survive(value: str, scheme: str) -> None:
    assume(value not in "sent header Authorization: to the server curl -H")
    assert value not in redact(f"sent header Authorization: {scheme} {value} to the server")
    assert value not in redact(f"curl -H '{scheme} {value}'")


@given(st.text(string.ascii_letters + string.digits + "%-._~!$&'()*+,;=", min_size=12))
def test_url_passwords_never_survive(password: str) -> None:
    text = f"Looking in indexes: https://deploy:{password}@pypi.example.com/simple"
    redacted = redact(text)
    assert password not in redacted
    assert "https://deploy:[REDACTED]@pypi.example.com/simple" in redacted


def test_known_token_shapes_are_redacted() -> None:
    tokens = [
        "ghp_" + "a1" * 18,
        "xoxb-1234567890-abcdef",
        "AKIAIOSFODNN7EXAMPLE",
        "sk-" + "Z" * 30,
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlc2ln",
    ]
    redacted = redact("\n".join(f"using {token} now" for token in tokens))
    for token in tokens:
        assert token not in redacted
    assert redacted.count("using [REDACTED] now") == len(tokens)


def test_ordinary_output_is_left_alone() -> None:
    text = 'Traceback (most recent call last):\n  File "app.py", line 3\nValueError: bad config\n'
    assert redact(text) == text


def test_fit_failure_bounds_any_output_and_keeps_its_end() -> None:
    noise = os.urandom(300_000).hex()  # does not compress
    failure = fit_failure(
        FailureClass.CRASH_AFTER_START,
        "health_check",
        "v1.2.0 stopped running",
        exit_code=3,
        output_tail=noise + "\nRuntimeError: the real error",
        health_output_tail="x" * 500_000,
    )
    raw, compressed = failure_size(failure)
    assert raw <= MAX_FAILURE_JSON_BYTES
    assert compressed <= MAX_FAILURE_COMPRESSED_BYTES
    assert failure.output_tail is not None
    assert failure.output_tail.endswith("RuntimeError: the real error")


def test_fit_failure_makes_hostile_text_storable_and_drops_out_of_range_numbers() -> None:
    failure = fit_failure(
        FailureClass.OTHER, "Bad Step!", "nul\x00 and \ud800", exit_code=999, signal=0
    )
    assert failure.reason == "nul\ufffd and \ufffd"
    assert (failure.step, failure.exit_code, failure.signal) == ("other", None, None)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_class", "meteor"),
        ("step", "Health Check"),
        ("exit_code", 256),
        ("exit_code", "3"),
        ("signal", 0),
        ("reason", "a\x00b"),
        ("output_tail", "x" * 70_000),
        ("output_source", "../journal"),
    ],
)
def test_the_wire_object_refuses_out_of_rule_fields(field: str, value: object) -> None:
    body: dict[str, object] = {
        "failure_class": "start",
        "step": "switching",
        "reason": "did not start",
    }
    body[field] = value
    with pytest.raises(ValidationError) as caught:
        StatusReport.model_validate({"status": "failed", "failure": body})
    assert field in str(caught.value)


def test_an_incompressible_failure_over_64_kib_compressed_is_refused() -> None:
    noise = base64.b85encode(os.urandom(80_000)).decode()
    with pytest.raises(ValidationError, match="compressed"):
        FailureDetails(
            failure_class=FailureClass.OTHER,
            step="staging",
            reason="x",
            output_tail=noise[:60_000],
            health_output_tail=noise[60_000:],
        )


def test_a_status_report_carries_a_failure() -> None:
    report = StatusReport.model_validate(
        {
            "status": "rolled_back",
            "failure": {
                "failure_class": "crash_after_start",
                "step": "health_check",
                "reason": "stopped",
                "exit_code": 3,
            },
        }
    )
    assert report.status is UpdateStatus.ROLLED_BACK
    assert report.failure is not None
    assert report.failure.failure_class is FailureClass.CRASH_AFTER_START


def test_causes_collapse_what_varies_between_devices() -> None:
    first = cause_of(
        "dependencies",
        "installing requirements.txt failed with status 1 after 12.5 s for v1.2.3",
        "WARNING: retrying\nERROR: Could not connect to 10.0.0.7:3128 (pid 812)",
    )
    second = cause_of(
        "dependencies",
        "installing requirements.txt failed with status 1 after 3.0 s for v1.2.3",
        "ERROR: Could not connect to 10.0.0.9:3128 (pid 77)\n\n",
    )
    assert first == second
    assert first[0] == "dependencies"
    assert cause_of("start", "x", None) != cause_of("health_check", "x", None)
    assert cause_of(None, None) == ("unknown", "")
