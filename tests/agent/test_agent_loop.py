"""The agent's main loop: server time, the policy call, sleeping, backoff, metadata."""

from __future__ import annotations

import json
import logging
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from javia_agent.activity import IdleTracker
from javia_agent.agent import Agent
from javia_agent.client import DeviceClient
from javia_agent.clock import Clock
from javia_agent.config import AgentConfig
from javia_agent.installer import InstallOutcome, InstallResult
from javia_agent.inventory import device_metadata
from javia_agent.outbox import Outbox
from javia_agent.state import AgentState
from javia_core.models import InstallDirective, StatusReport, UpdateStatus, UpdateType
from javia_core.scheduling import InstallDecision

UUID = uuid.UUID("00000000-0000-0000-0000-0000000000a1")
SERVER_TIME = datetime(2031, 3, 4, 5, 6, 7, tzinfo=UTC)
# The device's own wall clock is years off (no RTC): it must never be used for decisions.
DEVICE_WALL = datetime(1970, 1, 1, tzinfo=UTC)


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeApi:
    """The device API as an httpx MockTransport handler."""

    directive: dict[str, Any] | None = None
    interval: int = 300
    down: bool = False
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    reports: list[tuple[int, str]] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("network unreachable", request=request)
        path = request.url.path
        if path.endswith("/heartbeat"):
            self.heartbeats.append(json.loads(request.content))
            return httpx.Response(
                200,
                json={
                    "server_time": SERVER_TIME.isoformat(),
                    "heartbeat_interval_seconds": self.interval,
                    "update": self.directive,
                },
            )
        if "/status" in path:
            update_id = int(path.split("/")[-2])
            self.reports.append((update_id, json.loads(request.content)["status"]))
            return httpx.Response(
                200,
                json={
                    "update_id": update_id,
                    "device_uuid": str(UUID),
                    "status": "completed",
                    "changed": True,
                },
            )
        return httpx.Response(404, json={"detail": "not found"})


class FakeService:
    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        return self.active

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False


@dataclass
class FakeInstaller:
    """Stands in for the installer: records what the agent asked it to install."""

    running: str | None = "v1.0.0"
    installs: list[InstallDirective] = field(default_factory=list)
    #: What the agent staged ahead of its install time (:meth:`Installer.prepare`).
    staged: list[InstallDirective] = field(default_factory=list)
    result: InstallResult = InstallResult.COMPLETED
    retry_after: float | None = None
    service: FakeService = field(default_factory=FakeService)
    #: The update type the package's signed manifest names.
    signed_type: UpdateType = UpdateType.INSTANT

    def load_state(self) -> AgentState:
        return AgentState(current_version=self.running)

    def current_release(self) -> str | None:
        return self.running

    def recover(self) -> None:
        return None

    def signed_update_type(self, directive: InstallDirective) -> UpdateType:
        return self.signed_type

    def is_staged(self, directive: InstallDirective) -> bool:
        return any(staged.update_id == directive.update_id for staged in self.staged)

    def prepare(self, directive: InstallDirective) -> InstallOutcome:
        self.staged.append(directive)
        return InstallOutcome(InstallResult.STAGED, str(directive.version))

    def install(self, directive: InstallDirective) -> InstallOutcome:
        self.installs.append(directive)
        if self.result == InstallResult.COMPLETED:
            self.running = str(directive.version)
        return InstallOutcome(
            self.result, str(directive.version), retry_after_seconds=self.retry_after
        )


def _directive(
    update_type: str = "instant", install_at: datetime = SERVER_TIME, **extra: Any
) -> dict[str, Any]:
    return {
        "update_id": 4,
        "version": "v1.1.0",
        "update_type": update_type,
        "status": "pending",
        "install_at": install_at.isoformat(),
        "size": 1234,
        "manifest_url": "/api/v1/updates/4/manifest",
        "signature_url": "/api/v1/updates/4/signature",
        "download_url": "/api/v1/updates/4/download",
        **extra,
    }


@dataclass
class Harness:
    agent: Agent
    api: FakeApi
    installer: FakeInstaller
    clock: FakeMonotonic
    decisions: list[dict[str, Any]]


def _harness(tmp_path: Path, api: FakeApi, decide=None, **config: Any) -> Harness:
    clock = FakeMonotonic()
    settings = AgentConfig(
        server_url="https://updates.example.org",
        device_uuid=UUID,
        install_root=tmp_path / "app",
        state_dir=tmp_path / "var",
        heartbeat_jitter=0.0,
        **config,
    )
    client = DeviceClient(
        settings.server_url, device_uuid=UUID, token="t", transport=httpx.MockTransport(api)
    )
    installer = FakeInstaller()
    decisions: list[dict[str, Any]] = []

    def recording_decide(
        directive: InstallDirective, *, now: datetime, idle_seconds: float | None
    ) -> InstallDecision:
        decisions.append({"now": now, "idle": idle_seconds})
        if decide is not None:
            return decide(directive, now=now, idle_seconds=idle_seconds)
        from javia_core.scheduling import decide_install

        return decide_install(directive, now=now, idle_seconds=idle_seconds)

    agent = Agent(
        settings,
        client=client,
        installer=installer,  # type: ignore[arg-type]
        outbox=Outbox(settings.paths.outbox_dir),
        idle=IdleTracker(settings.paths.activity_file, monotonic=clock),
        clock=Clock(monotonic=clock, sleep=clock.sleep, wall=lambda: DEVICE_WALL),
        rng=random.Random(3),
        decide=recording_decide,
        metadata=lambda: {"hostname": "pi-kitchen"},
    )
    return Harness(agent, api, installer, clock, decisions)


def test_instant_update_is_installed_and_the_next_heartbeat_comes_soon(tmp_path: Path) -> None:
    h = _harness(tmp_path, FakeApi(directive=_directive("instant")))
    result = h.agent.run_once()
    assert [str(d.version) for d in h.installer.installs] == ["v1.1.0"]
    assert result.outcome is not None and result.outcome.result == InstallResult.COMPLETED
    assert result.sleep_seconds <= 1.0  # announce the new version promptly
    assert h.api.heartbeats[0]["current_version"] == "v1.0.0"
    assert h.api.heartbeats[0]["metadata"] == {"hostname": "pi-kitchen"}
    h.agent.run_once()
    assert h.api.heartbeats[1]["current_version"] == "v1.1.0"


def test_decisions_use_the_server_clock_extrapolated_on_the_monotonic_clock(tmp_path: Path) -> None:
    install_at = SERVER_TIME + timedelta(minutes=10)
    h = _harness(
        tmp_path,
        FakeApi(
            directive=_directive(
                "scheduled", install_at, window_end=(install_at + timedelta(hours=3)).isoformat()
            )
        ),
    )
    first = h.agent.run_once()
    assert h.decisions[0]["now"] == SERVER_TIME  # not the device's 1970 wall clock
    assert h.installer.installs == []
    assert first.sleep_seconds == pytest.approx(300.0)  # the heartbeat comes before the 600 s slot
    h.clock.now += 250
    assert h.agent.server_now() == SERVER_TIME + timedelta(seconds=250)


def test_sleep_is_the_earlier_of_heartbeat_and_wake_at(tmp_path: Path) -> None:
    install_at = SERVER_TIME + timedelta(seconds=42)
    api = FakeApi(
        directive=_directive(
            "scheduled", install_at, window_end=(install_at + timedelta(hours=3)).isoformat()
        )
    )
    h = _harness(tmp_path, api)
    result = h.agent.run_once()
    assert result.decision is not None and not result.decision.install_now
    assert result.sleep_seconds == pytest.approx(42.0)

    api.directive = None
    api.interval = 120  # the server's interval wins over the configured 300 s
    assert h.agent.run_once().sleep_seconds == pytest.approx(120.0)


def test_explicit_now_is_passed_to_the_policy(tmp_path: Path) -> None:
    h = _harness(tmp_path, FakeApi(directive=_directive("instant")))
    when = SERVER_TIME + timedelta(days=1)
    h.agent.run_once(now=when)
    assert h.decisions[0]["now"] == when


def test_urgent_update_waits_for_idle_time_measured_by_the_agent(tmp_path: Path) -> None:
    install_at = SERVER_TIME + timedelta(hours=12)
    api = FakeApi(
        directive=_directive(
            "urgent",
            install_at,
            window_end=(install_at + timedelta(hours=3)).isoformat(),
            idle_seconds_required=3600,
        )
    )
    h = _harness(tmp_path, api)
    activity = h.agent.config.paths.activity_file
    activity.parent.mkdir(parents=True, exist_ok=True)
    activity.write_text('{"counter": 1}')
    h.agent.run_once()
    assert h.decisions[-1]["idle"] == 0.0 and h.installer.installs == []
    h.clock.now += 3600
    h.agent.run_once()
    assert h.decisions[-1]["idle"] == 3600.0
    assert [str(d.version) for d in h.installer.installs] == ["v1.1.0"]


def test_queued_reports_are_delivered_on_the_next_heartbeat(tmp_path: Path) -> None:
    api = FakeApi()
    h = _harness(tmp_path, api)
    h.agent.outbox.enqueue(4, StatusReport(status=UpdateStatus.DOWNLOADING))
    h.agent.outbox.enqueue(4, StatusReport(status=UpdateStatus.COMPLETED))
    result = h.agent.run_once()
    assert result.reports_delivered == 2
    assert api.reports == [(4, "downloading"), (4, "completed")]


def test_network_errors_back_off_with_jitter_and_never_end_the_loop(tmp_path: Path) -> None:
    api = FakeApi(down=True)
    h = _harness(tmp_path, api)
    waits: list[float] = []

    def fake_wait(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 5:
            api.down = False
        if len(waits) == 6:
            h.agent.stop()

    h.agent._wait = fake_wait  # type: ignore[method-assign]
    assert h.agent.run_forever() == 0
    assert len(api.heartbeats) == 1
    failures = waits[:5]
    assert all(0 < wait <= 300 for wait in failures)
    assert failures[0] <= 30 and failures[3] > failures[0]  # grows
    assert waits[5] == pytest.approx(300.0)  # back to the normal interval


def test_heartbeat_file_records_the_last_answer_for_status(tmp_path: Path) -> None:
    h = _harness(
        tmp_path,
        FakeApi(
            directive=_directive(
                "scheduled",
                SERVER_TIME + timedelta(hours=1),
                window_end=(SERVER_TIME + timedelta(hours=4)).isoformat(),
            )
        ),
    )
    h.agent.run_once()
    body = json.loads((tmp_path / "var" / "heartbeat.json").read_text())
    assert body["update"]["version"] == "v1.1.0"
    assert body["decision"]["install_now"] is False
    assert datetime.fromisoformat(body["server_time"]) == SERVER_TIME


def test_device_metadata_reads_model_and_os_without_network(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi Zero 2 W Rev 1.0\x00")
    os_release = tmp_path / "os-release"
    os_release.write_text('NAME="Debian"\nPRETTY_NAME="Raspbian GNU/Linux 12 (bookworm)"\n')
    metadata = device_metadata(
        tmp_path, ip_address="192.168.1.20", model_file=model, os_release=os_release
    )
    assert metadata["hardware_model"] == "Raspberry Pi Zero 2 W Rev 1.0"
    assert metadata["os_version"] == "Raspbian GNU/Linux 12 (bookworm)"
    assert metadata["ip_address"] == "192.168.1.20"
    assert metadata["free_disk_bytes"] > 0
    assert {"python_version", "hostname", "agent_version"} <= set(metadata)
    missing = device_metadata(
        tmp_path, ip_address=None, model_file=tmp_path / "no", os_release=tmp_path / "no"
    )
    assert "hardware_model" not in missing and "ip_address" not in missing


def test_a_paused_download_the_server_no_longer_offers_is_dropped_and_its_bytes_freed(
    tmp_path: Path,
) -> None:
    from javia_agent.installer import Installer
    from javia_agent.state import StateStore, UpdateRecord, UpdateState

    h = _harness(tmp_path, FakeApi(directive=None))
    paths = h.agent.config.paths
    installer = Installer(paths=paths, service=FakeService(), keyring=dict)
    store = StateStore(paths.state_file)
    record = UpdateRecord(update_id=4, version="v1.1.0", state=UpdateState.DOWNLOADING)
    store.save(store.load().model_copy(update={"update": record}))
    partial = paths.download_dir(4) / "payload.tar.gz.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"x" * 1000)
    h.agent.installer = installer
    installer_state = installer.load_state()
    assert installer_state.update is not None

    h.agent.run_once()  # the update was superseded or cancelled: no directive any more

    assert StateStore(paths.state_file).load().update is None
    assert not paths.download_dir(4).exists()
    assert h.api.heartbeats[0]["status"] == "updating"


def test_a_busy_server_is_left_alone_for_its_retry_after(tmp_path: Path) -> None:
    calls = {"n": 0}

    def busy_then_fine(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return httpx.Response(503, headers={"Retry-After": "240"}, json={"detail": "busy"})
        return FakeApi()(request)

    h = _harness(tmp_path, FakeApi())
    h.agent.client = DeviceClient(
        "https://updates.example.org",
        device_uuid=UUID,
        token="t",
        transport=httpx.MockTransport(busy_then_fine),
    )
    waits: list[float] = []

    def fake_wait(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            h.agent.stop()

    h.agent._wait = fake_wait  # type: ignore[method-assign]
    assert h.agent.run_forever() == 0
    assert waits[0] >= 240  # not the usual ≤ 30 s first backoff
    assert waits[1] == pytest.approx(300.0)


def test_a_download_paused_by_a_long_retry_after_waits_that_long_before_trying_again(
    tmp_path: Path,
) -> None:
    h = _harness(tmp_path, FakeApi(directive=_directive("instant")))
    h.installer.result = InstallResult.RETRY_LATER
    h.installer.retry_after = 3600.0
    result = h.agent.run_once()
    assert result.outcome is not None and result.outcome.result == InstallResult.RETRY_LATER
    assert result.sleep_seconds == pytest.approx(3600.0)


def _serving(h: Harness, first: httpx.Response) -> list[float]:
    """Answer the first request with ``first``, then as the fake API; the agent's waits."""
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return first if calls["n"] == 1 else h.api(request)

    h.agent.client = DeviceClient(
        "https://updates.example.org",
        device_uuid=UUID,
        token="t",
        transport=httpx.MockTransport(handler),
    )
    waits: list[float] = []

    def fake_wait(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            h.agent.stop()

    h.agent._wait = fake_wait  # type: ignore[method-assign]
    return waits


def test_a_huge_retry_after_on_a_heartbeat_pauses_it_for_an_hour_at_most(tmp_path: Path) -> None:
    h = _harness(tmp_path, FakeApi())
    busy = httpx.Response(
        429, headers={"Retry-After": "99999999999999999999"}, json={"detail": "slow down"}
    )
    waits = _serving(h, busy)
    assert h.agent.run_forever() == 0
    assert waits[0] == pytest.approx(3600.0)
    assert waits[1] == pytest.approx(300.0)
    assert len(h.api.heartbeats) == 1  # the heartbeats go on


def test_a_download_paused_by_a_huge_retry_after_waits_an_hour_at_most(tmp_path: Path) -> None:
    h = _harness(tmp_path, FakeApi(directive=_directive("instant")))
    h.installer.result = InstallResult.RETRY_LATER
    h.installer.retry_after = 1e20
    result = h.agent.run_once()
    assert result.sleep_seconds == pytest.approx(3600.0)


@pytest.mark.parametrize("encoding", ["gzip", "br"])
def test_an_answer_that_does_not_decode_is_backed_off_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, encoding: str
) -> None:
    h = _harness(tmp_path, FakeApi())
    junk = httpx.Response(
        200,
        headers={"Content-Encoding": encoding},
        stream=httpx.ByteStream(b"this is not compressed"),
    )
    waits = _serving(h, junk)
    assert h.agent.run_forever() == 0
    assert "unexpected error" not in caplog.text
    assert "server fault" in caplog.text
    assert 0 < waits[0] <= 30  # the first backoff
    assert len(h.api.heartbeats) == 1


def test_a_recovered_update_without_a_reason_logs_no_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = _harness(tmp_path, FakeApi())
    h.installer.recover = lambda: InstallOutcome(  # type: ignore[method-assign]
        InstallResult.COMPLETED, "v6.0.0"
    )
    with caplog.at_level("INFO", logger="javia_agent.agent"):
        h.agent.start()
    assert "recovered update v6.0.0: completed" in caplog.text
    assert "None" not in caplog.text


# -- staging ahead of the install time (docs/agent.md, "Staged ahead of the window") --


def _scheduled_in(seconds: float) -> dict[str, Any]:
    install_at = SERVER_TIME + timedelta(seconds=seconds)
    return _directive(
        "scheduled", install_at, window_end=(install_at + timedelta(hours=3)).isoformat()
    )


def test_a_scheduled_update_inside_its_lead_is_staged_once_not_installed(tmp_path: Path) -> None:
    h = _harness(tmp_path, FakeApi(directive=_scheduled_in(5 * 3600)))  # default lead: 6 h
    result = h.agent.run_once()

    assert result.outcome is not None and result.outcome.result == InstallResult.STAGED
    assert [str(d.version) for d in h.installer.staged] == ["v1.1.0"] and h.installer.installs == []
    assert result.sleep_seconds == pytest.approx(300.0)  # the heartbeat comes before the window
    h.agent.run_once()
    assert len(h.installer.staged) == 1, "staged once, not at every heartbeat"


def test_before_its_lead_the_agent_wakes_when_the_lead_begins(tmp_path: Path) -> None:
    h = _harness(tmp_path, FakeApi(directive=_scheduled_in(3600 + 100)), staging_lead_seconds=3600)
    result = h.agent.run_once()

    assert h.installer.staged == [] and result.outcome is None
    assert result.sleep_seconds == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("directive", "lead"),
    [(_scheduled_in(60), 0), (_directive("instant"), 21600)],
    ids=["lead 0", "instant"],
)
def test_a_zero_lead_or_an_instant_update_is_never_staged_ahead(
    tmp_path: Path, directive: dict[str, Any], lead: int
) -> None:
    h = _harness(tmp_path, FakeApi(directive=directive), staging_lead_seconds=lead)
    h.agent.run_once()
    assert h.installer.staged == []


def test_a_nonsense_staging_lead_is_refused_by_the_configuration() -> None:
    for lead in (-1, 8 * 86400, float("nan")):
        with pytest.raises(ValueError, match="staging_lead_seconds"):
            AgentConfig(staging_lead_seconds=lead)


def test_a_refused_token_says_revoked_or_rotated_and_what_to_do_once_not_every_retry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = _harness(tmp_path, FakeApi())
    refused = {"detail": "invalid device token: expected 'Authorization: Bearer <token>'"}
    h.agent.client = DeviceClient(
        "https://updates.example.org",
        device_uuid=UUID,
        token="t",
        transport=httpx.MockTransport(lambda request: httpx.Response(401, json=refused)),
    )
    waits: list[float] = []

    def fake_wait(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 4:
            h.agent.stop()

    h.agent._wait = fake_wait  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="javia_agent"):
        assert h.agent.run_forever() == 0
    refusals = [record for record in caplog.records if "invalid device token" in record.message]
    assert len(refusals) == 1, [record.message for record in refusals]
    (line,) = refusals
    assert line.levelno == logging.ERROR
    assert "revoked or rotated on the server" in line.message
    assert f"javia devices rotate-token {UUID}" in line.message
    assert "javia agent register" in line.message
    assert all(0 < wait <= 300 for wait in waits)  # still retrying, backed off
