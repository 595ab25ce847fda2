"""A release staged ahead of its window while its rollout is paused, resumed, cancelled.

A real agent against the real server over loopback (docs/rollouts.md, "Device
statuses"; docs/agent.md, "Staged ahead of the window"): a pause keeps the
staged release and installs nothing; a resume installs it in its window with
no second download; a cancel (what a revert does to the bad release) deletes
it, never installed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from javia_agent.agent import Agent, build_service
from javia_agent.cli import app as agent_cli
from javia_agent.config import load_config
from javia_agent.installer import InstallResult
from javia_agent.staging_ahead import held_by_pause
from javia_agent.state import UpdateRecord, UpdateState
from javia_core.models import HeldUpdate
from javia_updates.packaging import BuiltPackage

from .helpers import PackageFactory, Signer
from .test_agent_hostile_server import scheduled_package  # noqa: F401 - fixture
from .test_agent_server import LiveServer, _register_args, live_server  # noqa: F401 - fixture

pytest.importorskip("uvicorn")


class StagedDevice:
    """A registered agent running v1.0.0 that staged v1.1.0 (scheduled) ahead of its window."""

    def __init__(self, agent: Agent, admin: object, update_id: int, install_at: object) -> None:
        self.agent, self.admin, self.update_id, self.install_at = (
            agent,
            admin,
            update_id,
            install_at,
        )
        self.release = agent.installer.paths.releases_dir / "v1.1.0"

    def command(self, action: str) -> None:
        self.admin.rollout_command("v1.1.0", action, reason="test")  # type: ignore[attr-defined]

    def state(self) -> UpdateState | None:
        update = self.agent.installer.load_state().update
        return None if update is None else update.state


@pytest.fixture
def staged(
    tmp_path: Path,
    live_server: LiveServer,  # noqa: F811 - the fixture
    signer: Signer,
    make_package: PackageFactory,
    scheduled_package: BuiltPackage,  # noqa: F811 - the fixture: v1.1.0 signed scheduled
) -> Iterator[StagedDevice]:
    from javia_updates.admin_client import AdminClient

    config_path = tmp_path / "agent.toml"
    registered = CliRunner().invoke(
        agent_cli,
        _register_args(
            live_server,
            tmp_path,
            "--config",
            str(config_path),
            "--token-file",
            str(tmp_path / "token"),
            "--keyring",
            str(signer.keyring_dir),
            "--start-command",
            f'["{sys.executable}", "app.py"]',
            "--app-env",
            f'{{"TEST_APP_STATUS": "{tmp_path / "status.json"}"}}',
            "--health-seconds",
            "0.5",
            "--staging-lead",
            "2d",  # the window (02:00 UTC) is always within the lead: staged at once
        ),
    )
    assert registered.exit_code == 0, registered.output
    config = load_config(config_path)
    installed = CliRunner().invoke(
        agent_cli, ["install", str(make_package("v1.0.0").directory), "--config", str(config_path)]
    )
    assert installed.exit_code == 0, installed.output
    agent = Agent.from_config(config)
    admin = AdminClient(live_server.url, live_server.api_key)
    try:
        assert agent.run_once().response.update is None  # the server learns v1.0.0
        package = scheduled_package
        update = admin.publish(
            manifest_path=package.manifest_path,
            signature_path=package.signature_path,
            payload_path=package.payload_path,
            update_type="scheduled",
        )
        ahead = agent.run_once()
        assert ahead.outcome is not None and ahead.outcome.result == InstallResult.STAGED
        assert ahead.response.update is not None
        device = StagedDevice(agent, admin, update.id, ahead.response.update.install_at)
        assert device.state() == UpdateState.STAGED and device.release.is_dir()
        yield device
    finally:
        admin.close()
        build_service(config).stop()
        agent.client.close()


def test_a_pause_keeps_the_staged_release_and_a_resume_installs_it_without_downloading(
    staged: StagedDevice,
) -> None:
    staged.command("pause")
    in_window = staged.install_at + timedelta(seconds=5)  # type: ignore[operator]

    paused = staged.agent.run_once(now=in_window)  # even in its window: nothing is installed

    assert paused.response.update is None and paused.response.held is not None
    assert paused.outcome is None
    assert staged.state() == UpdateState.STAGED and staged.release.is_dir()
    assert staged.agent.installer.current_release() == "v1.0.0"

    staged.command("resume")
    steps: list[str] = []
    staged.agent.installer.checkpoint = steps.append
    resumed = staged.agent.run_once(now=in_window)

    assert resumed.outcome is not None and resumed.outcome.result == InstallResult.COMPLETED
    assert staged.agent.installer.current_release() == "v1.1.0"
    assert steps[:2] == ["staged", "switching"], steps  # on from the staged release
    assert not {"downloading", "verifying", "staging"} & set(steps)


def test_a_cancel_while_paused_deletes_the_staged_release_never_installed(
    staged: StagedDevice,
) -> None:
    staged.command("pause")
    staged.agent.run_once()
    staged.command("cancel")

    cancelled = staged.agent.run_once(now=staged.install_at + timedelta(seconds=5))  # type: ignore[operator]

    assert cancelled.response.update is None and cancelled.response.held is None
    assert staged.state() is None and not staged.release.exists()
    assert staged.agent.installer.current_release() == "v1.0.0"


@pytest.mark.parametrize(
    ("state", "held", "kept"),
    [
        (UpdateState.STAGED, (7, "v1.1.0"), True),
        (UpdateState.DOWNLOADING, (7, "v1.1.0"), True),  # retrying a download: kept too
        (UpdateState.STAGED, None, False),  # withdrawn: deleted
        (UpdateState.STAGED, (8, "v1.1.0"), False),  # another update is held
        (UpdateState.STAGED, (7, "v1.2.0"), False),  # another version under that id
        (UpdateState.SWITCHING, (7, "v1.1.0"), False),  # past the switch: never dropped anyway
    ],
)
def test_only_a_held_answer_naming_the_saved_update_keeps_it(
    state: UpdateState, held: tuple[int, str] | None, kept: bool
) -> None:
    record = UpdateRecord(update_id=7, version="v1.1.0", state=state)
    answer = None if held is None else HeldUpdate(update_id=held[0], version=held[1])
    assert held_by_pause(record, answer) is kept
    assert held_by_pause(None, answer) is False
