"""Dashboard sessions: signed, expiring cookies and their CSRF tokens (docs/dashboard.md)."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dashboard_helpers import report_unavailable
from hypothesis import given
from hypothesis import strategies as st

from javia_updates.dashboard.sessions import (
    SECRET_FILE_NAME,
    SESSION_SECONDS,
    SessionSigner,
    load_or_create_secret,
)

NOW = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)
SECRET = bytes(range(32))
SIGNER = SessionSigner(SECRET, "admin-key")
COOKIE, SESSION = SIGNER.issue(now=NOW)


def test_a_session_lasts_its_lifetime_and_not_a_second_more() -> None:
    assert SIGNER.verify(COOKIE, now=NOW) == SESSION
    assert SESSION.expires_at == NOW + timedelta(seconds=SESSION_SECONDS)
    assert SIGNER.verify(COOKIE, now=NOW + timedelta(seconds=SESSION_SECONDS - 1)) == SESSION
    assert SIGNER.verify(COOKIE, now=NOW + timedelta(seconds=SESSION_SECONDS)) is None


def test_another_admin_key_or_secret_ends_every_session() -> None:
    assert SessionSigner(SECRET, "new-admin-key").verify(COOKIE, now=NOW) is None
    assert SessionSigner(bytes(32), "admin-key").verify(COOKIE, now=NOW) is None
    assert SessionSigner(SECRET, "admin-key").verify(COOKIE, now=NOW) == SESSION


@given(position=st.integers(min_value=0), replacement=st.characters(codec="ascii"))
def test_any_changed_character_makes_the_cookie_worthless(position: int, replacement: str) -> None:
    index = position % len(COOKIE)
    forged = COOKIE[:index] + replacement + COOKIE[index + 1 :]
    if forged != COOKIE:
        assert SIGNER.verify(forged, now=NOW) is None


@given(st.text(max_size=300))
def test_arbitrary_cookies_are_refused_without_error(cookie: str) -> None:
    assert SIGNER.verify(cookie, now=NOW) is None


def test_an_extended_expiry_is_refused() -> None:
    version, expires, nonce, mac = COOKIE.split(".")
    later = f"{version}.{int(expires) + 86_400}.{nonce}.{mac}"
    assert SIGNER.verify(later, now=NOW) is None


def test_the_csrf_token_belongs_to_one_session() -> None:
    token = SIGNER.csrf_token(SESSION)
    _other_cookie, other = SIGNER.issue(now=NOW)
    assert SIGNER.csrf_matches(SESSION, token)
    assert not SIGNER.csrf_matches(other, token)
    assert not SIGNER.csrf_matches(SESSION, None)
    assert not SIGNER.csrf_matches(SESSION, "")
    assert not SIGNER.csrf_matches(SESSION, token[:-1])
    assert not SIGNER.csrf_matches(SESSION, "é" * len(token))


def test_the_secret_is_created_once_private_and_shared_by_concurrent_processes(
    tmp_path: Path,
) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        secrets = set(pool.map(lambda _: load_or_create_secret(tmp_path), range(16)))
    assert len(secrets) == 1
    path = tmp_path / SECRET_FILE_NAME
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [SECRET_FILE_NAME]
    assert load_or_create_secret(tmp_path) == secrets.pop()


def test_a_damaged_secret_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / SECRET_FILE_NAME).write_text("not hex\n")
    with pytest.raises(ValueError, match="does not hold a hex secret: delete it"):
        load_or_create_secret(tmp_path)


def test_without_chromium_the_browser_tests_skip_but_fail_in_ci() -> None:
    with pytest.raises(pytest.skip.Exception, match="dashboard browser tests skipped: no chromium"):
        report_unavailable("no chromium", {})
    with pytest.raises(pytest.fail.Exception, match="cannot run in CI: no chromium"):
        report_unavailable("no chromium", {"CI": "True"})
