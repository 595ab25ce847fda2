"""Signed system packages: Debian names after ``--``, the dpkg lock wait, its holder named.

The lock is a temporary file held by a real second process (``fcntl`` locks
belong to processes, exactly as dpkg's do); apt itself is replaced by a
recording runner, since tests must not install system packages.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from javia_agent.apt import (
    apt_download_argv,
    apt_install_argv,
    apt_lock_failure,
    lock_holder,
    wait_for_dpkg_lock,
)
from javia_agent.client import DeviceClient
from javia_agent.errors import InstallError, PackageManagerLockError
from javia_agent.installer import InstallResult
from javia_agent.state import StateStore, UpdateState
from javia_core.models import InstallDirective

from .helpers import Device, FileServer, PackageFactory, Signer, make_installer, serve_package

HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


class LockHolder:
    """A child process holding an fcntl write lock on ``path`` for ``seconds``."""

    def __init__(self, path: Path, seconds: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(path), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "locked"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def lock_file(tmp_path: Path) -> Path:
    path = tmp_path / "lock-frontend"
    path.touch()
    return path


@pytest.fixture
def hold(lock_file: Path) -> Iterator[Any]:
    holders: list[LockHolder] = []

    def start(seconds: float) -> LockHolder:
        holder = LockHolder(lock_file, seconds)
        holders.append(holder)
        return holder

    yield start
    for holder in holders:
        holder.stop()


def test_package_names_follow_a_double_dash_and_are_checked_against_debian_policy() -> None:
    assert apt_install_argv(["apt-get", "install", "--yes"], ["sox", "libasound2=1.2.8-1"]) == [
        "apt-get",
        "install",
        "--yes",
        "--",
        "sox",
        "libasound2=1.2.8-1",
    ]
    assert apt_install_argv(["apt-get", "install", "--"], ["sox"]) == [
        "apt-get",
        "install",
        "--",
        "sox",
    ]
    with pytest.raises(InstallError, match="Debian package name"):
        apt_install_argv(["apt-get", "install"], ["-oAPT::Get::AllowUnauthenticated=1"])
    with pytest.raises(InstallError, match="Debian package name"):
        apt_install_argv(["apt-get", "install"], ["Sox"])
    with pytest.raises(InstallError, match="only as its last element"):
        apt_install_argv(["apt-get", "--", "install"], ["sox"])


def test_giving_up_on_the_dpkg_lock_names_its_holder(lock_file: Path, hold: Any) -> None:
    holder = hold(30)
    assert lock_holder(lock_file) == f"pid {holder.pid} ({Path(sys.executable).name[:15]})"
    began = time.monotonic()
    with pytest.raises(PackageManagerLockError) as error:
        wait_for_dpkg_lock(lock_file, timeout_seconds=0.3, poll_seconds=0.05)
    assert time.monotonic() - began >= 0.3
    message = str(error.value)
    assert f"pid {holder.pid}" in message and str(lock_file) in message and "0.3 s" in message


def test_the_wait_ends_as_soon_as_the_holder_lets_go(lock_file: Path, hold: Any) -> None:
    holder = hold(0.4)
    began = time.monotonic()
    wait_for_dpkg_lock(lock_file, timeout_seconds=20, poll_seconds=0.05)
    assert 0.2 <= time.monotonic() - began < 10
    assert holder.process.wait(timeout=5) == 0
    assert lock_holder(lock_file) is None


def test_no_lock_file_means_no_wait(tmp_path: Path) -> None:
    wait_for_dpkg_lock(tmp_path / "absent", timeout_seconds=0)


def test_apt_lock_messages_are_recognised() -> None:
    assert apt_lock_failure(
        "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 812 (apt-get)\n"
        "E: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), "
        "is another process using it?"
    )
    assert not apt_lock_failure("E: Unable to locate package sox")


class AptRecorder:
    """Stands in for apt: records each call, answers from a script of (status, stderr)."""

    def __init__(self, answers: list[tuple[int, bytes]] | None = None) -> None:
        self.calls: list[tuple[list[str], float]] = []
        self.answers = list(answers or [])

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        self.calls.append((list(argv), time.monotonic()))
        status, stderr = self.answers.pop(0) if self.answers else (0, b"")
        return subprocess.CompletedProcess(argv, status, b"Reading package lists...\n", stderr)


def test_staging_waits_for_the_lock_then_installs_the_signed_packages(
    device: Device, signer: Signer, make_package: PackageFactory, lock_file: Path, hold: Any
) -> None:
    apt = AptRecorder()
    holder = hold(0.5)
    package = make_package("v1.0.0", system_packages=("sox",))
    outcome = make_installer(
        device, signer, runner=apt, dpkg_lock_file=lock_file, dpkg_lock_timeout_seconds=20
    ).install_from_directory(package.directory)

    assert outcome.result == InstallResult.COMPLETED, outcome
    assert [argv for argv, _ in apt.calls] == [
        ["apt-get", "install", "--yes", "--no-install-recommends", "--", "sox"]
    ]
    assert holder.process.poll() is not None  # apt ran only after the holder was gone


def test_apt_finding_the_lock_taken_waits_and_runs_again(
    device: Device, signer: Signer, make_package: PackageFactory, lock_file: Path
) -> None:
    taken = b"E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 77 (apt)\n"
    apt = AptRecorder([(100, taken), (0, b"")])
    package = make_package("v1.0.0", system_packages=("sox",))
    outcome = make_installer(
        device, signer, runner=apt, dpkg_lock_file=lock_file, dpkg_lock_timeout_seconds=20
    ).install_from_directory(package.directory)
    assert outcome.result == InstallResult.COMPLETED, outcome
    assert len(apt.calls) == 2


def test_apt_failing_for_another_reason_fails_the_update_before_the_switch(
    device: Device, signer: Signer, make_package: PackageFactory, lock_file: Path
) -> None:
    apt = AptRecorder([(100, b"E: Unable to locate package sox\n")])
    outcome = make_installer(
        device, signer, runner=apt, dpkg_lock_file=lock_file
    ).install_from_directory(make_package("v1.0.0", system_packages=("sox",)).directory)
    assert outcome.result == InstallResult.FAILED
    assert "Unable to locate package sox" in (outcome.reason or "")
    assert device.current() is None and len(apt.calls) == 1


def test_a_lock_held_past_the_limit_pauses_the_update_while_the_old_release_runs(
    device: Device,
    signer: Signer,
    make_package: PackageFactory,
    lock_file: Path,
    hold: Any,
    file_server: FileServer,
) -> None:
    assert make_installer(device, signer).install_from_directory(
        make_package("v1.0.0").directory
    ).result == (InstallResult.COMPLETED)
    old_pid = device.wait_for_app("v1.0.0")["pid"]
    directive = InstallDirective.model_validate(
        serve_package(file_server, 31, make_package("v1.1.0", system_packages=("sox",)))
    )
    holder = hold(60)
    apt = AptRecorder()
    with DeviceClient(file_server.url, device_uuid=_UUID, token="t") as client:
        installer = make_installer(
            device,
            signer,
            client=client,
            runner=apt,
            dpkg_lock_file=lock_file,
            dpkg_lock_timeout_seconds=0.3,
        )
        paused = installer.install(directive)

        assert paused.result == InstallResult.RETRY_LATER
        assert f"pid {holder.pid}" in (paused.reason or "")
        assert apt.calls == []
        assert device.current() == "v1.0.0" and device.wait_for_app("v1.0.0")["pid"] == old_pid
        # Paused staged: the release stays unpacked for the next try.
        assert StateStore(device.paths.state_file).load().state == UpdateState.STAGED
        assert (device.paths.releases_dir / "v1.1.0").is_dir()

        holder.stop()
        resumed = installer.install(directive)
    assert resumed.result == InstallResult.COMPLETED, resumed
    assert len(apt.calls) == 1
    device.wait_for_app("v1.1.0")


_UUID = "00000000-0000-0000-0000-0000000000a7"


def test_staged_ahead_apt_only_downloads_and_installs_at_install_time(
    device: Device, signer: Signer, make_package: PackageFactory, file_server: FileServer
) -> None:
    """Ahead of the window apt fetches into its cache (--download-only); the install comes later."""
    assert make_installer(device, signer).install_from_directory(
        make_package("v1.0.0").directory
    ).result == (InstallResult.COMPLETED)
    directive = InstallDirective.model_validate(
        serve_package(file_server, 32, make_package("v1.1.0", system_packages=("sox",)))
    )
    apt = AptRecorder()
    with DeviceClient(file_server.url, device_uuid=_UUID, token="t") as client:
        installer = make_installer(device, signer, client=client, runner=apt)
        staged = installer.prepare(directive)
        assert staged.result == InstallResult.STAGED, staged
        assert [argv for argv, _ in apt.calls] == [
            [
                "apt-get",
                "install",
                "--yes",
                "--no-install-recommends",
                "--download-only",
                "--",
                "sox",
            ]
        ]
        assert device.current() == "v1.0.0"
        installed = installer.install(directive)
    assert installed.result == InstallResult.COMPLETED, installed
    assert [argv for argv, _ in apt.calls][1:] == [
        ["apt-get", "install", "--yes", "--no-install-recommends", "--", "sox"]
    ]


def test_the_download_only_command_line_keeps_the_double_dash_last() -> None:
    assert apt_download_argv(["apt", "install", "-y"], ["sox", "libfoo=1.0"]) == [
        "apt",
        "install",
        "-y",
        "--download-only",
        "--",
        "sox",
        "libfoo=1.0",
    ]
