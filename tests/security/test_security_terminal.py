"""Device text never drives the operator's terminal (issue 11).

A device names itself, writes its metadata and its error messages; the
operator's CLI shows them. Hostile values are stored through a real server
(the API for what it accepts, the SQLite database directly for names the API
now refuses, as rows written before that rule would hold) and the real
``javia`` command is run as a subprocess: it exits 0 without a traceback,
its output holds no control byte but newline, no bidirectional control, and
shows the hostile text in escaped form; ``--json`` stays exact.
"""

from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from javia_core.models import DeviceUpdateOut, PlanEntry, UpdateStatus
from javia_updates.cli.common import SafeTable, cell, markup_safe, visible
from javia_updates.cli.updates import plan_table, progress_table
from shared_helpers import build_package, server_process

API_KEY = "terminal-test-admin-key-0123456789"
ADMIN = {"X-API-Key": API_KEY}

# What a terminal must never receive from device text: C0 controls but newline,
# DEL, C1 controls, bidirectional controls, line/paragraph separators, surrogates.
FORBIDDEN = re.compile(
    r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
    r"\ud800-\udfff]"
)

# Names as the API accepts them (markup) and as old rows may hold them (controls).
MARKUP_NAME = "kitchen [/x] [bold red]boom[/]"
HOSTILE_NAMES = {
    "osc": "\x1b]0;pwned\x07retitled",
    "clear": "\x1b[2J\x1b[Hcleared",
    "row": "fake\n| row | v9.9.9 | online |",
    "tab": "tab\there",
    "bidi": "\u202eevil\u202c",
    "c1": "c1\x9b31mcsi",
}
HOSTILE_METADATA = {
    "hardware_model": "Pi [/x] \x1b]0;model\x07",
    "note": "\x1b[31mred\x1b[0m [link=http://evil]x[/link]",
}
HOSTILE_ERROR = "health check failed [/x] \x1b]2;error-title\x07 \x1b[2J\nfake row \u202e"


@dataclass
class HostileFleet:
    base: str
    devices: dict[str, str]  # label -> device uuid
    version: str
    app_dir: Path


def _set_names(database: Path, names: dict[str, str]) -> None:
    """Write names straight into the devices table (rows from before the API refused them)."""
    with sqlite3.connect(database) as connection:
        for device_uuid, name in names.items():
            changed = connection.execute(
                "UPDATE devices SET device_name = ? WHERE device_uuid = ?", (name, device_uuid)
            ).rowcount
            assert changed == 1


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileFleet]:
    """A real server holding devices with hostile names, metadata and an error message."""
    root = tmp_path_factory.mktemp("terminal")
    key = Ed25519PrivateKey.generate()
    devices: dict[str, str] = {}
    with server_process(root, API_KEY) as (base, _log), httpx.Client(base_url=base) as http:
        for label in ("markup", *HOSTILE_NAMES):
            name = MARKUP_NAME if label == "markup" else f"placeholder-{label}"
            answer = http.post(
                "/api/v1/devices/register", json={"device_name": name}, headers=ADMIN
            )
            assert answer.status_code == 201, answer.text
            devices[label] = answer.json()["device_uuid"]
            token = answer.json()["device_token"]
            beat = http.post(
                f"/api/v1/devices/{devices[label]}/heartbeat",
                json={"current_version": "v1.0.0", "metadata": HOSTILE_METADATA},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert beat.status_code == 200, beat.text
            if label == "markup":
                markup_token = token
        package = build_package(
            "v1.1.0", "scheduled", signing_key=key, description="fixes [/x] [bold]"
        )
        published = http.post("/api/v1/updates/", files=package.files(), headers=ADMIN)
        assert published.status_code == 201, published.text
        update_id = published.json()["id"]
        reported = http.post(
            f"/api/v1/devices/{devices['markup']}/updates/{update_id}/status",
            json={"status": "failed", "error_message": HOSTILE_ERROR},
            headers={"Authorization": f"Bearer {markup_token}"},
        )
        assert reported.status_code == 200, reported.text
    # The server is stopped: give the other devices the names old rows may hold.
    _set_names(root / "data" / "javia.db", {devices[k]: v for k, v in HOSTILE_NAMES.items()})
    app_dir = root / "pi_client"
    app_dir.mkdir()
    (app_dir / "VERSION").write_text("v1.1.0\n")
    (app_dir / "app.py").write_text("print('hello')\n")
    with server_process(root, API_KEY) as (base, _log):
        yield HostileFleet(base, devices, "v1.1.0", app_dir)


def javia(fleet: HostileFleet, *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``javia`` command (a subprocess, no terminal, a wide console)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("JAVIA_")}
    env.update(
        JAVIA_SERVER_URL=fleet.base,
        JAVIA_API_KEY=API_KEY,
        JAVIA_OPERATOR_CONFIG=str(fleet.app_dir.parent / "absent-operator.toml"),
        COLUMNS="400",
        PYTHONIOENCODING="utf-8",
    )
    return subprocess.run(
        [sys.executable, "-m", "javia_cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="backslashreplace",
        timeout=60,
    )


def assert_safe(result: subprocess.CompletedProcess[str]) -> str:
    """Exit 0, no traceback, no forbidden code point on stdout or stderr; returns stdout."""
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for stream in (result.stdout, result.stderr):
        found = FORBIDDEN.search(stream)
        assert found is None, f"U+{ord(found.group()):04X} reached the terminal in {stream!r}"
    return result.stdout


def _commands(fleet: HostileFleet) -> list[tuple[str, tuple[str, ...]]]:
    """(label, arguments) of every command that shows device text."""
    dry_run = ("--version", "v1.2.0", "--type", "scheduled", "--dry-run")
    return [
        ("devices list", ("devices", "list")),
        *(("devices show", ("devices", "show", uuid)) for uuid in fleet.devices.values()),
        ("updates list", ("updates", "list")),
        ("updates show", ("updates", "show", fleet.version)),
        ("updates plan", ("updates", "plan", fleet.version)),
        ("publish --dry-run", ("publish", str(fleet.app_dir), *dry_run)),
        ("devices revoke", ("devices", "revoke", fleet.devices["osc"])),
    ]


def test_every_table_of_device_text_is_inert(fleet: HostileFleet) -> None:
    outputs: dict[str, str] = {}
    for label, args in _commands(fleet):
        outputs[label] = outputs.get(label, "") + assert_safe(javia(fleet, *args))

    listed = outputs["devices list"]
    assert MARKUP_NAME in listed  # markup shown as written, not interpreted
    assert "\\x1b]0;pwned\\x07retitled" in listed
    assert "\\x1b[2J\\x1b[Hcleared" in listed
    assert "fake\\x0a| row | v9.9.9 | online |" in listed  # one row, not two
    assert "tab\\x09here" in listed and "\\u202eevil\\u202c" in listed
    assert "c1\\x9b31mcsi" in listed
    assert "Pi [/x] \\x1b]0;model\\x07" in listed  # metadata: the hardware model column

    shown = outputs["devices show"]
    assert "\\x1b[31mred\\x1b[0m [link=http://evil]x[/link]" in shown
    assert (
        "health check failed [/x] \\x1b]2;error-title\\x07 \\x1b[2J\\x0afake row \\u202e" in shown
    )

    update = outputs["updates show"]
    assert MARKUP_NAME in update and "\\x1b]2;error-title\\x07" in update
    assert "fixes [/x] [bold]" in update
    assert "fixes [/x] [bold]" in outputs["updates list"]
    for plan in (outputs["updates plan"], outputs["publish --dry-run"]):
        assert MARKUP_NAME in plan and "\\u202eevil\\u202c" in plan
    assert "\\x1b]0;pwned\\x07retitled" in outputs["devices revoke"]


def test_json_output_keeps_device_text_exact(fleet: HostileFleet) -> None:
    result = javia(fleet, "devices", "list", "--json")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout  # JSON escapes it
    names = {device["device_uuid"]: device["device_name"] for device in json.loads(result.stdout)}
    assert names[fleet.devices["osc"]] == HOSTILE_NAMES["osc"]
    assert names[fleet.devices["bidi"]] == HOSTILE_NAMES["bidi"]
    assert names[fleet.devices["markup"]] == MARKUP_NAME

    result = javia(fleet, "updates", "show", fleet.version, "--json")
    rows = json.loads(result.stdout)["devices"]
    assert [row["error_message"] for row in rows if row["error_message"]] == [HOSTILE_ERROR]


def test_an_error_line_quoting_hostile_text_is_inert(fleet: HostileFleet) -> None:
    missing = fleet.app_dir.parent / "app [/x] \x1b]0;t\x07"
    result = javia(fleet, "publish", str(missing), "--version", "v1.2.0", "--type", "scheduled")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and FORBIDDEN.search(result.stderr) is None
    assert "app [/x] \\x1b]0;t\\x07 does not exist" in result.stderr


# --------------------------------------------------------------------------- the rule, in general

DEVICE_UUID = uuid.UUID("00000000-0000-4000-8000-000000000001")
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)


def _render(*renderables: object) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=300, emoji=False).print(*renderables)
    return buffer.getvalue()


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT, ANY_TEXT, ANY_TEXT)
def test_any_device_text_renders_inert_in_every_table(name: str, error: str, reason: str) -> None:
    # The status is an UpdateStatus once the answer is parsed: no server text reaches it.
    at = datetime(2027, 1, 1, 2, 0, tzinfo=UTC)
    progress = progress_table(
        [
            DeviceUpdateOut(
                device_uuid=DEVICE_UUID,
                device_name=name,
                update_id=1,
                version="v1.2.0",
                status=UpdateStatus.FAILED,
                scheduled_for=at,
                started_at=at,
                completed_at=at,
                error_message=error,
                created_at=at,
                updated_at=at,
            )
        ]
    )
    plan = plan_table(
        [
            PlanEntry(
                device_name=name,
                device_uuid=DEVICE_UUID,
                timezone=reason,
                reason=reason,
                install_at_utc=at,
                install_at_local=None,
                gets_row=True,
            )
        ],
        title=name,
    )
    table = SafeTable(title=name)
    table.add_column("a")
    table.add_row(name, cell(error, "red"))
    for output in (_render(progress), _render(plan), _render(table), _render(markup_safe(name))):
        output.encode("utf-8")  # no lone surrogate left
        assert FORBIDDEN.search(output) is None
    assert FORBIDDEN.search(visible(name)) is None


@pytest.mark.parametrize("text", ["[/x]", "\\[/x]", "[bold]x", ":smile:", "[link=x]y", "a\\"])
def test_markup_and_emoji_codes_are_shown_as_written(text: str) -> None:
    # rich doubles a trailing backslash (it would escape a tag of ours that follows)
    shown = _render(f"[bold]{markup_safe(text)}[/bold] (x)").rstrip("\n")
    assert shown == text + " (x)" or (text.endswith("\\") and shown == text + "\\ (x)")
    table = SafeTable()
    table.add_column("a")
    table.add_row(text)
    assert text in _render(table)


def test_invisible_characters_in_stored_names_are_shown_escaped():
    """A name stored before the API refused them cannot pass for ``kitchen``."""
    from javia_updates.cli.common import visible

    assert visible("kit\u200bchen") == "kit\\u200bchen"
    assert visible("kit\U000e0041chen") == "kit\\U000e0041chen"
    assert visible("Küche 🎙") == "Küche 🎙"


@pytest.mark.parametrize(
    ("reference", "path"),
    [
        ("../../etc", "/api/v1/updates/..%2F..%2Fetc"),
        ("..", "/api/v1/updates/%2E%2E"),
        ("v1.0.0?x=1#y", "/api/v1/updates/v1.0.0%3Fx%3D1%23y"),
        ("x\x1b]0;T\x07", "/api/v1/updates/x%1B%5D0%3BT%07"),
    ],
)
def test_an_operators_reference_is_one_path_segment(reference: str, path: str):
    """``javia updates show ../../etc`` asks for that update, never for another path."""
    import httpx

    from javia_updates.admin_client import AdminClient, ApiError

    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode("ascii"))
        return httpx.Response(404, json={"detail": "no such update"})

    with (
        AdminClient("http://127.0.0.1:9", "key", transport=httpx.MockTransport(answer)) as client,
        pytest.raises(ApiError, match="no such update"),
    ):
        client.get_update(reference)
    assert seen == [path]
