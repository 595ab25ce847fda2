"""Secrets and fleet data are written for their owner (and a named group) only (issue 11).

Real processes: ``javia agent register`` against a real server on a loopback
port, and the server itself started outside its systemd unit (umask 022, no
``UMask=0077``).
"""

from __future__ import annotations

import grp
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from javia_agent.activity import ACTIVITY_DIR_MODE, DEFAULT_APP_GROUP, app_group_id
from shared_helpers import build_package, server_process

API_KEY = "file-modes-admin-key-0123456789"
ADMIN = {"X-API-Key": API_KEY}
SECRET = "sk-live-do-not-share"


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual interactive umask: files 0644 unless the code says otherwise."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def server(tmp_path: Path, umask_022: None) -> Iterator[str]:
    (tmp_path / "server").mkdir()
    with server_process(tmp_path / "server", API_KEY) as (base, _log):
        yield base


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def register(
    server: str, root: Path, *options: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``javia agent register`` as a real process, every path under ``root``."""
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("JAVIA_")},
        **(env or {}),
    }
    command = [
        sys.executable, "-m", "javia_cli.main", "agent", "register",
        "--server", server, "--api-key", API_KEY, "--name", "kitchen",
        "--config", str(root / "etc" / "agent.toml"),
        "--token-file", str(root / "etc" / "device-token"),
        "--install-root", str(root / "opt"), "--state-dir", str(root / "var"),
        "--app-env", f'{{"ASSISTANT_API_KEY": "{SECRET}"}}',
        *options,
    ]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def a_group_other_than_ours() -> grp.struct_group:
    return next(g for g in grp.getgrall() if g.gr_gid not in (0, os.getegid()))


@pytest.mark.skipif(os.geteuid() != 0, reason="gives files to another group: needs root")
def test_register_gives_the_app_group_its_activity_directory_and_nothing_wider(
    server: str, tmp_path: Path
) -> None:
    group = a_group_other_than_ours()
    result = register(server, tmp_path / "device", "--app-group", group.gr_name)
    assert result.returncode == 0, result.stderr

    config = tmp_path / "device" / "etc" / "agent.toml"
    assert SECRET in config.read_text()  # --app-env is in the configuration...
    assert (mode(config), config.stat().st_gid) == (0o640, group.gr_gid)  # ...for root and the app
    assert mode(tmp_path / "device" / "etc" / "device-token") == 0o600
    activity = tmp_path / "device" / "var" / "activity"
    assert (mode(activity), activity.stat().st_gid) == (ACTIVITY_DIR_MODE, group.gr_gid)
    assert ACTIVITY_DIR_MODE == 0o2770  # setgid; nothing for others
    assert mode(tmp_path / "device" / "var") & 0o022 == 0  # the rest of the state: not the app's


@pytest.mark.skipif(app_group_id(DEFAULT_APP_GROUP) is not None, reason="javia-app exists here")
def test_without_the_app_group_register_warns_and_keeps_the_configuration_0600(
    server: str, tmp_path: Path
) -> None:
    result = register(server, tmp_path / "device")
    assert result.returncode == 0, result.stderr
    assert "group javia-app does not exist" in result.stderr
    assert "groupadd --system javia-app" in result.stderr
    config = tmp_path / "device" / "etc" / "agent.toml"
    assert SECRET in config.read_text() and mode(config) == 0o600


def test_an_activity_file_in_the_state_directory_does_not_open_that_directory(
    server: str, tmp_path: Path
) -> None:
    state = tmp_path / "device" / "var"
    result = register(
        server, tmp_path / "device", env={"JAVIA_AGENT_ACTIVITY_FILE": str(state / "activity.json")}
    )
    assert result.returncode == 0, result.stderr
    # state.json and app.env stay out of the app group's reach
    assert not state.exists() or mode(state) & 0o022 == 0


def test_a_missing_app_group_is_refused_before_the_server_registers_anything(
    server: str, tmp_path: Path
) -> None:
    result = register(server, tmp_path / "device", "--app-group", "no-such-group-javia")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "group 'no-such-group-javia' does not exist" in result.stderr
    assert httpx.get(f"{server}/api/v1/devices/", headers=ADMIN).json()["items"] == []
    assert not (tmp_path / "device" / "etc" / "agent.toml").exists()


def test_the_servers_database_and_packages_are_not_readable_by_others(
    server: str, tmp_path: Path
) -> None:
    """Started with umask 022 (not by its unit): javia.db, its -wal/-shm and packages."""
    with httpx.Client(base_url=server, headers=ADMIN) as http:
        assert http.post("/api/v1/devices/register", json={}).status_code == 201
        package = build_package("v1.0.0", "scheduled", signing_key=Ed25519PrivateKey.generate())
        assert http.post("/api/v1/updates/", files=package.files()).status_code == 201
    data = tmp_path / "server" / "data"
    database = data / "javia.db"
    assert mode(database) == 0o600
    companions = [data / "javia.db-wal", data / "javia.db-shm"]
    assert [path.exists() for path in companions] == [True, True]  # WAL mode, server running
    assert [mode(path) for path in companions] == [0o600, 0o600]
    assert mode(data / "packages") & 0o007 == 0  # others cannot even look inside
    for path in (data / "packages").rglob("*"):
        if path.is_file():
            assert mode(path) == 0o640, path
        else:  # every level a publish creates, not just the last one
            assert mode(path) == 0o750, path


def test_an_existing_world_readable_database_is_narrowed_at_start(
    tmp_path: Path, umask_022: None
) -> None:
    with server_process(tmp_path, API_KEY):
        pass
    database = tmp_path / "data" / "javia.db"
    database.chmod(0o644)
    with server_process(tmp_path, API_KEY):
        assert mode(database) == 0o600


def test_register_under_umask_0000_creates_nothing_group_or_world_writable(
    server: str, tmp_path: Path
) -> None:
    """A root shell with umask 0000 must not leave the agent's state world-writable."""
    previous = os.umask(0)
    try:
        result = register(server, tmp_path / "device")
    finally:
        os.umask(previous)
    assert result.returncode == 0, result.stderr
    writable = [
        f"{path} {mode(path):o}"
        for path in (tmp_path / "device").rglob("*")
        if not path.is_symlink() and mode(path) & 0o022 and not path.match("activity")
    ]
    assert writable == []
