"""Staged ahead of the window: real packages, a real application process, a real file system.

:meth:`Installer.prepare` downloads, verifies and stages an update while the
old release runs and holds it in the state ``staged``; :meth:`Installer.install`
goes on from there with only apt's install, the setup command and the switch
left. A staged release changed on disk is made again, never switched to; one
the server withdraws or a newer offer replaces is deleted, never installed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from javia_agent.client import DeviceClient
from javia_agent.installer import InstallResult
from javia_agent.state import StateStore, UpdateState
from javia_agent.steps.staged import release_mismatch
from javia_agent.transport import RetryPolicy
from javia_core.models import InstallDirective, UpdateStatus

from .helpers import Device, FileServer, PackageFactory, Signer, make_installer, serve_package

UUID = "00000000-0000-0000-0000-0000000000b2"


@pytest.fixture
def running_v1(device: Device, signer: Signer, make_package: PackageFactory) -> Device:
    outcome = make_installer(device, signer).install_from_directory(
        make_package("v1.0.0").directory
    )
    assert outcome.result == InstallResult.COMPLETED
    device.wait_for_app("v1.0.0")
    return device


@pytest.fixture
def client(file_server: FileServer) -> Iterator[DeviceClient]:
    with DeviceClient(
        file_server.url, device_uuid=UUID, token="t", retry=RetryPolicy(attempts=1)
    ) as client:
        yield client


def _payload_requests(server: FileServer, update_id: int) -> int:
    return sum(1 for path, _ in server.requests if path == f"/api/v1/updates/{update_id}/download")


def test_staged_ahead_then_installed_without_a_second_download(
    running_v1: Device,
    signer: Signer,
    make_package: PackageFactory,
    file_server: FileServer,
    client: DeviceClient,
) -> None:
    device = running_v1
    old_pid = device.app_status()["pid"]
    directive = InstallDirective.model_validate(
        serve_package(file_server, 41, make_package("v1.1.0"))
    )

    staged = make_installer(device, signer, client=client).prepare(directive)

    assert staged.result == InstallResult.STAGED, staged
    assert device.current() == "v1.0.0" and device.app_status()["pid"] == old_pid
    assert (device.paths.releases_dir / "v1.1.0").is_dir()
    assert StateStore(device.paths.state_file).load().state == UpdateState.STAGED
    assert device.statuses() == [UpdateStatus.DOWNLOADING, UpdateStatus.STAGED]
    # Asked again (the next heartbeat before the window): nothing is redone.
    assert make_installer(device, signer, client=client).prepare(directive).result == (
        InstallResult.STAGED
    )
    assert device.statuses() == [UpdateStatus.DOWNLOADING, UpdateStatus.STAGED]
    downloads = _payload_requests(file_server, 41)

    # The window: a new agent process (state from disk) goes on from the staged release.
    installed = make_installer(device, signer, client=client).install(directive)

    assert installed.result == InstallResult.COMPLETED, installed
    assert _payload_requests(file_server, 41) == downloads == 1
    device.wait_for_app("v1.1.0")
    assert device.statuses()[2:] == [UpdateStatus.INSTALLING, UpdateStatus.COMPLETED]


def test_a_staged_release_changed_on_disk_is_made_again_never_switched_to(
    running_v1: Device,
    signer: Signer,
    make_package: PackageFactory,
    file_server: FileServer,
    client: DeviceClient,
) -> None:
    device = running_v1
    package = make_package("v1.1.0")
    directive = InstallDirective.model_validate(serve_package(file_server, 42, package))
    assert make_installer(device, signer, client=client).prepare(directive).result == (
        InstallResult.STAGED
    )
    release = device.paths.releases_dir / "v1.1.0"
    (release / "app.py").write_text("raise SystemExit('tampered')\n")
    assert "app.py" in (release_mismatch(release, package.manifest) or "")

    installed = make_installer(device, signer, client=client).install(directive)

    assert installed.result == InstallResult.COMPLETED, installed
    assert release_mismatch(release, package.manifest) is None
    assert _payload_requests(file_server, 42) == 1  # made again from the kept, verified payload
    device.wait_for_app("v1.1.0")


def test_a_withdrawn_or_replaced_staged_update_is_deleted_and_never_installed(
    running_v1: Device,
    signer: Signer,
    make_package: PackageFactory,
    file_server: FileServer,
    client: DeviceClient,
) -> None:
    device = running_v1
    first = InstallDirective.model_validate(serve_package(file_server, 43, make_package("v1.1.0")))
    newer = InstallDirective.model_validate(serve_package(file_server, 44, make_package("v1.2.0")))
    installer = make_installer(device, signer, client=client)
    assert installer.prepare(first).result == InstallResult.STAGED

    # A newer publish: its offer replaces the staged one.
    assert installer.prepare(newer).result == InstallResult.STAGED
    assert sorted(p.name for p in device.paths.releases_dir.iterdir()) == ["v1.0.0", "v1.2.0"]
    assert not (device.paths.downloads_dir / "43").exists()

    # Cancelled (the server offers nothing): dropped at the next heartbeat.
    assert installer.abandon_pending("the server no longer offers update 44")
    assert sorted(p.name for p in device.paths.releases_dir.iterdir()) == ["v1.0.0"]
    assert StateStore(device.paths.state_file).load().update is None
    assert device.current() == "v1.0.0"
    device.wait_for_app("v1.0.0")
    assert UpdateStatus.INSTALLING not in device.statuses()


def test_a_restart_keeps_the_staged_release(
    running_v1: Device,
    signer: Signer,
    make_package: PackageFactory,
    file_server: FileServer,
    client: DeviceClient,
) -> None:
    device = running_v1
    package = make_package("v1.1.0")
    directive = InstallDirective.model_validate(serve_package(file_server, 45, package))
    assert make_installer(device, signer, client=client).prepare(directive).result == (
        InstallResult.STAGED
    )

    assert make_installer(device, signer, client=client).recover() is None

    state = StateStore(device.paths.state_file).load()
    assert state.state == UpdateState.STAGED
    assert release_mismatch(device.paths.releases_dir / "v1.1.0", package.manifest) is None
    assert (device.paths.downloads_dir / "45").is_dir()
    assert device.current() == "v1.0.0"
