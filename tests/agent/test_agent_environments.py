"""Python environments from a release's requirements.txt, built before the downtime.

Real venvs, a real pip installing a wheel built here (``--no-index
--find-links``: no network), a real application process that imports it.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from javia_agent.environments import COMPLETE_MARKER, ENV_LINK_NAME, PythonEnvironments
from javia_agent.installer import InstallResult
from javia_agent.services import CommandService
from javia_core.versioning import Version

from .helpers import Device, PackageFactory, Signer, make_installer

#: Starts the test app with the interpreter of its release's environment.
ENV_START = ["/bin/sh", "-c", 'exec "${JAVIA_PYTHON:-python3}" app.py']


def build_wheel(directory: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel (PEP 427) whose module exposes ``VERSION``."""
    directory.mkdir(parents=True, exist_ok=True)
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n"
        ).encode(),
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: javia-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("wheels")
    build_wheel(directory, "javia_probe", "1.0")
    build_wheel(directory, "javia_probe", "2.0")
    return directory


@pytest.fixture
def env_device(device: Device) -> Device:
    """The device, its app started with ``$JAVIA_PYTHON`` and asked to import the probe."""
    inner = device.service
    device.service = CommandService(
        ENV_START,
        current_link=inner.current_link,
        pid_file=inner.pid_file,
        log_file=inner.log_file,
        activity_file=inner.activity_file,
        app_env={**inner.app_env, "TEST_APP_IMPORT": "javia_probe,httpx"},
        stop_timeout_seconds=5.0,
        poll_seconds=0.02,
    )
    return device


class Recorder:
    """subprocess.run that remembers the commands it ran, and what the app ran meanwhile."""

    def __init__(self, device: Device | None = None) -> None:
        self.calls: list[list[str]] = []
        self.device = device
        self.running_meanwhile: list[str | None] = []

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        self.calls.append([str(part) for part in argv])
        if self.device is not None:
            status = self.device.app_status()
            active = self.device.service.is_active()
            self.running_meanwhile.append(status["version"] if status and active else None)
        return subprocess.run(argv, check=kwargs.pop("check", False), **kwargs)

    def pip_runs(self) -> int:
        return sum("pip" in call for call in self.calls)

    def venv_runs(self) -> int:
        return sum("venv" in call for call in self.calls)


def _envs(device: Device, wheels: Path, runner: Recorder | None = None) -> PythonEnvironments:
    return PythonEnvironments(
        device.paths.envs_dir,
        pip_args=("--no-index", "--find-links", str(wheels)),
        runner=runner or Recorder(),
    )


def _install(device: Device, signer: Signer, package: Any, envs: PythonEnvironments, **kw: Any):
    installer = make_installer(device, signer, python_envs=envs, **kw)
    return installer.install_from_directory(package.directory)


def _env_of(device: Device, version: str) -> Path:
    return (device.paths.release_dir(Version.parse(version)) / ENV_LINK_NAME).resolve()


def test_requirements_are_installed_into_the_releases_own_isolated_environment(
    env_device: Device, signer: Signer, make_package: PackageFactory, wheels: Path
) -> None:
    package = make_package("v1.0.0", extra_files={"requirements.txt": b"javia-probe==1.0\n"})
    outcome = _install(env_device, signer, package, _envs(env_device, wheels))

    assert outcome.result == InstallResult.COMPLETED, outcome
    status = env_device.wait_for_app("v1.0.0")
    env = _env_of(env_device, "v1.0.0")
    assert env.parent == env_device.paths.envs_dir
    assert (env / COMPLETE_MARKER).is_file()
    assert status["javia_python"] == str(env / "bin" / "python")
    assert Path(status["prefix"]).resolve() == env
    assert status["imports"]["javia_probe"] == "1.0"
    # No system or agent site-packages leak in: the agent's own httpx is invisible.
    assert status["imports"]["httpx"] is None


def test_unchanged_requirements_reuse_the_environment_and_changed_ones_get_a_new_one(
    env_device: Device, signer: Signer, make_package: PackageFactory, wheels: Path
) -> None:
    runner = Recorder(env_device)
    envs = _envs(env_device, wheels, runner)
    one = {"requirements.txt": b"javia-probe==1.0\n"}
    two = {"requirements.txt": b"javia-probe==2.0\n"}

    assert _install(env_device, signer, make_package("v1.0.0", extra_files=one), envs).result == (
        InstallResult.COMPLETED
    )
    first_env = _env_of(env_device, "v1.0.0")
    assert (runner.venv_runs(), runner.pip_runs()) == (1, 1)

    assert _install(env_device, signer, make_package("v1.1.0", extra_files=one), envs).result == (
        InstallResult.COMPLETED
    )
    assert (runner.venv_runs(), runner.pip_runs()) == (1, 1)  # reused: nothing ran
    assert _env_of(env_device, "v1.1.0") == first_env
    status = env_device.wait_for_app("v1.1.0")
    assert status["imports"]["javia_probe"] == "1.0"  # the shared env works from the new release

    assert _install(env_device, signer, make_package("v1.2.0", extra_files=two), envs).result == (
        InstallResult.COMPLETED
    )
    second_env = _env_of(env_device, "v1.2.0")
    assert second_env != first_env and (runner.venv_runs(), runner.pip_runs()) == (2, 2)
    # The environment was built while the old release kept running (staging, not downtime).
    assert runner.running_meanwhile[-2:] == ["v1.1.0", "v1.1.0"]
    assert env_device.wait_for_app("v1.2.0")["imports"]["javia_probe"] == "2.0"
    # v1.1.0 is kept for rollback, and so is the env it links to.
    assert sorted(p.name for p in env_device.paths.envs_dir.iterdir()) == sorted(
        [first_env.name, second_env.name]
    )

    assert _install(env_device, signer, make_package("v1.3.0", extra_files=two), envs).result == (
        InstallResult.COMPLETED
    )
    # v1.1.0 was pruned; nothing links to the first env any more.
    assert sorted(p.name for p in env_device.paths.releases_dir.iterdir()) == ["v1.2.0", "v1.3.0"]
    assert [p.name for p in env_device.paths.envs_dir.iterdir()] == [second_env.name]


def test_a_failing_pip_install_fails_before_the_switch_and_leaves_no_env(
    env_device: Device, signer: Signer, make_package: PackageFactory, wheels: Path
) -> None:
    envs = _envs(env_device, wheels)
    assert _install(env_device, signer, make_package("v1.0.0"), envs).result == (
        InstallResult.COMPLETED
    )
    old_pid = env_device.wait_for_app("v1.0.0")["pid"]
    broken = make_package("v1.1.0", extra_files={"requirements.txt": b"javia-absent==9.9\n"})

    outcome = _install(env_device, signer, broken, envs)

    assert outcome.result == InstallResult.FAILED
    assert "installing requirements.txt failed" in (outcome.reason or "")
    assert "javia-absent" in (outcome.reason or "")
    assert env_device.current() == "v1.0.0"
    assert env_device.wait_for_app("v1.0.0")["pid"] == old_pid  # never stopped
    assert not env_device.paths.release_dir(Version.parse("v1.1.0")).exists()
    assert not any(env_device.paths.envs_dir.iterdir())


def test_a_half_built_environment_left_by_a_power_cut_is_built_again(
    env_device: Device, signer: Signer, make_package: PackageFactory, wheels: Path
) -> None:
    envs = _envs(env_device, wheels)
    requirements = b"javia-probe==1.0\n"
    half = env_device.paths.envs_dir / envs.key(requirements)
    (half / "lib").mkdir(parents=True)
    (half / "lib" / "half-written.py").write_text("power cut")  # no completion marker

    package = make_package("v1.0.0", extra_files={"requirements.txt": requirements})
    assert _install(env_device, signer, package, envs).result == InstallResult.COMPLETED

    assert not (half / "lib" / "half-written.py").exists()
    assert (half / COMPLETE_MARKER).is_file()
    assert env_device.wait_for_app("v1.0.0")["imports"]["javia_probe"] == "1.0"


def test_stray_environments_are_removed_at_start_up(
    env_device: Device, signer: Signer, make_package: PackageFactory, wheels: Path
) -> None:
    envs = _envs(env_device, wheels)
    package = make_package("v1.0.0", extra_files={"requirements.txt": b"# nothing yet\n"})
    assert _install(env_device, signer, package, envs).result == InstallResult.COMPLETED
    kept = _env_of(env_device, "v1.0.0")
    stray = env_device.paths.envs_dir / ("0" * 64)
    stray.mkdir()

    make_installer(env_device, signer, python_envs=envs).recover()

    assert [p.name for p in env_device.paths.envs_dir.iterdir()] == [kept.name]


def test_a_release_without_requirements_runs_on_the_system_python(
    device: Device, signer: Signer, make_package: PackageFactory, wheels: Path
) -> None:
    assert _install(device, signer, make_package("v1.0.0"), _envs(device, wheels)).result == (
        InstallResult.COMPLETED
    )
    status = device.wait_for_app("v1.0.0")
    assert status["javia_python"] is None and status["python"] == sys.executable
    assert not device.paths.envs_dir.exists()
    assert not (device.paths.release_dir(Version.parse("v1.0.0")) / ENV_LINK_NAME).exists()


def test_an_empty_requirements_file_gives_an_env_without_running_pip(
    env_device: Device, signer: Signer, make_package: PackageFactory, wheels: Path
) -> None:
    runner = Recorder()
    package = make_package("v1.0.0", extra_files={"requirements.txt": b"# none\n\n"})
    assert _install(env_device, signer, package, _envs(env_device, wheels, runner)).result == (
        InstallResult.COMPLETED
    )
    assert (runner.venv_runs(), runner.pip_runs()) == (1, 0)
    status = env_device.wait_for_app("v1.0.0")
    assert status["javia_python"] == str(_env_of(env_device, "v1.0.0") / "bin" / "python")
