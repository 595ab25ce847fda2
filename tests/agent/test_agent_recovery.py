"""Crash recovery: one test per saved state (STYLE.md, Mender's recovery table).

A crash is simulated by raising :class:`Crash` (a ``BaseException`` the
installer does not catch) at an exact point; a new :class:`Installer` on the
same directories then plays the restarted agent. Whatever the step, the
device must end on a complete old or new release and report the outcome.
"""

from __future__ import annotations

import random

import pytest

from javia_agent import installer as installer_module
from javia_agent.client import DeviceClient
from javia_agent.installer import Installer, InstallResult
from javia_agent.releases import Releases
from javia_agent.state import StateStore, UpdateState
from javia_agent.transport import RetryPolicy
from javia_core.models import InstallDirective, UpdateStatus
from javia_core.versioning import Version

from .helpers import (
    Crash,
    CrashingService,
    Device,
    FileServer,
    PackageFactory,
    Signer,
    make_installer,
    serve_package,
)

UUID = "00000000-0000-0000-0000-000000000002"


@pytest.fixture
def running_v1(device: Device, signer: Signer, make_package: PackageFactory) -> Device:
    outcome = make_installer(device, signer).install_from_directory(
        make_package("v1.0.0").directory
    )
    assert outcome.result == InstallResult.COMPLETED
    device.wait_for_app("v1.0.0")
    return device


@pytest.fixture
def client(file_server: FileServer):
    """One attempt per download: a cut connection pauses the update (RETRY_LATER)."""
    with DeviceClient(
        file_server.url, device_uuid=UUID, token="device-token", retry=RetryPolicy(attempts=1)
    ) as client:
        yield client


def _saved_state(device: Device) -> UpdateState:
    return StateStore(device.paths.state_file).load().state


def _crash_then_restart(
    first: Installer, directive: InstallDirective, expected: UpdateState
) -> None:
    with pytest.raises(Crash):
        first.install(directive)
    assert _saved_state_of(first) == expected


def _saved_state_of(installer: Installer) -> UpdateState:
    return StateStore(installer.paths.state_file).load().state


def test_interrupted_download_keeps_the_partial_file_and_resumes_with_range(
    running_v1: Device,
    signer: Signer,
    make_package: PackageFactory,
    file_server: FileServer,
    client: DeviceClient,
) -> None:
    package = make_package("v1.1.0", extra_files={"model.bin": random.Random(1).randbytes(300_000)})
    assert package.manifest.archive.size > 200_000
    directive = InstallDirective.model_validate(
        serve_package(file_server, 20, package, cut_after=100_000)
    )
    first = make_installer(running_v1, signer, client=client).install(directive)
    assert first.result == InstallResult.RETRY_LATER
    assert _saved_state(running_v1) == UpdateState.DOWNLOADING
    partial = running_v1.paths.download_dir(20) / "payload.tar.gz.partial"
    assert partial.stat().st_size == 100_000

    restarted = make_installer(running_v1, signer, client=client)
    assert restarted.recover() is None
    assert partial.stat().st_size == 100_000  # kept for the resume
    outcome = restarted.install(directive)

    assert outcome.result == InstallResult.COMPLETED
    downloads = [range_ for path, range_ in file_server.requests if path.endswith("/download")]
    assert downloads == [None, "bytes=100000-"]
    running_v1.wait_for_app("v1.1.0")


def test_crash_while_verifying_reverifies_without_downloading_again(
    running_v1: Device,
    signer: Signer,
    make_package: PackageFactory,
    file_server: FileServer,
    client: DeviceClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    directive = InstallDirective.model_validate(
        serve_package(file_server, 21, make_package("v1.1.0"))
    )
    real = installer_module.verification.verify_archive
    calls = []

    def crash_once(*args):
        calls.append(args)
        if len(calls) == 1:
            raise Crash("power loss while hashing")
        return real(*args)

    monkeypatch.setattr(installer_module.verification, "verify_archive", crash_once)
    _crash_then_restart(
        make_installer(running_v1, signer, client=client), directive, UpdateState.VERIFYING
    )

    restarted = make_installer(running_v1, signer, client=client)
    assert restarted.recover() is None
    outcome = restarted.install(directive)
    assert outcome.result == InstallResult.COMPLETED
    assert sum(path.endswith("/download") for path, _ in file_server.requests) == 1
    running_v1.wait_for_app("v1.1.0")


def test_crash_while_staging_removes_the_half_written_release_and_stages_again(
    running_v1: Device,
    signer: Signer,
    make_package: PackageFactory,
    file_server: FileServer,
    client: DeviceClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    directive = InstallDirective.model_validate(
        serve_package(file_server, 22, make_package("v1.1.0"))
    )
    real = installer_module.verification.extract_payload
    releases = running_v1.paths.releases_dir

    def crash_half_way(payload, manifest, destination):
        (releases / ".staging-v1.1.0-0123456789abcdef").mkdir()
        (releases / ".staging-v1.1.0-0123456789abcdef" / "app.py").write_text("half")
        destination.mkdir()
        (destination / "app.py").write_text("half")
        raise Crash("power loss while extracting")

    monkeypatch.setattr(installer_module.verification, "extract_payload", crash_half_way)
    _crash_then_restart(
        make_installer(running_v1, signer, client=client), directive, UpdateState.STAGING
    )
    monkeypatch.setattr(installer_module.verification, "extract_payload", real)

    restarted = make_installer(running_v1, signer, client=client)
    assert restarted.recover() is None
    assert sorted(p.name for p in releases.iterdir()) == [
        "v1.0.0"
    ]  # debris gone, old release intact
    assert running_v1.current() == "v1.0.0"

    outcome = restarted.install(directive)
    assert outcome.result == InstallResult.COMPLETED
    assert (releases / "v1.1.0" / "app.py").read_text() != "half"
    running_v1.wait_for_app("v1.1.0")


# A crash inside a service call, the state saved then, the version ``current``
# names at the crash, and the version the device ends on after the restart.
# (The release whose health check fails is bad: the outcome is a rollback.)
SERVICE_CRASHES = [
    pytest.param(
        {"start": 1}, False, UpdateState.SWITCHING, "v1.1.0", "v1.1.0",
        id="after-the-switch-rechecks-health-and-commits",
    ),
    pytest.param(
        {"stop": 1}, False, UpdateState.SWITCHING, "v1.0.0", "v1.1.0",
        id="during-the-switch-before-current-moved-redoes-the-switch",
    ),
    pytest.param(
        {"is_active": 1}, True, UpdateState.HEALTH_CHECK, "v1.1.0", "v1.0.0",
        id="during-health-check-of-a-bad-release-rolls-back",
    ),
    pytest.param(
        {"start": 2}, True, UpdateState.ROLLING_BACK, "v1.0.0", "v1.0.0",
        id="while-rolling-back-finishes-the-rollback",  # the old release's restart
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("crash_on", "bad_release", "saved", "current_at_crash", "final"), SERVICE_CRASHES
)
def test_crash_in_a_service_call_converges_on_restart(
    running_v1: Device,
    signer: Signer,
    make_package: PackageFactory,
    file_server: FileServer,
    client: DeviceClient,
    crash_on: dict[str, int],
    bad_release: bool,
    saved: UpdateState,
    current_at_crash: str,
    final: str,
) -> None:
    directive = InstallDirective.model_validate(
        serve_package(file_server, 23, make_package("v1.1.0", fail=bad_release))
    )
    crashing = CrashingService(running_v1.service, crash_on)
    _crash_then_restart(
        make_installer(running_v1, signer, client=client, service=crashing), directive, saved
    )
    assert running_v1.current() == current_at_crash

    outcome = make_installer(running_v1, signer, client=client).recover()

    rolled_back = final == "v1.0.0"
    assert outcome is not None
    assert outcome.result == (InstallResult.ROLLED_BACK if rolled_back else InstallResult.COMPLETED)
    assert running_v1.statuses()[-1] == (
        UpdateStatus.ROLLED_BACK if rolled_back else UpdateStatus.COMPLETED
    )
    assert running_v1.current() == final
    running_v1.wait_for_app(final)
    assert StateStore(running_v1.paths.state_file).load().current_version == final
    assert running_v1.paths.release_dir(Version.parse("v1.1.0")).exists() is not rolled_back


def test_crash_while_committing_commits_on_restart(
    running_v1: Device,
    signer: Signer,
    make_package: PackageFactory,
    file_server: FileServer,
    client: DeviceClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    directive = InstallDirective.model_validate(
        serve_package(file_server, 26, make_package("v1.1.0"))
    )

    def crash(self, keep_previous):
        raise Crash("power loss while pruning")

    with monkeypatch.context() as patch:
        patch.setattr(Releases, "prune", crash)
        _crash_then_restart(
            make_installer(running_v1, signer, client=client), directive, UpdateState.COMMITTING
        )

    outcome = make_installer(running_v1, signer, client=client).recover()
    assert outcome is not None and outcome.result == InstallResult.COMPLETED
    assert running_v1.statuses()[-1] == UpdateStatus.COMPLETED
    assert StateStore(running_v1.paths.state_file).load().current_version == "v1.1.0"
    running_v1.wait_for_app("v1.1.0")


def test_crash_while_reporting_reports_again_on_restart(
    running_v1: Device,
    signer: Signer,
    make_package: PackageFactory,
    file_server: FileServer,
    client: DeviceClient,
) -> None:
    directive = InstallDirective.model_validate(
        serve_package(file_server, 28, make_package("v1.1.0"))
    )

    def reporter(update_id, status, message, **extra):
        if status == UpdateStatus.COMPLETED:
            raise Crash("power loss while queueing the report")
        running_v1.reporter(update_id, status, message, **extra)

    _crash_then_restart(
        make_installer(running_v1, signer, client=client, reporter=reporter),
        directive,
        UpdateState.REPORTING,
    )
    assert UpdateStatus.COMPLETED not in running_v1.statuses()

    outcome = make_installer(running_v1, signer, client=client).recover()
    assert outcome is not None and outcome.result == InstallResult.COMPLETED
    assert running_v1.reports[-1] == (28, UpdateStatus.COMPLETED, None)
    assert _saved_state(running_v1) == UpdateState.IDLE


def test_crash_loop_is_broken_by_the_save_cap_and_rolls_back(
    running_v1: Device,
    signer: Signer,
    make_package: PackageFactory,
    file_server: FileServer,
    client: DeviceClient,
) -> None:
    directive = InstallDirective.model_validate(
        serve_package(file_server, 29, make_package("v1.1.0"))
    )
    crashing = CrashingService(running_v1.service, {"is_active": 1})
    _crash_then_restart(
        make_installer(running_v1, signer, client=client, service=crashing, max_state_saves=6),
        directive,
        UpdateState.HEALTH_CHECK,
    )
    outcome = None
    for _ in range(10):  # every restart dies in the health check again
        crashing = CrashingService(running_v1.service, {"is_active": 1})
        restarted = make_installer(
            running_v1, signer, client=client, service=crashing, max_state_saves=6
        )
        try:
            outcome = restarted.recover()
            break
        except Crash:
            continue
    assert outcome is not None and outcome.result == InstallResult.ROLLED_BACK
    assert "crash loop" in (outcome.reason or "")
    assert running_v1.current() == "v1.0.0"
    running_v1.wait_for_app("v1.0.0")
    state = StateStore(running_v1.paths.state_file).load()
    assert state.failed_versions == ["v1.1.0"] and state.update is None


def test_a_commit_that_keeps_crashing_is_rolled_back_by_the_save_cap(
    running_v1: Device,
    signer: Signer,
    make_package: PackageFactory,
    file_server: FileServer,
    client: DeviceClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop row of COMMITTING rolls back (it used to be a forbidden move: RuntimeError)."""
    directive = InstallDirective.model_validate(
        serve_package(file_server, 30, make_package("v1.1.0"))
    )

    def crash(self, keep_previous):
        raise Crash("dies while pruning, every time")

    monkeypatch.setattr(Releases, "prune", crash)
    with pytest.raises(Crash):
        make_installer(running_v1, signer, client=client, max_state_saves=7).install(directive)
    outcome = None
    for _ in range(10):  # every start dies in the commit again, until the cap trips
        try:
            outcome = make_installer(running_v1, signer, client=client, max_state_saves=7).recover()
            break
        except Crash:
            continue
    assert outcome is not None and outcome.result == InstallResult.ROLLED_BACK, outcome
    assert "crash loop" in (outcome.reason or "")
    assert running_v1.current() == "v1.0.0"
    running_v1.wait_for_app("v1.0.0")
    state = StateStore(running_v1.paths.state_file).load()
    assert state.failed_versions == ["v1.1.0"] and state.update is None
