"""Rollouts on the server (docs/rollouts.md), on SQLite and PostgreSQL: phases, the offer gate,
pause/resume/cancel/approve/advance, the automatic halt, post-install regressions, races."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from javia_core.errors import ConflictError
from javia_core.models import (
    ApplicationHealth,
    DeviceRegisterRequest,
    DeviceTagsChange,
    HeartbeatRequest,
    RolloutState,
    StatusReport,
    UpdateStatus,
)
from javia_core.rollouts import RolloutEvent, RolloutPolicy, apply_event, phase_of
from javia_updates.backends.local import LocalBackend
from javia_updates.service import UpdateService
from javia_updates.service.rollouts import rollout_of
from javia_updates.settings import ServerSettings
from shared_helpers import Clock

API_KEY = "rollouts-admin-key-0123456789"
START = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'javia.db'}"
    cluster = request.getfixturevalue("postgres_cluster")
    return str(cluster.create_database(f"javia_{uuid.uuid4().hex[:16]}"))


@pytest.fixture
def fleet_service(database_url: str, tmp_path: Path) -> Iterator[UpdateService]:
    """The service on each database; heartbeats are written before they are answered."""
    settings = ServerSettings(
        api_key=API_KEY,
        data_dir=tmp_path / "data",
        database_url=database_url,
        heartbeat_interval_seconds=60,
        heartbeat_flush_seconds=0,
    )
    backend = LocalBackend.from_settings(settings)
    backend.prepare()
    yield UpdateService(backend, settings)
    backend.close()


class Fleet:
    """Registered devices and helpers around one service and a hand-moved clock."""

    def __init__(self, service: UpdateService, clock: Clock, make_package: Callable[..., Any]):
        self.service, self.clock, self.make_package = service, clock, make_package
        self.devices: list[Any] = []

    def register(self, count: int) -> None:
        for _ in range(count):
            registered = self.service.register_device(DeviceRegisterRequest(), now=self.clock.now)
            self.devices.append(self.service.find_device(registered.device_uuid))
        self.beat_all()

    def publish(self, version: str = "v1.1.0", **policy: Any) -> int:
        update = self.service.publish_update(
            self.make_package(version, "scheduled").upload(),
            now=self.clock.now,
            policy=RolloutPolicy(**policy),
        )
        return update.id

    def beat(self, device: Any, **fields: Any) -> Any:
        fresh = self.service.find_device(device.device_uuid)
        request = HeartbeatRequest(current_version=fields.pop("version", "v1.0.0"), **fields)
        return self.service.heartbeat(fresh, request, now=self.clock.now).update

    def beat_all(self) -> dict[uuid.UUID, Any]:
        return {device.device_uuid: self.beat(device) for device in self.devices}

    def offered(self, version: str = "v1.1.0") -> set[uuid.UUID]:
        return {
            uid
            for uid, directive in self.beat_all().items()
            if directive is not None and str(directive.version) == version
        }

    def report(self, device: Any, update_id: int, status: UpdateStatus) -> None:
        fresh = self.service.find_device(device.device_uuid)
        self.service.report_status(
            fresh, update_id, StatusReport(status=status), now=self.clock.now
        )

    def rollout(self, update_id: int) -> Any:
        return self.service.get_update(update_id, now=self.clock.now).rollout


@pytest.fixture
def fleet(fleet_service: UpdateService, make_package: Callable[..., Any]) -> Fleet:
    return Fleet(fleet_service, Clock(START), make_package)


def test_only_open_phases_get_offers_and_advance_opens_the_next(fleet: Fleet) -> None:
    fleet.register(40)
    update_id = fleet.publish(phases=(25, 100))
    first = {
        d.device_uuid for d in fleet.devices if phase_of(d.device_uuid, "v1.1.0", (25, 100)) == 0
    }
    assert 0 < len(first) < 40
    assert fleet.offered() == first
    view = fleet.rollout(update_id)
    assert (view.state, view.phase, view.phases) == (RolloutState.ACTIVE, 0, [25, 100])
    assert sum(view.phase_counts[0].values()) == len(first)

    fleet.service.rollout_command(update_id, "advance", reason="looks fine", now=fleet.clock.now)
    assert fleet.offered() == {d.device_uuid for d in fleet.devices}
    assert fleet.rollout(update_id).phase == 1


def test_the_published_plan_shows_each_devices_phase_as_the_offer_gate_sees_it(
    fleet: Fleet,
) -> None:
    fleet.register(12)
    canary = fleet.devices[0]
    fleet.service.change_device_tags(
        canary.device_uuid, DeviceTagsChange(add=["canary"]), now=fleet.clock.now
    )
    update_id = fleet.publish(phases=(20, 100))
    plan = {
        entry.device_uuid: entry
        for entry in fleet.service.plan_published(update_id, now=fleet.clock.now)
    }

    offered = fleet.offered()
    assert {uid for uid, entry in plan.items() if entry.phase == 0} == offered
    assert plan[canary.device_uuid].phase == 0
    later = [entry for entry in plan.values() if entry.phase == 1]
    assert later and all(
        entry.reason.startswith("phase 2 of 2, opens after phase 1 soaks") for entry in later
    )
    assert all(
        entry.phase == phase_of(uid, "v1.1.0", (20, 100), canary=uid == canary.device_uuid)
        for uid, entry in plan.items()
    )
    single = fleet.publish("v1.2.0")
    assert all(
        entry.phase is None for entry in fleet.service.plan_published(single, now=fleet.clock.now)
    )


def test_pause_stops_offers_at_the_next_heartbeat_but_installs_in_flight_finish(
    fleet: Fleet,
) -> None:
    fleet.register(3)
    update_id = fleet.publish()
    busy, waiting, _ = fleet.devices
    fleet.beat_all()
    fleet.report(busy, update_id, UpdateStatus.DOWNLOADING)

    out = fleet.service.rollout_command(update_id, "pause", reason="ops", now=fleet.clock.now)
    assert out.rollout is not None and out.rollout.state is RolloutState.PAUSED
    assert fleet.offered() == {busy.device_uuid}  # in flight: keeps its directive
    fleet.report(busy, update_id, UpdateStatus.COMPLETED)

    fleet.service.rollout_command(update_id, "resume", reason=None, now=fleet.clock.now)
    assert waiting.device_uuid in fleet.offered()
    audit = [line.action for line in fleet.service.audit_log().items]
    assert "rollout.pause" in audit and "rollout.resume" in audit


def test_cancel_cancels_every_rows_not_started_and_a_higher_version_still_reaches_them(
    fleet: Fleet,
) -> None:
    fleet.register(3)
    update_id = fleet.publish()
    busy = fleet.devices[0]
    fleet.beat_all()
    fleet.report(busy, update_id, UpdateStatus.INSTALLING)

    out = fleet.service.rollout_command(update_id, "cancel", reason="bad", now=fleet.clock.now)
    assert out.status_counts == {"cancelled": 2, "installing": 1}
    assert fleet.offered() == {busy.device_uuid}
    again = fleet.service.rollout_command(update_id, "cancel", reason=None, now=fleet.clock.now)
    assert again.rollout is not None and again.rollout.state is RolloutState.CANCELLED
    with pytest.raises(ConflictError, match="resume refused: the rollout is cancelled"):
        fleet.service.rollout_command(update_id, "resume", reason=None, now=fleet.clock.now)

    fleet.publish("v1.2.0")
    assert fleet.offered("v1.2.0") == {d.device_uuid for d in fleet.devices[1:]}


def test_failures_reported_halt_the_rollout_within_the_report(fleet: Fleet) -> None:
    fleet.register(6)
    update_id = fleet.publish(halt_failure_rate=50, halt_min_devices=2)
    fleet.beat_all()
    first, second, late = fleet.devices[:3]
    fleet.report(first, update_id, UpdateStatus.FAILED)
    assert fleet.rollout(update_id).state is RolloutState.ACTIVE  # 1 finished < 2
    fleet.report(second, update_id, UpdateStatus.INSTALLING)
    fleet.report(second, update_id, UpdateStatus.ROLLED_BACK)

    view = fleet.rollout(update_id)
    assert view.state is RolloutState.HALTED
    assert view.halt_reason.startswith("2 of 2 finished devices failed")
    assert view.health.exposed.failed == 1 and view.health.exposed.rolled_back == 1
    assert fleet.beat(late) is None  # not started: never starts now
    with pytest.raises(ConflictError, match="is halted"):
        fleet.service.rollout_command(update_id, "resume", reason=None, now=fleet.clock.now)


def test_approval_holds_every_offer_until_approved(fleet: Fleet) -> None:
    fleet.register(2)
    update_id = fleet.publish(require_approval=True)
    assert fleet.rollout(update_id).state is RolloutState.AWAITING_APPROVAL
    assert fleet.offered() == set()
    with pytest.raises(ConflictError, match="has not started"):
        fleet.service.rollout_command(update_id, "pause", reason=None, now=fleet.clock.now)

    fleet.service.rollout_command(update_id, "approve", reason="ok", now=fleet.clock.now)
    assert fleet.offered() == {d.device_uuid for d in fleet.devices}
    # A second operator's approve, racing the first: a no-op, not an error.
    fleet.service.rollout_command(update_id, "approve", reason=None, now=fleet.clock.now)

    other = fleet.publish("v1.2.0")
    with pytest.raises(ConflictError, match="needs no approval"):
        fleet.service.rollout_command(other, "approve", reason=None, now=fleet.clock.now)


def test_the_server_setting_makes_a_type_await_approval(tmp_path: Path, make_package) -> None:  # type: ignore[no-untyped-def]
    settings = ServerSettings(
        api_key=API_KEY, data_dir=tmp_path / "data", approval_required="scheduled,urgent"
    )
    backend = LocalBackend.from_settings(settings)
    backend.prepare()
    try:
        service = UpdateService(backend, settings)
        out = service.publish_update(make_package("v1.1.0", "scheduled").upload(), now=START)
        assert out.rollout is not None and out.rollout.state is RolloutState.AWAITING_APPROVAL
        assert out.rollout.require_approval
    finally:
        backend.close()


def test_a_crashing_application_after_install_is_a_regression_that_halts(fleet: Fleet) -> None:
    fleet.register(2)
    update_id = fleet.publish(halt_min_devices=1, phase_soak_seconds=3600)
    fleet.beat_all()
    crashing, healthy = fleet.devices
    fleet.report(crashing, update_id, UpdateStatus.COMPLETED)
    assert fleet.rollout(update_id).state is RolloutState.ACTIVE

    fleet.clock.advance(seconds=30)
    fleet.beat(crashing, version="v1.1.0", application=ApplicationHealth(restarts=2))
    view = fleet.rollout(update_id)
    assert view.state is RolloutState.HALTED
    assert "regressed after install" in view.halt_reason
    assert view.health.exposed.regressions == 1
    assert sum(view.phase_regressions) == 1  # updates show: a failure in its phase's bar
    (row,) = fleet.service.update_devices(update_id, status=UpdateStatus.COMPLETED).items
    assert row.regressed_at is not None and row.regression_reason
    assert fleet.beat(healthy) is None


def test_a_completed_device_gone_silent_within_the_soak_is_a_regression(fleet: Fleet) -> None:
    fleet.register(2)
    update_id = fleet.publish(halt_min_devices=1, phase_soak_seconds=3600)
    fleet.beat_all()
    silent = fleet.devices[0]
    fleet.report(silent, update_id, UpdateStatus.COMPLETED)
    fleet.clock.advance(seconds=3 * 60 + 1)  # more than 3 heartbeat intervals of 60 s
    fleet.service.evaluate_rollouts(now=fleet.clock.now)
    view = fleet.rollout(update_id)
    assert view.state is RolloutState.HALTED
    assert view.halt_reason.endswith("1 regressed after install")
    regressed = [
        line.details["reason"]
        for line in fleet.service.audit_log().items
        if line.action == "device_update.regressed"
    ]
    assert len(regressed) == 1 and regressed[0].startswith("silent for 3 min")


def test_the_view_counts_phases_with_canaries_and_compares_exposed_with_the_previous_release(
    fleet: Fleet,
) -> None:
    fleet.register(4)
    first = fleet.publish("v1.1.0", phase_soak_seconds=0)
    fleet.beat_all()
    outcomes = [UpdateStatus.COMPLETED, UpdateStatus.FAILED, UpdateStatus.COMPLETED]
    for device, outcome in zip(fleet.devices, outcomes + [UpdateStatus.COMPLETED], strict=True):
        fleet.report(device, first, outcome)
    canary = fleet.devices[3]
    fleet.service.change_device_tags(
        canary.device_uuid, DeviceTagsChange(add=["canary"]), now=fleet.clock.now
    )
    second = fleet.publish("v1.2.0", phases=(1, 100), phase_soak_seconds=3600, halt_min_devices=100)
    fleet.beat_all()
    fleet.report(canary, second, UpdateStatus.COMPLETED)
    fleet.clock.advance(seconds=3 * 60 + 1)  # the first device falls silent: > 3 intervals of 60 s
    for device in fleet.devices[1:]:
        fleet.beat(device)

    view = fleet.rollout(second)
    in_first_phase = sum(
        phase_of(d.device_uuid, "v1.2.0", (1, 100)) == 0 for d in fleet.devices[:3]
    )
    expected_first = {"completed": 1} | ({"pending": in_first_phase} if in_first_phase else {})
    assert view.phase_counts[0] == expected_first
    assert sum(view.phase_counts[1].values()) == 3 - in_first_phase
    exposed, previous = view.health.exposed, view.health.previous
    assert (exposed.devices, exposed.finished, exposed.failed, exposed.silent) == (1, 1, 0, 0)
    assert (previous.devices, previous.finished, previous.failed) == (3, 3, 1)
    assert previous.failure_rate == 33.33 and previous.silent == 1


def test_the_last_finished_device_completes_the_rollout(fleet: Fleet) -> None:
    fleet.register(2)
    update_id = fleet.publish()
    fleet.beat_all()
    for device in fleet.devices:
        fleet.report(device, update_id, UpdateStatus.COMPLETED)
    assert fleet.rollout(update_id).state is RolloutState.COMPLETED
    with pytest.raises(ConflictError, match="is completed: nothing left to pause"):
        fleet.service.rollout_command(update_id, "pause", reason=None, now=fleet.clock.now)


def test_racing_writes_one_wins_and_the_loser_reapplies(fleet: Fleet) -> None:
    fleet.register(1)
    update_id = fleet.publish()
    store = fleet.service.store
    read = store.get_rollout(update_id)
    assert read is not None
    paused, _ = apply_event(rollout_of(read), RolloutEvent.PAUSE)
    won = store.change_rollout(
        update_id, revision=read.revision, rollout=paused, now=START, audit=None
    )
    lost = store.change_rollout(
        update_id, revision=read.revision, rollout=paused, now=START, audit=None
    )
    assert won is not None and won.revision == read.revision + 1
    assert lost is None


def test_two_operators_pausing_at_once_both_succeed_and_one_change_is_audited(
    fleet: Fleet,
) -> None:
    fleet.register(1)
    update_id = fleet.publish()
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def pause() -> None:
        barrier.wait()
        try:
            fleet.service.rollout_command(update_id, "pause", reason="race", now=fleet.clock.now)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=pause) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert fleet.rollout(update_id).state is RolloutState.PAUSED
    audit = [line.action for line in fleet.service.audit_log().items]
    assert audit.count("rollout.pause") == 1


def test_an_empty_first_phase_opens_the_next_at_once(fleet: Fleet) -> None:
    fleet.register(1)
    device = fleet.devices[0].device_uuid
    version = next(
        f"v1.{minor}.0"
        for minor in range(1, 200)
        if phase_of(device, f"v1.{minor}.0", (1, 100)) == 1
    )
    update_id = fleet.publish(version, phases=(1, 100))
    assert fleet.rollout(update_id).phase == 1
    assert fleet.offered(version) == {device}
    assert fleet.clock.now - START < timedelta(seconds=1)


def test_updates_published_before_rollouts_get_an_active_single_phase_rollout(
    database_url: str,
) -> None:
    from sqlalchemy import insert

    from javia_updates.backends.migrations import upgrade
    from javia_updates.backends.schema import build_tables, default_schema
    from javia_updates.backends.sql.engine import make_engine
    from javia_updates.backends.sql.store import SQLStore

    upgrade(database_url, revision="0002")
    engine = make_engine(database_url)
    updates = build_tables(default_schema(engine.dialect.name)).updates
    with engine.begin() as connection:
        connection.execute(
            insert(updates).values(
                version="v1.0.0", version_major=1, version_minor=0, version_patch=0,
                created_at=START, update_type="scheduled", description="", package_url="k",
                requires_system_packages=False, system_packages=[], app="app", key_id="k" * 16,
                archive_size=1, archive_sha256="0" * 64, manifest=b"{}", signature=b"{}",
            )
        )  # fmt: skip
    engine.dispose()
    upgrade(database_url)
    store = SQLStore(make_engine(database_url))
    try:
        (rollout,) = store.list_rollouts().values()
        assert (rollout.state, rollout.phases, rollout.phase_index) == (
            RolloutState.ACTIVE,
            (100,),
            0,
        )
    finally:
        store.close()
