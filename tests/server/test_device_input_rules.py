"""The input rules for device text, names and time zones (javia_core.input_rules, issue 11)."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from javia_core.input_rules import (
    BIDI_CONTROLS,
    check_display_text,
    check_text,
    check_timezone,
    iana_timezones,
)
from javia_core.models import check_no_control_characters, validate_timezone

REFUSED_IN_NAMES = (
    [chr(c) for c in range(0x20)]
    + [chr(c) for c in range(0x7F, 0xA0)]
    + sorted(BIDI_CONTROLS)
    + ["\u2028", "\u2029", "\ud800", "\udfff"]
)


@pytest.mark.parametrize("character", REFUSED_IN_NAMES, ids=lambda c: f"U+{ord(c):04X}")
def test_names_refuse_control_separator_bidi_and_surrogate_characters(character):
    with pytest.raises(ValueError, match=rf"device_name contains .*U\+{ord(character):04X}"):
        check_no_control_characters(f"kitchen{character}pi", "device_name", multiline=False)


@pytest.mark.parametrize(
    "character",
    # zero-width space, non-joiner, joiner, word joiner, invisible plus, byte order
    # mark, soft hyphen, grapheme joiner, Mongolian vowel separator, a tag letter,
    # interlinear anchor, a noncharacter, private use
    [
        "\u200b",
        "\u200c",
        "\u200d",
        "\u2060",
        "\u2064",
        "\ufeff",
        "\u00ad",
        "\u034f",
        "\u180e",
        "\U000e0041",
        "\ufff9",
        "\ufffe",
        "\ue000",
    ],  # fmt: skip
    ids=lambda c: f"U+{ord(c):04X}",
)
def test_names_refuse_invisible_characters(character):
    """``kit<U+200B>chen`` would look exactly like ``kitchen`` in the operator's list."""
    with pytest.raises(
        ValueError, match=rf"device_name contains the invisible character U\+{ord(character):04X}"
    ):
        check_no_control_characters(f"kit{character}chen", "device_name", multiline=False)


@pytest.mark.parametrize(
    "bidi",
    [
        "\u202a",
        "\u202b",
        "\u202c",
        "\u202d",
        "\u202e",
        "\u2066",
        "\u2067",
        "\u2068",
        "\u2069",
        "\u200e",
        "\u200f",
        "\u061c",
    ],
)
def test_every_bidi_control_is_listed(bidi):
    assert bidi in BIDI_CONTROLS


@given(st.text(st.characters(codec=None, categories=None)))
def test_a_name_is_accepted_exactly_when_it_has_no_refused_character(name):
    # Independent oracle: controls, format, private-use, unassigned, surrogate and
    # separator categories, plus the fillers that show nothing.
    refused = any(
        c in REFUSED_IN_NAMES
        or unicodedata.category(c) in {"Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp"}
        or c in "\u034f\u115f\u1160\u3164\uffa0"
        for c in name
    )
    try:
        check_display_text(name, "device_name")
    except ValueError:
        assert refused
    else:
        assert not refused


def test_multiline_text_keeps_tab_and_newline_but_not_escape_or_bidi():
    assert check_no_control_characters("a\n\tb", "description") == "a\n\tb"
    for bad in ("\x1b[2J", "\r", "\x9b", "\u202e", "\x7f"):
        with pytest.raises(ValueError, match="description"):
            check_no_control_characters(f"a{bad}", "description")


def test_any_text_is_storable_text_except_nul_and_lone_surrogates():
    assert check_text("ünïcødé \U0001f600 \x1b \u202e", "x")
    for bad in ("\x00", "\ud800", "\udbff\udc00"[0]):
        with pytest.raises(ValueError, match="error_message contains"):
            check_text(f"boom{bad}", "error_message")


@pytest.mark.parametrize(
    "name",
    [
        "localtime",
        "posixrules",
        "Factory",
        "right/UTC",
        "posix/Europe/Berlin",
        "right/Europe/Berlin",
        "Europe/Berlin/",
        "../zoneinfo/UTC",
        "",
        "x" * 65,
        "europe/berlin",
        "zone.tab",
        "tzdata.zi",
    ],
)
def test_non_canonical_time_zones_are_refused_with_an_example(name):
    with pytest.raises(ValueError, match="Europe/Berlin"):
        validate_timezone(name)


def test_the_accepted_time_zones_are_tzdatas_names_and_all_load():
    names = iana_timezones()
    assert {"Europe/Berlin", "UTC", "Etc/UTC", "US/Eastern", "Asia/Kolkata"} <= names
    assert not {"Factory", "localtime", "posixrules"} & names
    assert not any(name.startswith(("posix/", "right/")) for name in names)
    for name in names:
        assert check_timezone(name) == name


def test_agent_register_gives_the_same_timezone_error(tmp_path: Path):
    from javia_agent.cli import app as agent_cli

    result = CliRunner().invoke(
        agent_cli,
        [
            "register",
            "--server",
            "http://127.0.0.1:9",
            "--api-key",
            "k",
            "--timezone",
            "posix/Europe/Berlin",
            "--config",
            str(tmp_path / "agent.toml"),
            "--token-file",
            str(tmp_path / "token"),
            "--state-dir",
            str(tmp_path / "var"),
            "--install-root",
            str(tmp_path / "opt"),
        ],
    )
    assert result.exit_code != 0
    assert "Europe/Berlin" in result.output and "timezone" in result.output
    assert "Traceback" not in result.output


def test_an_agent_configuration_written_before_the_rule_still_loads(tmp_path: Path):
    """An upgraded device keeps running: the strict rule is for new names only."""
    from javia_agent.config import load_config

    path = tmp_path / "agent.toml"
    path.write_text('timezone = "localtime"\n', encoding="utf-8")
    assert load_config(path).timezone == "localtime"
    path.write_text('timezone = "Not/AZone"\n', encoding="utf-8")
    with pytest.raises(Exception, match="Europe/Berlin"):
        load_config(path)


@given(st.text(st.characters(exclude_categories=()), max_size=9000))
def test_a_devices_failure_reason_is_always_a_report_the_server_accepts(reason: str):
    """Whatever an application printed, the agent's report is storable (not lost to a 422)."""
    from javia_core.models import MAX_ERROR_MESSAGE_CHARS, StatusReport, UpdateStatus

    report = StatusReport.from_device(UpdateStatus.FAILED, "start: " + reason + "END")
    sent = report.model_dump_json()
    received = StatusReport.model_validate_json(sent)  # what the server parses
    assert received.error_message is not None
    assert len(received.error_message) <= MAX_ERROR_MESSAGE_CHARS
    assert received.error_message.startswith("start: ")
    assert received.error_message.endswith("END")
