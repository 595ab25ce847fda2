"""The shipped systemd units agree with the agent's defaults and are valid unit files."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from javia_agent.config import AgentConfig

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"


def _unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((UNITS / name).read_text())
    return parser


def test_the_agent_runs_in_its_own_notify_unit_with_a_watchdog() -> None:
    agent = _unit("javia-agent.service")["Service"]
    assert agent["Type"] == "notify" and agent["NotifyAccess"] == "main"
    assert agent["ExecStart"].endswith("javia agent run")
    assert agent["WatchdogSec"] and agent["Restart"] == "always"
    # SIGTERM goes to the agent alone so it can finish its step (and apt is not cut).
    assert agent["KillMode"] == "mixed"
    assert (
        "javia-app.service" not in (UNITS / "javia-agent.service").read_text().split("[Service]")[1]
    )


def test_the_application_unit_matches_what_the_agent_drives() -> None:
    defaults = AgentConfig()
    assert defaults.service_name == "javia-app.service"
    app = _unit(defaults.service_name)["Service"]
    assert app["WorkingDirectory"] == str(defaults.paths.current_link)
    assert app["EnvironmentFile"] == f"-{defaults.paths.app_env_file}"
    assert "JAVIA_PYTHON" in app["ExecStart"]


def test_the_units_give_the_application_its_activity_directory_and_nothing_more() -> None:
    from javia_agent.activity import ACTIVITY_DIR_MODE, DEFAULT_APP_GROUP

    defaults = AgentConfig()
    agent = _unit("javia-agent.service")["Service"]
    app = _unit(defaults.service_name)["Service"]
    directory = defaults.paths.activity_file.parent
    assert directory != defaults.state_dir  # state.json and app.env stay out of the app's reach
    assert agent["ExecStartPre"].split() == [
        "-/usr/bin/install", "-d", "-o", "root", "-g", DEFAULT_APP_GROUP,
        "-m", f"{ACTIVITY_DIR_MODE:o}", str(directory),
    ]  # fmt: skip
    assert agent["StateDirectoryMode"] == "0755"
    assert DEFAULT_APP_GROUP in app["SupplementaryGroups"].split()


def test_the_server_unit_runs_the_server_with_migrations_first() -> None:
    server = _unit("javia-server.service")["Service"]
    assert "javia server" in server["ExecStart"] and "javia db upgrade" in server["ExecStartPre"]
    assert server["User"] != "root" and server["ProtectSystem"] == "strict"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_the_units() -> None:
    for unit in sorted(UNITS.glob("*.service")):
        result = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(unit)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        problems = [
            line
            for line in (result.stderr + result.stdout).splitlines()
            if line.strip() and "is not executable" not in line  # /opt/javia is not installed here
        ]
        assert problems == [], unit.name
