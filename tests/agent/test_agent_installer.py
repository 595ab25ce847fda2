"""Installer: real packages, a real app process, real file system (DESIGN.md section 7)."""

from __future__ import annotations

import os
from pathlib import Path

from javia_agent.client import DeviceClient
from javia_agent.installer import InstallResult
from javia_agent.retry_policy import RetrySchedule
from javia_agent.state import StateStore, UpdateState
from javia_core.models import InstallDirective, UpdateStatus
from javia_core.versioning import Version

from .helpers import Device, FileServer, PackageFactory, Signer, make_installer, serve_package


def _install_initial(
    device: Device, signer: Signer, make_package: PackageFactory, version: str = "v1.0.0"
) -> None:
    outcome = make_installer(device, signer).install_from_directory(make_package(version).directory)
    assert outcome.result == InstallResult.COMPLETED, outcome
    device.wait_for_app(version)


def test_package_directory_install_starts_the_first_release(
    device: Device, signer: Signer, make_package: PackageFactory
) -> None:
    package = make_package("v1.0.0")
    outcome = make_installer(device, signer).install_from_directory(package.directory)

    assert outcome.result == InstallResult.COMPLETED
    assert device.current() == "v1.0.0"
    status = device.wait_for_app("v1.0.0")
    release = device.paths.release_dir(Version.parse("v1.0.0"))
    assert Path(status["release_dir"]) == release.resolve()
    assert status["activity_file"] == str(device.paths.activity_file)
    assert device.reports == []  # no server, no reports
    assert StateStore(device.paths.state_file).load().current_version == "v1.0.0"


def test_network_update_switches_and_restarts_on_the_new_version(
    device: Device, signer: Signer, make_package: PackageFactory, file_server: FileServer
) -> None:
    _install_initial(device, signer, make_package)
    old_pid = device.app_status()["pid"]
    directive = InstallDirective.model_validate(
        serve_package(file_server, 7, make_package("v1.1.0"))
    )
    with DeviceClient(
        file_server.url, device_uuid="00000000-0000-0000-0000-000000000001", token="t"
    ) as client:
        outcome = make_installer(device, signer, client=client).install(directive)

    assert outcome.result == InstallResult.COMPLETED, outcome
    assert device.current() == "v1.1.0"
    status = device.wait_for_app("v1.1.0")
    assert status["pid"] != old_pid
    assert device.statuses() == [
        UpdateStatus.DOWNLOADING,
        UpdateStatus.INSTALLING,
        UpdateStatus.COMPLETED,
    ]
    assert sorted(p.name for p in device.paths.releases_dir.iterdir()) == ["v1.0.0", "v1.1.0"]
    assert not any(device.paths.downloads_dir.iterdir())
    state = StateStore(device.paths.state_file).load()
    assert state.current_version == "v1.1.0" and state.update is None


UUID = "00000000-0000-0000-0000-000000000001"


def _client(server: FileServer) -> DeviceClient:
    return DeviceClient(server.url, device_uuid=UUID, token="device-token")


def _directive(server: FileServer, update_id: int, package, **options) -> InstallDirective:
    return InstallDirective.model_validate(serve_package(server, update_id, package, **options))


def test_untrusted_signature_keeps_the_old_release_running_and_is_a_server_fault(
    device: Device,
    signer: Signer,
    other_signer: Signer,
    make_package: PackageFactory,
    file_server: FileServer,
) -> None:
    _install_initial(device, signer, make_package)
    old_pid = device.app_status()["pid"]
    directive = _directive(file_server, 8, make_package("v1.1.0", key=other_signer.private_key))
    with _client(file_server) as client:
        installer = make_installer(device, signer, client=client)
        outcome = installer.install(directive)
        again = installer.install(directive)

    assert outcome.result == InstallResult.SERVER_FAULT
    assert "not in the keyring" in (outcome.reason or "")
    assert device.current() == "v1.0.0"
    assert device.wait_for_app("v1.0.0")["pid"] == old_pid  # never stopped
    assert device.statuses()[0] == UpdateStatus.DOWNLOADING
    assert UpdateStatus.FAILED not in device.statuses()  # the server's row stays open
    assert "server fault" in (device.reports[-1][2] or "")
    assert "not in the keyring" in (device.reports[-1][2] or "")
    # The payload was never downloaded: the metadata is verified first.
    assert not any(path.endswith("/download") for path, _ in file_server.requests)
    assert [p.name for p in device.paths.releases_dir.iterdir()] == ["v1.0.0"]
    # Bytes that never verified mark nothing failed: the update is tried again.
    assert again.result == InstallResult.SERVER_FAULT
    assert StateStore(device.paths.state_file).load().failed_versions == []


def test_tampered_payload_is_refused_before_extraction(
    device: Device, signer: Signer, make_package: PackageFactory, file_server: FileServer
) -> None:
    _install_initial(device, signer, make_package)
    old_pid = device.app_status()["pid"]
    package = make_package("v1.1.0")
    directive = _directive(file_server, 9, package)
    payload = bytearray(package.payload_path.read_bytes())
    payload[len(payload) // 2] ^= 0xFF  # same size, one bit flipped
    file_server.routes[directive.download_url].data = bytes(payload)
    with _client(file_server) as client:
        outcome = make_installer(device, signer, client=client).install(directive)

    assert outcome.result == InstallResult.SERVER_FAULT
    assert "SHA-256" in (outcome.reason or "")
    assert device.current() == "v1.0.0"
    assert device.wait_for_app("v1.0.0")["pid"] == old_pid
    assert [p.name for p in device.paths.releases_dir.iterdir()] == ["v1.0.0"]
    assert UpdateStatus.FAILED not in device.statuses()
    assert not any(device.paths.downloads_dir.iterdir())  # the unverified bytes are gone


def test_offered_version_must_match_the_signed_manifest(
    device: Device, signer: Signer, make_package: PackageFactory, file_server: FileServer
) -> None:
    _install_initial(device, signer, make_package)
    fields = serve_package(file_server, 10, make_package("v1.1.0"))
    fields["version"] = "v1.2.0"  # a server mixing one update's metadata with another
    with _client(file_server) as client:
        outcome = make_installer(device, signer, client=client).install(
            InstallDirective.model_validate(fields)
        )
    assert outcome.result == InstallResult.SERVER_FAULT
    assert "v1.1.0" in (outcome.reason or "") and device.current() == "v1.0.0"


def test_downgrade_is_refused(
    device: Device, signer: Signer, make_package: PackageFactory, file_server: FileServer
) -> None:
    _install_initial(device, signer, make_package, "v1.1.0")
    with _client(file_server) as client:
        outcome = make_installer(device, signer, client=client).install(
            _directive(file_server, 11, make_package("v1.0.0"))
        )
    assert outcome.result == InstallResult.FAILED
    assert "downgrade" in (outcome.reason or "")
    assert device.current() == "v1.1.0"


def test_unhealthy_release_is_rolled_back_and_the_old_one_runs_again(
    device: Device, signer: Signer, make_package: PackageFactory, file_server: FileServer
) -> None:
    _install_initial(device, signer, make_package)
    directive = _directive(file_server, 12, make_package("v1.1.0", fail=True))
    with _client(file_server) as client:
        outcome = make_installer(device, signer, client=client).install(directive)

    assert outcome.result == InstallResult.ROLLED_BACK
    assert "stopped running" in (outcome.reason or "")
    assert device.current() == "v1.0.0"
    device.wait_for_app("v1.0.0")
    assert device.statuses() == [
        UpdateStatus.DOWNLOADING,
        UpdateStatus.INSTALLING,
        UpdateStatus.ROLLED_BACK,
    ]
    assert "v1.1.0 stopped running" in (device.reports[-1][2] or "")
    assert [p.name for p in device.paths.releases_dir.iterdir()] == ["v1.0.0"]
    state = StateStore(device.paths.state_file).load()
    assert state.current_version == "v1.0.0" and state.failed_versions == ["v1.1.0"]


def test_failing_health_command_rolls_back(
    device: Device, signer: Signer, make_package: PackageFactory, file_server: FileServer
) -> None:
    import sys

    _install_initial(device, signer, make_package)
    check = [sys.executable, "-c", "import sys; print('no microphone'); sys.exit(3)"]
    with _client(file_server) as client:
        outcome = make_installer(device, signer, client=client, health_command=check).install(
            _directive(file_server, 13, make_package("v1.1.0"))
        )
    assert outcome.result == InstallResult.ROLLED_BACK
    assert "status 3" in (outcome.reason or "") and "no microphone" in (outcome.reason or "")
    assert device.current() == "v1.0.0"
    device.wait_for_app("v1.0.0")


def test_first_release_that_is_unhealthy_leaves_nothing_running(
    device: Device, signer: Signer, make_package: PackageFactory
) -> None:
    outcome = make_installer(device, signer).install_from_directory(
        make_package("v1.0.0", fail=True).directory
    )
    assert outcome.result == InstallResult.ROLLED_BACK
    assert device.current() is None and not device.service.is_active()


def test_old_releases_are_pruned_keeping_one_previous(
    device: Device, signer: Signer, make_package: PackageFactory
) -> None:
    for version in ("v1.0.0", "v1.1.0", "v1.2.0"):
        outcome = make_installer(device, signer).install_from_directory(
            make_package(version).directory
        )
        assert outcome.result == InstallResult.COMPLETED
    assert sorted(p.name for p in device.paths.releases_dir.iterdir()) == ["v1.1.0", "v1.2.0"]
    device.wait_for_app("v1.2.0")


def test_setup_command_failure_fails_before_the_switch(
    device: Device, signer: Signer, make_package: PackageFactory
) -> None:
    import sys

    _install_initial(device, signer, make_package)
    old_pid = device.app_status()["pid"]
    setup = [sys.executable, "-c", "import sys; sys.exit('pip: no network')"]
    outcome = make_installer(device, signer, setup_command=setup).install_from_directory(
        make_package("v1.1.0").directory
    )
    assert outcome.result == InstallResult.FAILED
    assert "pip: no network" in (outcome.reason or "")
    assert device.current() == "v1.0.0" and device.wait_for_app("v1.0.0")["pid"] == old_pid
    assert not device.paths.release_dir(Version.parse("v1.1.0")).exists()


def test_signed_system_packages_are_installed_with_apt_before_the_switch(
    device: Device, signer: Signer, make_package: PackageFactory
) -> None:
    import subprocess

    calls: list[list[str]] = []

    def runner(argv, **kwargs):
        calls.append(list(argv))
        assert kwargs["env"]["DEBIAN_FRONTEND"] == "noninteractive"
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    package = make_package("v1.0.0", system_packages=("sox", "libasound2"))
    outcome = make_installer(device, signer, runner=runner).install_from_directory(
        package.directory
    )
    assert outcome.result == InstallResult.COMPLETED
    assert calls == [
        ["apt-get", "install", "--yes", "--no-install-recommends", "--", "sox", "libasound2"]
    ]


# -- disk space ------------------------------------------------------------------------


def test_too_little_disk_space_is_refused_before_the_download_with_the_numbers(
    device: Device, signer: Signer, make_package: PackageFactory, file_server: FileServer
) -> None:
    _install_initial(device, signer, make_package)
    old_pid = device.app_status()["pid"]
    package = make_package("v1.1.0")
    directive = _directive(file_server, 14, package)
    free = 4096  # less than the reserve alone
    with _client(file_server) as client:
        outcome = make_installer(
            device,
            signer,
            client=client,
            free_bytes=lambda path: free,
            disk_reserve_bytes=4096,
            retry_schedule=RetrySchedule(deadline_seconds=0),  # a full disk is retried until then
        ).install(directive)

    assert outcome.result == InstallResult.FAILED
    needed = package.manifest.archive.size + package.manifest.unpacked_size + 4096
    reason = outcome.reason or ""
    assert "not enough disk space for v1.1.0" in reason
    assert f"{needed:,} bytes" in reason and f"{free:,} bytes" in reason
    assert f"download {package.manifest.archive.size:,}" in reason
    assert f"unpacked release {package.manifest.unpacked_size:,}" in reason
    # Refused before a payload byte was fetched or anything was switched.
    assert not any(path.endswith("/download") for path, _ in file_server.requests)
    assert device.current() == "v1.0.0" and device.wait_for_app("v1.0.0")["pid"] == old_pid
    assert device.statuses() == [UpdateStatus.DOWNLOADING, UpdateStatus.FAILED]
    assert not device.paths.release_dir(Version.parse("v1.1.0")).exists()
    assert not any(device.paths.downloads_dir.iterdir())


def test_exactly_enough_disk_space_is_enough(
    device: Device, signer: Signer, make_package: PackageFactory, file_server: FileServer
) -> None:
    _install_initial(device, signer, make_package)
    package = make_package("v1.1.0")
    needed = package.manifest.archive.size + package.manifest.unpacked_size + 100
    for free, expected in ((needed - 1, InstallResult.FAILED), (needed, InstallResult.COMPLETED)):
        update_id = 15 if expected == InstallResult.FAILED else 16
        fields = serve_package(file_server, update_id, package)
        with _client(file_server) as client:
            installer = make_installer(
                device,
                signer,
                client=client,
                free_bytes=lambda path, free=free: free,
                disk_reserve_bytes=100,
                retry_schedule=RetrySchedule(deadline_seconds=0),
            )
            state = installer.store.load()
            installer.store.save(state.model_copy(update={"failed_versions": []}))
            outcome = installer.install(InstallDirective.model_validate(fields))
        assert outcome.result == expected, (free, needed, outcome)


def test_a_package_directory_too_big_for_the_disk_is_refused_before_anything_is_written(
    device: Device, signer: Signer, make_package: PackageFactory
) -> None:
    import pytest

    from javia_agent.errors import DiskSpaceError

    _install_initial(device, signer, make_package)
    installer = make_installer(device, signer, free_bytes=lambda path: 10)
    with pytest.raises(DiskSpaceError, match="not enough disk space for v1.1.0"):
        installer.install_from_directory(make_package("v1.1.0").directory)
    assert sorted(p.name for p in device.paths.releases_dir.iterdir()) == ["v1.0.0"]
    assert StateStore(device.paths.state_file).load().update is None


def test_keep_releases_sets_how_many_previous_releases_stay_for_rollback(
    device: Device, signer: Signer, make_package: PackageFactory
) -> None:
    for version in ("v1.0.0", "v1.1.0", "v1.2.0", "v1.3.0"):
        outcome = make_installer(device, signer, keep_releases=2).install_from_directory(
            make_package(version).directory
        )
        assert outcome.result == InstallResult.COMPLETED
    assert sorted(p.name for p in device.paths.releases_dir.iterdir()) == [
        "v1.1.0",
        "v1.2.0",
        "v1.3.0",
    ]
    device.wait_for_app("v1.3.0")


def test_debris_left_by_crashes_is_removed_at_start_up(
    device: Device, signer: Signer, make_package: PackageFactory
) -> None:
    _install_initial(device, signer, make_package)
    releases = device.paths.releases_dir
    (releases / ".staging-v1.1.0-00112233aabbccdd").mkdir()
    (releases / ".staging-v1.1.0-00112233aabbccdd" / "app.py").write_text("half")
    stale_download = device.paths.download_dir(41)
    stale_download.mkdir(parents=True)
    (stale_download / "payload.tar.gz.partial").write_bytes(b"x" * 5000)
    os.symlink("releases/v1.0.0", device.paths.install_root / "current.tmp-4242")

    assert make_installer(device, signer).recover() is None

    assert [p.name for p in releases.iterdir()] == ["v1.0.0"]
    assert not any(device.paths.downloads_dir.iterdir())
    assert sorted(p.name for p in device.paths.install_root.iterdir()) == ["current", "releases"]
    assert device.current() == "v1.0.0"


def test_a_server_asking_for_a_long_pause_pauses_the_update_with_its_delay(
    device: Device, signer: Signer, make_package: PackageFactory, file_server: FileServer
) -> None:
    _install_initial(device, signer, make_package)
    directive = _directive(file_server, 17, make_package("v1.1.0"))
    file_server.routes[directive.download_url].refusals = [(503, {"Retry-After": "3600"})]
    with _client(file_server) as client:
        outcome = make_installer(device, signer, client=client).install(directive)
    assert outcome.result == InstallResult.RETRY_LATER
    assert outcome.retry_after_seconds == 3600
    assert device.current() == "v1.0.0"
    assert StateStore(device.paths.state_file).load().state == UpdateState.DOWNLOADING


def test_an_update_whose_download_is_cut_at_20_random_offsets_installs(
    device: Device, signer: Signer, make_package: PackageFactory, file_server: FileServer
) -> None:
    import random

    _install_initial(device, signer, make_package)
    package = make_package(
        "v1.1.0", extra_files={"model.bin": random.Random(20).randbytes(400_000)}
    )
    size = package.manifest.archive.size
    cuts = sorted(random.Random(21).sample(range(1, size), 20))
    directive = _directive(file_server, 18, package, cuts=list(cuts))
    with DeviceClient(
        file_server.url, device_uuid=UUID, token="t", sleep=lambda seconds: None
    ) as client:
        outcome = make_installer(device, signer, client=client).install(directive)

    assert outcome.result == InstallResult.COMPLETED, outcome
    downloads = [range_ for path, range_ in file_server.requests if path.endswith("/download")]
    assert downloads == [None] + [f"bytes={cut}-" for cut in cuts]
    assert file_server.routes[directive.download_url].sent <= 1.1 * size
    device.wait_for_app("v1.1.0")


def test_key_rotation_is_applied_when_an_update_commits_and_never_when_it_rolls_back(
    device: Device,
    signer: Signer,
    make_package: PackageFactory,
    file_server: FileServer,
    tmp_path: Path,
) -> None:
    import shutil

    from javia_core.keys import load_keyring
    from javia_core.models import UpdateType
    from javia_core.versioning import Version
    from javia_updates.keys import generate_keypair
    from javia_updates.packaging import build_package

    from .helpers import APP_SOURCE, NOW

    keyring_dir = tmp_path / "keys"
    shutil.copytree(signer.keyring_dir, keyring_dir)
    successor = generate_keypair(tmp_path / "successor", name="successor")

    def rotating(version: str, *, fail: bool) -> InstallDirective:
        source = tmp_path / "src" / version
        source.mkdir(parents=True)
        (source / "app.py").write_text(APP_SOURCE)
        (source / "VERSION").write_text(version + "\n")
        if fail:
            (source / "FAIL").write_text("exits 1\n")
        package = build_package(
            source,
            tmp_path / "out" / version,
            version=Version.parse(version),
            update_type=UpdateType.INSTANT,
            description="adds the successor key",
            system_packages=(),
            private_key=signer.private_key,
            now=NOW,
            app_name="assistant",
            write_version_file=False,
            add_keys=[successor.public_path],
        )
        return _directive(file_server, 30 if fail else 31, package)

    _install_initial(device, signer, make_package)
    with _client(file_server) as client:
        installer = make_installer(
            device,
            signer,
            client=client,
            keyring=lambda: load_keyring(keyring_dir),
            keyring_dir=keyring_dir,
        )
        rolled_back = installer.install(rotating("v1.1.0", fail=True))
        assert rolled_back.result == InstallResult.ROLLED_BACK
        assert set(load_keyring(keyring_dir)) == {signer.key_id}  # not trusted: never committed

        committed = installer.install(rotating("v1.2.0", fail=False))
    assert committed.result == InstallResult.COMPLETED, committed
    assert set(load_keyring(keyring_dir)) == {signer.key_id, successor.key_id}


def test_a_payload_that_can_never_be_downloaded_fails_after_a_few_cycles_without_progress(
    device: Device, signer: Signer, make_package: PackageFactory, file_server: FileServer
) -> None:
    from javia_agent.installer import MAX_STALLED_DOWNLOADS
    from javia_agent.transport import RetryPolicy

    _install_initial(device, signer, make_package)
    package = make_package("v1.1.0")
    directive = _directive(file_server, 30, package, stall_at=package.manifest.archive.size // 2)
    outcomes = []
    with DeviceClient(
        file_server.url,
        device_uuid=UUID,
        token="t",
        sleep=lambda seconds: None,
        retry=RetryPolicy(attempts=2),
    ) as client:
        # A fresh installer each cycle: the count survives agent restarts.
        for _ in range(MAX_STALLED_DOWNLOADS + 1):
            outcomes.append(make_installer(device, signer, client=client).install(directive))
    results = [outcome.result for outcome in outcomes]
    assert results == [InstallResult.RETRY_LATER] * MAX_STALLED_DOWNLOADS + [InstallResult.FAILED]
    assert "without a new byte" in (outcomes[-1].reason or "")
    assert device.statuses()[-1] == UpdateStatus.FAILED
    assert not device.paths.download_dir(30).exists()  # the partial payload is dropped
    assert StateStore(device.paths.state_file).load().update is None
    assert device.current() == "v1.0.0"


def test_a_newer_update_replaces_a_stuck_download(
    device: Device, signer: Signer, make_package: PackageFactory, file_server: FileServer
) -> None:
    from javia_agent.transport import RetryPolicy

    _install_initial(device, signer, make_package)
    stuck_package = make_package("v1.1.0")
    stuck = _directive(file_server, 32, stuck_package, stall_at=100)
    newer = _directive(file_server, 33, make_package("v1.2.0"))
    with DeviceClient(
        file_server.url,
        device_uuid=UUID,
        token="t",
        sleep=lambda seconds: None,
        retry=RetryPolicy(attempts=1),
    ) as client:
        for _ in range(2):
            assert make_installer(device, signer, client=client).install(stuck).result == (
                InstallResult.RETRY_LATER
            )
        outcome = make_installer(device, signer, client=client).install(newer)
    assert outcome.result == InstallResult.COMPLETED, outcome
    assert not device.paths.download_dir(32).exists()
    device.wait_for_app("v1.2.0")


def test_an_empty_keyring_fails_the_update_without_blacklisting_its_version(
    device: Device, signer: Signer, make_package: PackageFactory, file_server: FileServer
) -> None:
    import shutil

    from javia_core.keys import load_keyring

    _install_initial(device, signer, make_package)
    keyring_dir = device.root / "keys"
    keyring_dir.mkdir()
    directive = _directive(file_server, 34, make_package("v1.1.0"))

    def installer():
        return make_installer(
            device,
            signer,
            client=_client(file_server),
            keyring=lambda: load_keyring(keyring_dir),
            keyring_dir=keyring_dir,
        )

    outcome = installer().install(directive)
    assert outcome.result == InstallResult.FAILED
    assert str(keyring_dir) in (outcome.reason or "") and ".pub" in (outcome.reason or "")
    assert "v1.1.0" not in StateStore(device.paths.state_file).load().failed_versions

    for key in signer.keyring_dir.glob("*.pub"):
        shutil.copy(key, keyring_dir / key.name)
    fixed = installer().install(directive)
    assert fixed.result == InstallResult.COMPLETED, fixed
    device.wait_for_app("v1.1.0")


def test_an_install_root_under_proc_says_it_cannot_be_created_not_that_the_disk_is_full(
    device: Device, signer: Signer, make_package: PackageFactory
) -> None:
    from dataclasses import replace

    from javia_agent.errors import InstallError

    bad = replace(device.paths, install_root=Path("/proc/javia-nope/app"))
    installer = make_installer(device, signer, paths=bad)
    try:
        installer.install_from_directory(make_package("v1.0.0").directory)
    except InstallError as error:
        message = str(error)
    else:
        raise AssertionError("installing under /proc must be refused")
    assert "cannot create /proc/javia-nope/app/releases" in message
    assert "disk space" not in message and "0 bytes" not in message
