"""What the agent tidies when it starts: interrupted writes' temp files, and app.env's mode."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from javia_agent.services import SystemdService

from .helpers import Device, Signer, make_installer


def test_temporary_files_of_interrupted_writes_are_removed_at_start_up(
    device: Device, signer: Signer
) -> None:
    state_dir = device.paths.state_dir
    outbox = device.paths.outbox_dir
    outbox.mkdir()
    leftovers = [
        state_dir / ".state.json.k3j_9x2a.tmp",
        state_dir / ".app.pid.0abcdefg.tmp",
        state_dir / ".heartbeat.json.zzzzzzzz.tmp",
        outbox / ".000000000007.json.a1b2c3d4.tmp",
    ]
    kept = [
        state_dir / "app.log",
        state_dir / ".state.json.tmp",  # not the temp-file pattern
        state_dir / ".notes.txt.a1b2c3d4.tmp",  # not a file the agent writes
        outbox / "000000000007.json",
        device.root / ".state.json.k3j_9x2a.tmp",  # not the agent's directory
    ]
    for path in leftovers:
        path.write_text("half written")
    for path in kept:
        path.write_text("{}")

    assert make_installer(device, signer).recover() is None

    assert [path for path in leftovers if path.exists()] == []
    assert all(path.exists() for path in kept)


def test_app_env_is_written_0600_and_an_older_0644_one_is_restricted_at_start_up(
    device: Device, signer: Signer, tmp_path: Path
) -> None:
    def runner(argv, **kwargs):
        return subprocess.CompletedProcess(argv, 0, "", "")

    env_file = device.paths.app_env_file
    service = SystemdService(
        "javia-app.service",
        environment=lambda: {"API_KEY": "s3cret-value"},
        env_file=env_file,
        runner=runner,
    )
    service.start()
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert "s3cret-value" in env_file.read_text()

    os.chmod(env_file, 0o644)  # as an older agent wrote it
    assert make_installer(device, signer).recover() is None
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600

    # A link planted in its place is left alone (never followed).
    target = tmp_path / "elsewhere"
    target.write_text("x")
    os.chmod(target, 0o644)
    env_file.unlink()
    env_file.symlink_to(target)
    assert make_installer(device, signer).recover() is None
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
