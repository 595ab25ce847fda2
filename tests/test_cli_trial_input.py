"""Input a new user's trial met: refused locally with one line, never a traceback or a secret.

Every command is pointed at a loopback port where nothing listens: a request
sent would end in "cannot reach", so a refusal here was made before any request.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from javia_core.addresses import AddressError, check_server_url
from javia_devtools.demo import free_port
from test_cli import app_dir, assert_one_clean_error, javia

__all__ = ["app_dir"]  # the fixture, used by the dry-run tests below

BAD_KEYS = {
    "cyrillic": "ключ-ключ-ключ-ключ",
    "trailing-space": "adminkey-abcdefgh-123 ",
    "header-injection": "abcdefghijklmnop\r\nX-Evil: 1",
    "inner-space": "adminkey abcdefgh-123",
}


def _nowhere() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.mark.parametrize("key", BAD_KEYS.values(), ids=BAD_KEYS.keys())
@pytest.mark.parametrize("through", ["flag", "environment"])
def test_an_admin_key_that_cannot_be_a_header_is_refused_without_echoing_it(
    key: str, through: str
) -> None:
    flag = ["--api-key", key] if through == "flag" else []
    env = {"JAVIA_API_KEY": key} if through == "environment" else {}
    result = javia("devices", "list", "--server", _nowhere(), *flag, env=env)
    assert_one_clean_error(result, "the admin key must be printable ASCII without spaces")
    assert key.strip() not in result.stderr + result.stdout
    assert "cannot reach" not in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("updates", "list"),
        ("publish", "{app}", "--version", "v9.0.0", "--type", "urgent", "--dry-run"),
    ],
    ids=["updates-list", "publish-dry-run"],
)
def test_every_command_checks_the_admin_key(command: tuple[str, ...], app_dir: Path) -> None:
    argv = [part.replace("{app}", str(app_dir)) for part in command]
    result = javia(*argv, "--server", _nowhere(), "--api-key", BAD_KEYS["cyrillic"])
    assert_one_clean_error(result, "the admin key must be printable ASCII without spaces")


@pytest.mark.parametrize(
    "host",
    ["a" * 64 + ".example", "updates..example.org", ".example.org", "a." * 127 + "org"],
    ids=["label-64", "empty-label", "leading-dot", "total-over-253"],
)
def test_a_host_name_that_cannot_be_encoded_is_an_invalid_server_url(host: str) -> None:
    with pytest.raises(AddressError, match="host name"):
        check_server_url(f"http://{host}/")
    result = javia("devices", "list", "--server", f"http://{host}/", "--api-key", "k" * 20)
    assert_one_clean_error(result, "server URL")


@given(
    st.lists(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=63),
        min_size=1,
        max_size=4,
    )
)
def test_a_host_name_of_short_labels_is_accepted(labels: list[str]) -> None:
    host = ".".join(labels)
    assert check_server_url(f"https://{host}:8443/") == f"https://{host}:8443"


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://[::1]:8000", "https://pi.local."])
def test_addresses_and_a_fully_qualified_name_stay_accepted(url: str) -> None:
    assert check_server_url(url) == url


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--key", "/etc/passwd", "not a PEM file"),
        ("--add-key", "/etc/passwd", "not a PEM file"),
        ("--add-key", "./nonexist.pub", "nonexist.pub"),
        ("--retire-key", "../x", "16 lower-case hex digits"),
    ],
)
def test_a_dry_run_checks_the_keys_a_publish_would(
    app_dir: Path, option: str, value: str, needle: str
) -> None:
    result = javia(
        "publish", str(app_dir), "--version", "v9.0.0", "--type", "urgent", "--dry-run",
        option, value, "--server", _nowhere(), "--api-key", "k" * 20,
    )  # fmt: skip
    assert_one_clean_error(result, needle)
    assert "cannot reach" not in result.stderr


def test_the_agent_refuses_the_same_host_names() -> None:
    from javia_agent.config import check_server_url as agent_check_server_url
    from javia_agent.errors import ConfigError

    with pytest.raises(ConfigError, match="host name"):
        agent_check_server_url(f"https://{'a' * 64}.example", allow_insecure_http=False)
