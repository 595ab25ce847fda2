"""Bad input on the command line is refused before anything is sent, by the server's own rules.

Each command here is pointed at a loopback port where nothing listens: had it
sent a request, it would say it cannot reach the server. Instead it names the
input, its expected form, and exits 1 with one line and no traceback.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from javia_core.addresses import (
    AddressError,
    check_server_url,
    parse_device_uuid,
    parse_update_reference,
)
from javia_core.versioning import MAX_COMPONENT, Version
from javia_devtools.demo import free_port
from test_cli import app_dir, assert_one_clean_error, javia
from test_cli_help import _bash_completions

__all__ = ["app_dir"]  # the fixture, used by the publish tests below

DEVICE = "3f2b8c1e-5d4a-4e2f-9a7b-1c2d3e4f5a6b"
LONG_ARGUMENT = "a" * 100_000


@pytest.fixture(scope="module")
def nowhere() -> list[str]:
    """``--server`` and ``--api-key`` for a loopback port where nothing listens."""
    return ["--server", f"http://127.0.0.1:{free_port()}", "--api-key", "k" * 20]


@pytest.mark.parametrize(
    "command",
    [
        ("devices", "show", LONG_ARGUMENT),
        ("devices", "revoke", "kitchen-pi"),
        ("devices", "rotate-token", DEVICE + "0"),
        ("devices", "tag", "not-a-uuid", "--add", "kitchen"),
    ],
    ids=["show-100k", "revoke", "rotate-token", "tag"],
)
def test_a_malformed_device_uuid_is_named_before_any_request(
    command: tuple[str, ...], nowhere: list[str]
) -> None:
    result = javia(*command, *nowhere)
    assert_one_clean_error(result, "invalid device uuid", "expected a uuid such as")
    assert "server" not in result.stderr
    assert len(result.stderr) < 300, "the argument is quoted cut, not whole"


def test_a_malformed_publish_target_is_named(app_dir: Path, nowhere: list[str]) -> None:
    result = javia(
        "publish", str(app_dir), "--version", "v1.0.1", "--type", "scheduled",
        "--target", "kitchen", "--dry-run", *nowhere,
    )  # fmt: skip
    assert_one_clean_error(result, "--target", "invalid device uuid 'kitchen'")


@pytest.mark.parametrize(
    ("command", "needles"),
    [
        (("updates", "show", "latest"), ("invalid update reference 'latest'", "v1.2.3")),
        (("updates", "plan", LONG_ARGUMENT), ("invalid update reference", "100000 characters")),
        (("updates", "failures", "#4"), ("invalid update reference '#4'", "such as 4")),
        (("updates", "pause", "v1.2"), ("invalid version 'v1.2'", "vX.Y.Z")),
    ],
    ids=["show", "plan-100k", "failures", "pause"],
)
def test_a_malformed_update_reference_is_named_before_any_request(
    command: tuple[str, ...], needles: tuple[str, ...], nowhere: list[str]
) -> None:
    result = javia(*command, *nowhere)
    assert_one_clean_error(result, *needles)
    assert "cannot reach" not in result.stderr


@pytest.mark.parametrize(
    "url", ["file:///x", "ftp://updates.example.org", "http://", "https:///v1"]
)
def test_a_server_url_that_is_not_http_with_a_host_is_refused_before_any_request(url: str) -> None:
    result = javia("devices", "list", "--server", url, "--api-key", "k" * 20)
    assert_one_clean_error(
        result, "the server URL must be http:// or https:// with a host", f"got {url!r}"
    )


def test_every_command_taking_server_checks_it_the_flag_and_the_environment(
    app_dir: Path,
) -> None:
    commands = [
        ("updates", "list", "--server", "file:///x"),
        ("webhooks", "list", "--server", "file:///x"),
        ("devices", "enrollment-token", "list", "--server", "file:///x"),
        ("publish", str(app_dir), "--version", "v1.0.1", "--type", "scheduled", "--dry-run",
         "--server", "file:///x"),
    ]  # fmt: skip
    for command in commands:
        result = javia(*command, "--api-key", "k" * 20)
        assert_one_clean_error(result, "must be http:// or https://", "'file:///x'")
    from_environment = javia(
        "devices", "show", DEVICE, env={"JAVIA_SERVER_URL": "ftp://h", "JAVIA_API_KEY": "k" * 20}
    )
    assert_one_clean_error(from_environment, "must be http:// or https://", "'ftp://h'")


def test_agent_register_names_the_server_url_form(tmp_path: Path) -> None:
    result = javia(
        "agent", "register", "--server", "file:///x", "--api-key", "k" * 20,
        env={"JAVIA_AGENT_CONFIG": str(tmp_path / "agent.toml")},
    )  # fmt: skip
    assert_one_clean_error(result, "must be http:// or https:// with a host", "'file:///x'")
    assert not (tmp_path / "agent.toml").exists()


@pytest.mark.parametrize(
    ("description", "needles"),
    [
        ("x" * 10_001, ("description is 10001 characters long", "at most 10000")),
        ("fixes\x1b[2J the clock", ("description contains", "U+001B")),
    ],
    ids=["too-long", "escape"],
)
def test_a_dry_run_applies_the_servers_description_rule(
    app_dir: Path, nowhere: list[str], description: str, needles: tuple[str, ...]
) -> None:
    result = javia(
        "publish", str(app_dir), "--version", "v1.0.1", "--type", "scheduled", "--dry-run",
        "--description", description, *nowhere,
    )  # fmt: skip
    assert_one_clean_error(result, *needles)
    assert (app_dir / "VERSION").read_text().strip() == "v1.0.0"


def test_the_server_refuses_to_start_with_a_short_metrics_token(tmp_path: Path) -> None:
    environment = {
        "JAVIA_API_KEY": "input-edges-admin-key-0123456789",
        "JAVIA_METRICS_TOKEN": "s3cr3t",
    }
    result = javia(
        "server", "--port", str(free_port()), "--data-dir", str(tmp_path), env=environment
    )
    assert_one_clean_error(
        result, "the metrics token is 6 characters: at least 16 are required", "JAVIA_METRICS_TOKEN"
    )
    assert "s3cr3t" not in result.stderr, "the secret itself is never shown"


@pytest.mark.parametrize(
    ("secrets", "refused"),
    [
        ({"metrics_token": "m" * 15}, "JAVIA_METRICS_TOKEN"),
        ({"dashboard_secret": "d" * 15}, "JAVIA_DASHBOARD_SECRET"),
        ({"api_key": "k" * 15}, "JAVIA_API_KEY"),
        ({"metrics_token": "m" * 16, "dashboard_secret": "d" * 16}, None),
        ({"metrics_token": "  ", "dashboard_secret": ""}, None),  # blank: not set
    ],
)
def test_every_secret_of_the_server_has_the_admin_keys_minimum(
    secrets: dict[str, str], refused: str | None
) -> None:
    from javia_updates.settings import ServerSettings, SettingsError

    settings = ServerSettings(**{"api_key": "k" * 16, **secrets})  # type: ignore[arg-type]
    if refused is None:
        assert settings.require_api_key() == secrets.get("api_key", "k" * 16)
        return
    with pytest.raises(SettingsError, match=f"at least 16 are required: set {refused} "):
        settings.require_api_key()


def test_an_unknown_device_status_names_the_valid_ones(nowhere: list[str]) -> None:
    result = javia("devices", "list", "--status", "broken", *nowhere)
    assert_one_clean_error(result, "'broken'", "online, offline, updating, revoked")


def test_agent_register_refuses_an_infinite_interval(tmp_path: Path) -> None:
    result = javia(
        "agent", "register", "--server", "http://127.0.0.1:9", "--api-key", "k" * 20,
        "--heartbeat-interval", "inf",
        env={"JAVIA_AGENT_CONFIG": str(tmp_path / "agent.toml")},
    )  # fmt: skip
    assert_one_clean_error(result, "heartbeat_interval_seconds", "finite number")


@pytest.mark.parametrize(
    ("command", "options", "needles"),
    [
        ("webhooks deliveries", ["--limit", "-3"], ["'--limit'", "greater than or equal to 1"]),
        ("devices enrollment-token create", ["--uses", "many"], ["'--uses'", "integer"]),
        ("devices show", [], ["Missing argument 'DEVICE_UUID'"]),
        ("agent status", ["--colour"], ["No such option: --colour"]),
    ],
    ids=["negative-limit", "not-a-number", "missing-argument", "agent-unknown-option"],
)
def test_a_usage_error_is_one_line_pointing_at_the_help(
    command: str, options: list[str], needles: list[str]
) -> None:
    result = javia(*command.split(), *options)
    assert_one_clean_error(result, *needles, f"(see 'javia {command} --help')")
    assert result.returncode == 2


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_the_values_of_choice_options(tmp_path: Path) -> None:
    # One interpreter start per line (and one to source the hook): a few seconds.
    lines = [
        'javia publish --type ""',
        "javia updates revert v1.2.0 --type u",
        "javia devices list --status o",
        "javia db migrate-data --from-backend s",
        "javia agent register --service-mode s",
    ]
    offered = _bash_completions(tmp_path, *lines)
    assert offered == [
        ["scheduled", "urgent", "instant"],
        ["urgent"],
        ["online", "offline"],
        ["supabase"],
        ["systemd"],
    ]


# --------------------------------------------------------------------------- the rules themselves


@given(value=st.uuids())
def test_every_written_form_of_a_uuid_names_the_same_device(value: uuid.UUID) -> None:
    for text in (str(value), str(value).upper(), value.hex, f"urn:uuid:{value}"):
        assert parse_device_uuid(text) == value


@given(text=st.text(max_size=200))
def test_any_text_is_a_device_uuid_or_one_short_error(text: str) -> None:
    try:
        parse_device_uuid(text)
    except AddressError as error:
        assert len(str(error)) < 300 and "\n" not in str(error)


@given(update_id=st.integers(1, 2**63 - 1), numbers=st.tuples(*[st.integers(0, MAX_COMPONENT)] * 3))
def test_update_references_read_back_what_was_written(
    update_id: int, numbers: tuple[int, int, int]
) -> None:
    assert parse_update_reference(str(update_id)) == update_id
    assert parse_update_reference(f" {Version(*numbers)} ") == Version(*numbers)


def test_a_server_url_keeps_its_path_and_loses_its_trailing_slash() -> None:
    assert check_server_url("https://updates.example.org/javia/") == (
        "https://updates.example.org/javia"
    )
    for bad in ("http://h:99999", "http://[::1", "updates.example.org:8000"):
        with pytest.raises(AddressError, match="server URL"):
            check_server_url(bad)
