"""A hostile server: every field of every answer is refused or bounded, never trusted.

The agent runs against a server that answers what the test (and hypothesis)
chooses: install directives whose version is a path, URLs on other hosts,
ids and sizes out of range, naive or absurd times, unknown update types, a
404/410 in the middle of a download, junk bytes named like a real release, an
update flipped from signed ``scheduled`` to ``instant``, a rotated device token.
The device must never write or delete outside its own directories (a sentinel
tree beside the install root and a fake keyring are hashed before and after),
must keep its running release untouched, and must keep running.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from javia_agent.activity import IdleTracker
from javia_agent.agent import Agent
from javia_agent.client import DeviceClient
from javia_agent.clock import Clock
from javia_agent.config import AgentConfig, AgentPaths
from javia_agent.errors import AgentError
from javia_agent.installer import Installer, InstallResult
from javia_agent.outbox import Outbox
from javia_agent.state import StateStore, UpdateState
from javia_agent.transport import RetryPolicy
from javia_core.models import InstallDirective, UpdateStatus, UpdateType
from javia_core.scheduling import bound_by_signed_type, plan_install, window_offset_seconds
from javia_core.versioning import Version
from javia_updates.packaging import BuiltPackage, build_package

from .helpers import (
    APP_SOURCE,
    NOW,
    Device,
    FileServer,
    PackageFactory,
    Signer,
    make_installer,
    serve_package,
)

HOST = "updates.example.org"
DEVICE = uuid.UUID("00000000-0000-0000-0000-0000000000b1")
# 12:00 UTC: far from the 02:00 maintenance window of a device in UTC.
SERVER_TIME = datetime(2031, 3, 4, 12, 0, tzinfo=UTC)


def _tree_digest(root: Path) -> dict[str, str]:
    """Every entry under ``root``: file SHA-256, link target or "dir" (links not followed)."""
    result: dict[str, str] = {}
    for directory, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(directory, name)
            relative = str(path.relative_to(root))
            if path.is_symlink():
                result[relative] = "link:" + os.readlink(path)
            elif path.is_dir():
                result[relative] = "dir"
            else:
                result[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return result


class NoService:
    """The application service, without a process: the hostile tests never switch."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def is_active(self) -> bool:
        return False  # a release that got installed fails its health check: rolled back

    def start(self) -> None:
        self.calls.append("start")

    def stop(self) -> None:
        self.calls.append("stop")


@dataclass
class HostileApi:
    """The device API as an httpx MockTransport handler; answers what the test sets."""

    heartbeat: Callable[[], Any]
    objects: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    requests: list[httpx.URL] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url)
        path = request.url.path
        if path.endswith("/heartbeat"):
            body = self.heartbeat()
            if isinstance(body, bytes):
                return httpx.Response(200, content=body)
            return httpx.Response(200, json=body)
        if path.endswith("/status"):
            self.reports.append(json.loads(request.content))
            return httpx.Response(
                200,
                json={
                    "update_id": int(path.split("/")[-2]),
                    "device_uuid": str(DEVICE),
                    "status": "downloading",
                    "changed": True,
                },
            )
        status, body = self.objects.get(path, (404, b'{"detail": "no such object"}'))
        headers = {"Content-Length": str(len(body))}
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))


@dataclass
class World:
    """A device's directories beside a sentinel tree and a fake keyring."""

    root: Path
    paths: AgentPaths
    sentinel: Path
    keys: Path

    @classmethod
    def create(cls, root: Path) -> World:
        paths = AgentPaths(
            install_root=root / "app", state_dir=root / "var", activity_file=root / "var" / "a"
        )
        release = paths.releases_dir / "v1.0.0"
        release.mkdir(parents=True)
        (release / "app.py").write_text("print('running')\n")
        (release / "VERSION").write_text("v1.0.0\n")
        os.symlink(Path("releases") / "v1.0.0", paths.current_link)
        paths.state_dir.mkdir()
        sentinel = root / "outside"
        (sentinel / "deep" / "er").mkdir(parents=True)
        (sentinel / "precious.txt").write_text("must survive\n")
        (sentinel / "deep" / "er" / "data.bin").write_bytes(os.urandom(64))
        keys = root / "etc" / "javia" / "keys"
        keys.mkdir(parents=True)
        (keys / "operator.pub").write_text("-----BEGIN PUBLIC KEY-----\nx\n")
        return cls(root, paths, sentinel, keys)

    def untouched(self) -> dict[str, Any]:
        """What must never change: the sentinel, the keys and the running release."""
        return {
            "outside": _tree_digest(self.sentinel),
            "keys": _tree_digest(self.keys),
            "release": _tree_digest(self.paths.releases_dir / "v1.0.0"),
            "current": os.readlink(self.paths.current_link),
            "top": sorted(entry.name for entry in self.root.iterdir()),
        }


def _agent(
    world: World,
    api: HostileApi,
    signer: Signer,
    *,
    settings: dict[str, Any] | None = None,
    **client: Any,
) -> Agent:
    config = AgentConfig(
        server_url=f"https://{HOST}",
        device_uuid=DEVICE,
        install_root=world.paths.install_root,
        state_dir=world.paths.state_dir,
        activity_file=world.paths.activity_file,
        heartbeat_jitter=0.0,
        **(settings or {}),
    )
    http = DeviceClient(
        config.server_url,
        device_uuid=DEVICE,
        token="device-token",
        transport=httpx.MockTransport(api),
        retry=RetryPolicy(attempts=1, base_delay_seconds=0.0, max_delay_seconds=0.0),
        sleep=lambda seconds: None,
        **client,
    )
    outbox = Outbox(config.paths.outbox_dir)
    installer = Installer(
        paths=config.paths,
        service=NoService(),  # type: ignore[arg-type]
        keyring=signer.keyring,
        client=http,
        reporter=lambda update_id, status, message, **_: None,
        health_seconds=0.0,
    )
    monotonic = [100.0]
    agent = Agent(
        config,
        client=http,
        installer=installer,
        outbox=outbox,
        idle=IdleTracker(config.paths.activity_file, monotonic=lambda: monotonic[0]),
        clock=Clock(
            monotonic=lambda: monotonic[0],
            sleep=lambda s: None,
            wall=lambda: SERVER_TIME,
        ),
        rng=random.Random(1),
        metadata=dict,
    )
    agent.fake_time = monotonic  # type: ignore[attr-defined]
    return agent


# -- 1. every field of the directive, fuzzed -----------------------------------------

HOSTILE_VERSIONS = [
    "../../outside",
    "v1.0.0/../../outside",
    "v2.0.0/../../../outside",
    "../../etc/javia/keys",
    "/",
    "/etc/javia/keys",
    "..",
    ".",
    "",
    "v1.0.0",  # the running release itself
    "v1.1.0",
    "v1.1.0\x00",
    "v1.1.0/",
    "ｖ1.1.0",
    "v١.1.0",
    " v1.1.0",
    "v" + "9" * 400 + ".0.0",
    "v1.1.0" + "/x" * 2000,
]
HOSTILE_URLS = [
    "https://evil.example/api/v1/updates/7/manifest",
    "//evil.example/api/v1/updates/7/manifest",
    "http://updates.example.org/api/v1/updates/7/manifest",
    "file:///etc/passwd",
    "/api/v1/updates/7/../../../../outside",
    "/api/v1/%2e%2e/%2e%2e/x",
    "/api/v1/updates/7/manifest?next=https://evil.example",
    "api/v1/updates/7/manifest",
    "/api/v1/updates/7\\..\\manifest",
    "/" + "a" * 5000,
]
TIMES = [
    SERVER_TIME.isoformat(),
    "2031-03-04T12:00:00",  # naive
    "9999-12-31T23:59:59+00:00",
    "0001-01-01T00:00:00+00:00",
    "yesterday",
    "2031-03-04T12:00:00-23:59",
]


def _paths(update_id: object) -> dict[str, str]:
    base = f"/api/v1/updates/{update_id}"
    return {
        "manifest_url": f"{base}/manifest",
        "signature_url": f"{base}/signature",
        "download_url": f"{base}/download",
    }


#: Numbers in the wrong JSON type: ``true`` is not 1, ``"227"`` is not 227 (refused).
LOOSE_NUMBERS: list[Any] = [True, False, "227", "1", 227.0, 1.0, "0x1"]
#: Fields that are JSON integers, strictly.
INTEGER_FIELDS = ("update_id", "size", "idle_seconds_required")


def _loose(value: object) -> bool:
    """Whether ``value`` is a number in the wrong JSON type (a bool, a string, a float)."""
    return isinstance(value, (bool, str, float))


#: Per field, values a hostile server may send (some valid, most not).
HOSTILE_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "update_id": st.one_of(
        st.sampled_from([0, -1, True, 2**63, "7", 7.5, None, *LOOSE_NUMBERS]),
        st.integers(min_value=-(2**70), max_value=2**70),
    ),
    "version": st.one_of(st.sampled_from(HOSTILE_VERSIONS), st.text(max_size=40)),
    "update_type": st.sampled_from(["urgent", "scheduled", "INSTANT", "reboot", "", None]),
    "status": st.sampled_from(["downloading", "completed", "bogus", None]),
    "install_at": st.sampled_from(TIMES),
    "window_end": st.sampled_from(TIMES),
    "idle_seconds_required": st.one_of(
        st.sampled_from(LOOSE_NUMBERS), st.integers(min_value=-(2**40), max_value=2**40)
    ),
    "size": st.one_of(
        st.sampled_from([-1, 0, 2**40 + 1, 2**70, "big", *LOOSE_NUMBERS]),
        st.integers(min_value=-(2**70)),
    ),
    "manifest_url": st.sampled_from(HOSTILE_URLS),
    "signature_url": st.sampled_from(HOSTILE_URLS),
    "download_url": st.sampled_from(HOSTILE_URLS),
    "extra": st.text(max_size=10),
}


@st.composite
def directives(draw: st.DrawFn, size: int) -> dict[str, Any]:
    """A directive for a real v1.1.0 package with one to three fields made hostile."""
    fields: dict[str, Any] = {
        "update_id": 7,
        "version": "v1.1.0",
        "update_type": "instant",
        "status": "pending",
        "install_at": SERVER_TIME.isoformat(),
        "size": size,
        **_paths(7),
    }
    names = draw(st.lists(st.sampled_from(sorted(HOSTILE_FIELDS)), min_size=1, max_size=3))
    for name in names:
        fields[name] = draw(HOSTILE_FIELDS[name])
    if "update_id" in names and not any(name.endswith("_url") for name in names):
        fields.update(_paths(fields["update_id"]))
    return fields


#: What the server answers for the package objects: gone, junk, or a real signed package.
answers = st.sampled_from(["404", "410", "junk", "real"])


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), answer=answers, interval=st.sampled_from([300, 300, 0, -5, 1e308, "x"]))
def test_no_directive_makes_the_agent_touch_anything_outside_its_own_directories(
    data: st.DataObject,
    answer: str,
    interval: object,
    signer: Signer,
    make_package: PackageFactory,
) -> None:
    package = make_package("v1.1.0")
    directive = data.draw(directives(package.manifest.archive.size))
    fields = directive
    with tempfile.TemporaryDirectory() as temporary:
        world = World.create(Path(temporary))
        before = world.untouched()
        api = HostileApi(
            heartbeat=lambda: {
                "server_time": SERVER_TIME.isoformat(),
                "heartbeat_interval_seconds": interval,
                "update": directive,
            }
        )
        base = f"/api/v1/updates/{fields['update_id']}"
        if answer in ("404", "410"):
            for name in ("manifest", "signature", "download"):
                api.objects[f"{base}/{name}"] = (int(answer), b'{"detail": "gone"}')
        elif answer == "junk":
            for name in ("manifest", "signature", "download"):
                api.objects[f"{base}/{name}"] = (200, b"\x00junk" * 20)
        else:
            api.objects[f"{base}/manifest"] = (200, package.manifest_bytes)
            api.objects[f"{base}/signature"] = (200, package.signature_bytes)
            api.objects[f"{base}/download"] = (200, package.payload_path.read_bytes())
        agent = _agent(world, api, signer)
        for _ in range(2):  # a second cycle runs the recovery and clean-up paths again
            with contextlib.suppress(
                AgentError
            ):  # a server fault: run_forever logs it and backs off
                agent.run_once()
            agent.installer.recover()

        assert world.untouched() == before
        assert all(url.host == HOST for url in api.requests), api.requests
        if any(_loose(fields.get(name)) for name in INTEGER_FIELDS) or isinstance(
            interval, (bool, str)
        ):
            # A number in the wrong type refuses the whole answer: nothing is fetched.
            assert all(url.path.endswith("/heartbeat") for url in api.requests), api.requests
        state = StateStore(world.paths.state_file).load()
        assert all(Version.is_valid(name) for name in state.failed_versions)
        for entry in world.paths.releases_dir.iterdir():
            assert Version.is_valid(entry.name), entry


def test_a_state_file_naming_a_path_is_never_turned_into_one(
    tmp_path: Path, signer: Signer
) -> None:
    """An older agent may have saved a hostile version; recovery must not delete by it."""
    world = World.create(tmp_path)
    before = world.untouched()
    for version in ("../../outside", "/etc/javia/keys", "v1.0.0/../../outside"):
        world.paths.state_file.write_text(
            json.dumps(
                {
                    "current_version": "v1.0.0",
                    "update": {"update_id": 3, "version": version, "state": "staging"},
                    "failed_versions": [version, "v0.9.0"],
                }
            )
        )
        api = HostileApi(heartbeat=lambda: b"{}")
        agent = _agent(world, api, signer)
        agent.installer.recover()
        agent.installer.abandon_pending("withdrawn")
        state = StateStore(world.paths.state_file).load()
        assert state.update is None and state.failed_versions == ["v0.9.0"]
    assert world.untouched() == before


def test_release_directories_come_from_parsed_versions_only(tmp_path: Path) -> None:
    paths = AgentPaths(tmp_path / "app", tmp_path / "var", tmp_path / "a")
    assert paths.release_dir(Version.parse("v1.2.3")) == paths.releases_dir / "v1.2.3"
    with pytest.raises(TypeError):
        paths.release_dir("../../outside")  # type: ignore[arg-type]
    for bad in (0, -1, True, "7", 2**63):
        with pytest.raises(ValueError):
            paths.download_dir(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"server_time": "2031-03-04T12:00:00", "heartbeat_interval_seconds": 300}',
        b'{"server_time": "2031-03-04T12:00:00Z", "heartbeat_interval_seconds": "NaN"}',
        b'{"server_time": "2031-03-04T12:00:00Z", "heartbeat_interval_seconds": 1e9}',
        b'{"server_time": "9999-12-31T23:59:59Z", "heartbeat_interval_seconds": 300}',
        b" " * (2 * 1024 * 1024),
    ],
)
def test_a_malformed_heartbeat_answer_is_a_named_server_fault_and_changes_nothing(
    tmp_path: Path, signer: Signer, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    world = World.create(tmp_path)
    before = world.untouched()
    agent = _agent(world, HostileApi(heartbeat=lambda: body), signer)
    with pytest.raises(AgentError, match="server fault"):
        agent.run_once()
    assert agent.interval_seconds == agent.config.heartbeat_interval_seconds
    assert world.untouched() == before


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("update_id", True),
        ("update_id", "7"),
        ("update_id", 7.0),
        ("size", "227"),
        ("size", True),
        ("size", 227.0),
        ("idle_seconds_required", "0"),
        ("idle_seconds_required", False),
        ("heartbeat_interval_seconds", "300"),
        ("heartbeat_interval_seconds", True),
    ],
)
def test_a_number_in_the_wrong_json_type_is_refused_not_converted(
    tmp_path: Path, signer: Signer, name: str, value: object
) -> None:
    """``true`` is not the id 1 and ``"227"`` not the size 227: the answer is a server fault."""
    world = World.create(tmp_path)
    fields: dict[str, Any] = {
        "update_id": 7,
        "version": "v1.1.0",
        "update_type": "urgent",
        "status": "pending",
        "install_at": SERVER_TIME.isoformat(),
        "idle_seconds_required": 0,
        "size": 227,
        **_paths(7),
    }
    body: dict[str, Any] = {
        "server_time": SERVER_TIME.isoformat(),
        "heartbeat_interval_seconds": 300,
        "update": fields,
    }
    if name == "heartbeat_interval_seconds":
        body[name] = value
    else:
        fields[name] = value
    api = HostileApi(heartbeat=lambda: body)
    agent = _agent(world, api, signer)
    with pytest.raises(AgentError, match=f"server fault.*{name}"):
        agent.run_once()
    assert [url.path for url in api.requests] == [f"/api/v1/devices/{DEVICE}/heartbeat"]
    assert agent.interval_seconds == agent.config.heartbeat_interval_seconds


# -- 2. only a verified package may mark a version failed ------------------------------


def _install_initial(device: Device, signer: Signer, make_package: PackageFactory) -> None:
    outcome = make_installer(device, signer).install_from_directory(
        make_package("v1.0.0").directory
    )
    assert outcome.result == InstallResult.COMPLETED, outcome
    device.wait_for_app("v1.0.0")


def _client(server: FileServer) -> DeviceClient:
    return DeviceClient(server.url, device_uuid=DEVICE, token="device-token")


@pytest.mark.parametrize("junk", ["manifest", "signature", "payload", "oversized"])
def test_junk_named_like_a_release_never_blocks_the_real_signed_release(
    junk: str,
    device: Device,
    signer: Signer,
    other_signer: Signer,
    make_package: PackageFactory,
    file_server: FileServer,
) -> None:
    _install_initial(device, signer, make_package)
    real = make_package("v1.1.0")
    fields = serve_package(file_server, 21, real)
    directive = InstallDirective.model_validate(fields)
    base = "/api/v1/updates/21"
    if junk == "manifest":  # a manifest of another version, validly signed
        other = make_package("v1.2.0")
        file_server.routes[f"{base}/manifest"].data = other.manifest_bytes
        file_server.routes[f"{base}/signature"].data = other.signature_bytes
    elif junk == "signature":  # signed by a key the device does not trust
        forged = make_package("v1.1.0", key=other_signer.private_key)
        file_server.routes[f"{base}/manifest"].data = forged.manifest_bytes
        file_server.routes[f"{base}/signature"].data = forged.signature_bytes
    elif junk == "payload":  # same size, other bytes
        file_server.routes[f"{base}/download"].data = b"\x00" * real.manifest.archive.size
    else:  # more bytes than signed
        file_server.routes[f"{base}/download"].data = real.payload_path.read_bytes() + b"x" * 10
    with _client(file_server) as client:
        installer = make_installer(device, signer, client=client)
        first = installer.install(directive)
        assert first.result == InstallResult.SERVER_FAULT, first
        assert "server fault" in (first.reason or "")
        assert StateStore(device.paths.state_file).load().failed_versions == []
        assert UpdateStatus.FAILED not in device.statuses()
        assert device.current() == "v1.0.0"
        # The server is repaired: the real signed v1.1.0 installs.
        serve_package(file_server, 21, real)
        second = installer.install(directive)
    assert second.result == InstallResult.COMPLETED, second
    assert device.current() == "v1.1.0"
    device.wait_for_app("v1.1.0")


def test_a_server_fault_backs_off_longer_each_time(tmp_path: Path, signer: Signer) -> None:
    world = World.create(tmp_path)
    fields = {
        "update_id": 5,
        "version": "v1.1.0",
        "update_type": "scheduled",
        "status": "pending",
        "install_at": (SERVER_TIME - timedelta(minutes=1)).isoformat(),
        "window_end": (SERVER_TIME + timedelta(hours=1)).isoformat(),
        "size": 10,
        **_paths(5),
    }
    api = HostileApi(
        heartbeat=lambda: {
            "server_time": SERVER_TIME.isoformat(),
            "heartbeat_interval_seconds": 86_400,
            "update": fields,
        }
    )
    for name in ("manifest", "signature"):
        api.objects[f"/api/v1/updates/5/{name}"] = (200, b"junk")
    agent = _agent(world, api, signer)
    waits = []
    for _ in range(4):
        result = agent.run_once()
        assert result.outcome is not None and result.outcome.result == InstallResult.SERVER_FAULT
        waits.append(result.sleep_seconds)
        agent.fake_time[0] += result.sleep_seconds  # type: ignore[attr-defined]
    assert waits == sorted(waits) and waits[-1] > 2 * waits[0]
    manifests = [url for url in api.requests if url.path.endswith("/manifest")]
    assert len(manifests) == 4  # one try per backoff, never in between
    assert all("server fault" in report.get("error_message", "") for report in api.reports)


# -- 3. a 404/410 in the middle of a download ------------------------------------------


@pytest.mark.parametrize("status", [404, 410])
def test_an_update_gone_mid_download_is_abandoned_without_crashing(
    status: int,
    device: Device,
    signer: Signer,
    make_package: PackageFactory,
    file_server: FileServer,
) -> None:
    _install_initial(device, signer, make_package)
    package = make_package("v1.1.0")
    size = package.manifest.archive.size
    directive = InstallDirective.model_validate(
        serve_package(file_server, 31, package, cut_after=size // 2)
    )
    retry = RetryPolicy(attempts=1, base_delay_seconds=0.0, max_delay_seconds=0.0)
    with DeviceClient(file_server.url, device_uuid=DEVICE, token="t", retry=retry) as client:
        installer = make_installer(device, signer, client=client)
        first = installer.install(directive)
        assert first.result == InstallResult.RETRY_LATER, first
        partial = device.paths.download_dir(31) / "payload.tar.gz.partial"
        assert 0 < partial.stat().st_size < size
        file_server.routes["/api/v1/updates/31/download"].status = status  # withdrawn
        gone = installer.install(directive)

    assert gone.result == InstallResult.ABANDONED, gone
    assert str(status) in (gone.reason or "")
    assert not device.paths.download_dir(31).exists()
    assert StateStore(device.paths.state_file).load().update is None
    assert device.current() == "v1.0.0"
    # The second attempt was a resume (Range) that the server answered with 404/410.
    assert any(path.endswith("/download") and header for path, header in file_server.requests)


# -- 4. the signed update type bounds the server's ---------------------------------------


@pytest.fixture(scope="module")
def scheduled_package(tmp_path_factory: pytest.TempPathFactory, signer: Signer) -> BuiltPackage:
    app = tmp_path_factory.mktemp("scheduled-app")
    (app / "app.py").write_text(APP_SOURCE)
    (app / "VERSION").write_text("v1.1.0\n")
    return build_package(
        app,
        tmp_path_factory.mktemp("scheduled-out") / "pkg",
        version=Version.parse("v1.1.0"),
        update_type=UpdateType.SCHEDULED,
        description="signed scheduled",
        system_packages=(),
        private_key=signer.private_key,
        now=NOW,
        app_name="assistant",
        write_version_file=False,
    )


@pytest.mark.parametrize("offered", ["instant", "urgent"])
def test_a_signed_scheduled_update_offered_as_more_urgent_waits_for_the_window(
    offered: str, tmp_path: Path, signer: Signer, scheduled_package: BuiltPackage
) -> None:
    world = World.create(tmp_path)
    fields = {
        "update_id": 8,
        "version": "v1.1.0",
        "update_type": offered,
        "status": "pending",
        "install_at": (SERVER_TIME - timedelta(hours=2)).isoformat(),
        "idle_seconds_required": 0 if offered == "urgent" else None,
        "size": scheduled_package.manifest.archive.size,
        **_paths(8),
    }
    api = HostileApi(
        heartbeat=lambda: {
            "server_time": SERVER_TIME.isoformat(),
            "heartbeat_interval_seconds": 300,
            "update": fields,
        }
    )
    api.objects["/api/v1/updates/8/manifest"] = (200, scheduled_package.manifest_bytes)
    api.objects["/api/v1/updates/8/signature"] = (200, scheduled_package.signature_bytes)
    api.objects["/api/v1/updates/8/download"] = (200, scheduled_package.payload_path.read_bytes())
    agent = _agent(world, api, signer)
    result = agent.run_once()

    assert result.decision is not None and not result.decision.install_now
    assert "scheduled" in result.decision.reason
    assert result.outcome is None
    assert not any(url.path.endswith("/download") for url in api.requests)
    assert os.readlink(world.paths.current_link) == "releases/v1.0.0"
    # It waits for the device's own next window (02:00 UTC), not the server's "now".
    assert result.decision.wake_at is not None
    assert result.decision.wake_at >= datetime(2031, 3, 5, 2, 0, tzinfo=UTC)
    # One fetch of the signed metadata per update, not one per heartbeat.
    agent.run_once()
    assert sum(url.path.endswith("/manifest") for url in api.requests) == 1


# 22:36 device-local (UTC): far from the 02:00 maintenance window.
EVENING = datetime(2031, 3, 4, 22, 36, tzinfo=UTC)
PIN = {"window_start": "02:00", "window_seconds": 10_800}


def _scheduled_offer(
    package: BuiltPackage,
    install_at: datetime,
    window_end: datetime | None,
    now: datetime | list[datetime],
) -> HostileApi:
    """A server offering the signed-scheduled v1.1.0 as scheduled, with the window it chose.

    ``now``: the server's time, or a one-item list the test may move on.
    """
    clock = now if isinstance(now, list) else [now]
    fields: dict[str, Any] = {
        "update_id": 9,
        "version": "v1.1.0",
        "update_type": "scheduled",
        "status": "pending",
        "install_at": install_at.isoformat(),
        "size": package.manifest.archive.size,
        **_paths(9),
    }
    if window_end is not None:
        fields["window_end"] = window_end.isoformat()
    api = HostileApi(
        heartbeat=lambda: {
            "server_time": clock[0].isoformat(),
            "heartbeat_interval_seconds": 300,
            "update": fields,
        }
    )
    api.objects["/api/v1/updates/9/manifest"] = (200, package.manifest_bytes)
    api.objects["/api/v1/updates/9/signature"] = (200, package.signature_bytes)
    api.objects["/api/v1/updates/9/download"] = (200, package.payload_path.read_bytes())
    return api


def _fetched(api: HostileApi) -> bool:
    return any(url.path.startswith("/api/v1/updates/9/") for url in api.requests)


@pytest.mark.parametrize("pinned", [False, True])
@pytest.mark.parametrize(
    "window_end",
    [datetime(2040, 1, 1, tzinfo=UTC), None, EVENING - timedelta(minutes=2)],
    ids=["years-long", "missing", "ends-before-the-slot"],
)
def test_a_scheduled_offer_whose_window_is_not_a_window_is_a_server_fault(
    window_end: datetime | None,
    pinned: bool,
    tmp_path: Path,
    signer: Signer,
    scheduled_package: BuiltPackage,
) -> None:
    world = World.create(tmp_path)
    api = _scheduled_offer(scheduled_package, EVENING - timedelta(minutes=1), window_end, EVENING)
    agent = _agent(world, api, signer, settings=PIN if pinned else None)
    first = agent.run_once()

    assert first.decision is None and first.outcome is None
    assert not _fetched(api)
    assert first.sleep_seconds >= 30  # backed off, as after any server fault
    assert len(api.reports) == 1 and "server fault" in api.reports[0]["error_message"]
    assert api.reports[0]["status"] == "downloading"  # never failed, never blacklisted
    # Within the backoff: the offer is not looked at again, nor reported again.
    agent.fake_time[0] += first.sleep_seconds / 2  # type: ignore[attr-defined]
    agent.run_once()
    assert len(api.reports) == 1 and not _fetched(api)
    assert StateStore(world.paths.state_file).load().failed_versions == []
    assert os.readlink(world.paths.current_link) == "releases/v1.0.0"


def test_a_chosen_window_at_any_hour_is_followed_without_a_pin_and_ignored_with_one(
    tmp_path: Path, signer: Signer, scheduled_package: BuiltPackage
) -> None:
    """What a compromised server can still do without the pin, and what the pin removes.

    A window opened at 22:36 device-local, 3 h long, is a window in form: the
    window's time of day is the server's setting. Without a pin the device
    follows it; a device that pins its own window (02:00, 3 h) installs only
    in that one.
    """
    start, end = EVENING - timedelta(minutes=1), EVENING + timedelta(hours=3)
    free = _scheduled_offer(scheduled_package, start, end, EVENING)
    unpinned = _agent(World.create(tmp_path / "free"), free, signer).run_once()
    assert unpinned.decision is not None and unpinned.decision.install_now
    assert _fetched(free) and unpinned.outcome is not None

    server_now = [EVENING]
    pinned_api = _scheduled_offer(scheduled_package, start, end, server_now)
    world = World.create(tmp_path / "pinned")
    # Without staging ahead (lead 0): nothing at all is fetched before its own window.
    agent = _agent(world, pinned_api, signer, settings={**PIN, "staging_lead_seconds": 0})
    waiting = agent.run_once()
    assert waiting.decision is not None and not waiting.decision.install_now
    assert waiting.outcome is None and not _fetched(pinned_api)
    # Its own slot: 02:00 UTC the next night plus the device's offset (first 2 h).
    wake_at = waiting.decision.wake_at
    night = datetime(2031, 3, 5, 2, 0, tzinfo=UTC)
    assert wake_at is not None and night <= wake_at < night + timedelta(hours=2)
    assert wake_at == night + timedelta(seconds=window_offset_seconds(DEVICE, 10_800))

    # In its own window the device installs, whatever window the server names.
    server_now[0] = wake_at + timedelta(seconds=5)
    installing = agent.run_once()
    assert installing.decision is not None and installing.decision.install_now
    assert _fetched(pinned_api) and installing.outcome is not None


def test_a_pinned_device_stages_hours_before_its_own_window_and_only_switches_in_it(
    tmp_path: Path, signer: Signer, scheduled_package: BuiltPackage
) -> None:
    """Staged at 22:36 (the default 6 h lead), installed at its own slot with no download."""
    server_now = [EVENING]
    start, end = EVENING - timedelta(minutes=1), EVENING + timedelta(hours=3)
    api = _scheduled_offer(scheduled_package, start, end, server_now)
    world = World.create(tmp_path)
    agent = _agent(world, api, signer, settings=PIN)

    ahead = agent.run_once()

    assert ahead.decision is not None and not ahead.decision.install_now
    assert ahead.outcome is not None and ahead.outcome.result == InstallResult.STAGED
    assert agent.installer.load_state().state == UpdateState.STAGED
    assert (world.paths.releases_dir / "v1.1.0").is_dir()
    assert agent.installer.current_release() == "v1.0.0"
    downloads = [url for url in api.requests if url.path == "/api/v1/updates/9/download"]
    assert len(downloads) == 1

    assert ahead.decision.wake_at is not None
    server_now[0] = ahead.decision.wake_at + timedelta(seconds=5)
    steps: list[str] = []
    agent.installer.checkpoint = steps.append
    installed = agent.run_once()

    # In the window: on from staged to the switch; nothing downloaded, verified or unpacked.
    # (This harness runs no application, so its health check fails and it rolls back.)
    assert installed.outcome is not None
    assert installed.outcome.result in (InstallResult.COMPLETED, InstallResult.ROLLED_BACK)
    assert steps[:3] == ["staged", "switching", "switching.stopped"], steps
    assert not {"downloading", "verifying", "staging", "staging.extracted"} & set(steps)
    assert [url for url in api.requests if url.path == "/api/v1/updates/9/download"] == downloads


def test_an_honest_servers_own_window_works_without_a_pin(
    tmp_path: Path, signer: Signer, scheduled_package: BuiltPackage
) -> None:
    """A fleet whose window starts at 22:00 (JAVIA_WINDOW_START): the device follows it."""
    plan = plan_install(
        UpdateType.SCHEDULED,
        now=EVENING - timedelta(hours=1),
        timezone="UTC",
        device_uuid=DEVICE,
        window_start=time(22, 0),
        window_seconds=10_800,
    )
    assert plan.window_end is not None
    now = max(plan.install_at, EVENING) + timedelta(seconds=1)
    api = _scheduled_offer(scheduled_package, plan.install_at, plan.window_end, now)
    result = _agent(World.create(tmp_path), api, signer).run_once()
    assert result.decision is not None and result.decision.install_now, result.decision
    assert _fetched(api) and result.outcome is not None


def test_an_older_version_offered_is_a_server_fault_backed_off_and_reported_once(
    tmp_path: Path, signer: Signer
) -> None:
    """Running v1.0.0, offered v0.9.0: no retry every second, one report per backoff."""
    world = World.create(tmp_path)
    fields = {
        "update_id": 6,
        "version": "v0.9.0",
        "update_type": "instant",
        "status": "pending",
        "install_at": SERVER_TIME.isoformat(),
        "size": 10,
        **_paths(6),
    }
    api = HostileApi(
        heartbeat=lambda: {
            "server_time": SERVER_TIME.isoformat(),
            "heartbeat_interval_seconds": 300,
            "update": fields,
        }
    )
    agent = _agent(world, api, signer)
    heartbeats = 0
    elapsed = 0.0
    while elapsed < 25:
        result = agent.run_once()
        heartbeats += 1
        assert result.outcome is None and result.sleep_seconds >= 30
        elapsed += result.sleep_seconds
        agent.fake_time[0] += result.sleep_seconds  # type: ignore[attr-defined]
    assert heartbeats == 1
    assert len(api.reports) == 1
    assert api.reports[0]["status"] == "failed"
    assert "older than the running v1.0.0" in api.reports[0]["error_message"]
    # After the backoff it is reported again, once; the backoff grows.
    second = agent.run_once()
    assert len(api.reports) == 2 and second.sleep_seconds >= result.sleep_seconds
    assert not any(url.path.startswith("/api/v1/updates/6/") for url in api.requests)
    assert StateStore(world.paths.state_file).load().failed_versions == []
    assert os.readlink(world.paths.current_link) == "releases/v1.0.0"


@given(
    offered=st.sampled_from(list(UpdateType)),
    signed=st.sampled_from(list(UpdateType)),
    hours=st.integers(min_value=-48, max_value=48),
)
def test_the_bounded_type_is_never_more_urgent_than_the_signed_one(
    offered: UpdateType, signed: UpdateType, hours: int
) -> None:
    rank = {UpdateType.SCHEDULED: 0, UpdateType.URGENT: 1, UpdateType.INSTANT: 2}
    directive = InstallDirective(
        update_id=1,
        version="v1.1.0",
        update_type=offered,
        status=UpdateStatus.PENDING,
        install_at=SERVER_TIME + timedelta(hours=hours),
        size=1,
        manifest_url="/m",
        signature_url="/s",
        download_url="/d",
    )
    bounded = bound_by_signed_type(
        directive, signed, now=SERVER_TIME, timezone="Europe/Berlin", device_uuid=DEVICE
    )
    assert rank[bounded.update_type] <= rank[signed]
    if rank[offered] <= rank[signed]:
        assert bounded is directive  # the server may always make it later
    else:
        assert bounded.update_type is signed


# -- 5. a rotated token is picked up without a restart ------------------------------------


def test_a_token_rotated_while_the_agent_runs_is_read_again_after_a_401(tmp_path: Path) -> None:
    token_file = tmp_path / "device-token"
    token_file.write_text("old-token\n")
    accepted = {"value": "old-token"}
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        seen.append(token)
        if token != accepted["value"]:
            return httpx.Response(401, json={"detail": "invalid device token"})
        if request.url.path.endswith("/heartbeat"):
            return httpx.Response(
                200,
                json={"server_time": SERVER_TIME.isoformat(), "heartbeat_interval_seconds": 300},
            )
        return httpx.Response(200, content=b"manifest")

    from javia_agent.config import read_token
    from javia_core.models import HeartbeatRequest

    with DeviceClient(
        f"https://{HOST}",
        device_uuid=DEVICE,
        token=read_token(token_file),
        transport=httpx.MockTransport(handler),
        token_source=lambda: read_token(token_file),
    ) as client:
        client.heartbeat(HeartbeatRequest())
        # The operator rotates the token and writes the new one to the file.
        accepted["value"] = "new-token"
        token_file.write_text("new-token\n")
        client.heartbeat(HeartbeatRequest())
        assert seen[-2:] == ["old-token", "new-token"]
        accepted["value"] = "newer-token"
        token_file.write_text("newer-token\n")
        assert client.download_manifest("/api/v1/updates/1/manifest") == b"manifest"
        assert seen[-2:] == ["new-token", "newer-token"]
        # A revoked token with no new one in the file: one re-read, no retry loop.
        accepted["value"] = "nobody"
        count = len(seen)
        with pytest.raises(AgentError, match="401"):
            client.heartbeat(HeartbeatRequest())
        assert len(seen) == count + 1


def test_the_agent_wires_its_token_file_into_the_client(tmp_path: Path) -> None:
    token_file = tmp_path / "device-token"
    token_file.write_text("first\n")
    config = AgentConfig(
        server_url=f"https://{HOST}",
        device_uuid=DEVICE,
        token_file=token_file,
        install_root=tmp_path / "app",
        state_dir=tmp_path / "var",
    )
    agent = Agent.from_config(config)
    try:
        token_file.write_text("second\n")
        assert agent.client.session.reload_token()  # what a 401 triggers
        assert agent.client.session.auth() == {"Authorization": "Bearer second"}
    finally:
        agent.client.close()


def test_the_agent_wires_watchdog_stop_and_deadline_into_its_client(tmp_path: Path) -> None:
    token_file = tmp_path / "device-token"
    token_file.write_text("token\n")
    config = AgentConfig(
        server_url=f"https://{HOST}",
        device_uuid=DEVICE,
        token_file=token_file,
        install_root=tmp_path / "app",
        state_dir=tmp_path / "var",
        request_deadline_seconds=45,
    )
    agent = Agent.from_config(config)
    try:
        client = agent.client
        assert client.request_deadline_seconds == 45
        assert client.session.keepalive == agent.notifier.watchdog
        assert client.session.should_stop is not None and not client.session.should_stop()
        agent.stop()
        assert client.session.should_stop()
    finally:
        agent.client.close()
