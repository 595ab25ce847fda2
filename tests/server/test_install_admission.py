"""Install admission (issue 14): a new install begins only while the server keeps up.

The pace is pure and tested on a fake clock; the service tests check what a
device sees (no directive while the server is busy, its row still
``pending``, an install already begun never cut); the request middleware's
count that drives the pace is tested here too. What a fleet sees (deferred
starts, every device completing) is tested with a real server in
tests/test_simulate.py.
"""

from __future__ import annotations

import pytest

from javia_updates.service.admission import InstallAdmission


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admission_for_tests(**options: float) -> tuple[InstallAdmission, FakeClock]:
    clock = FakeClock()
    settings: dict[str, float] = {"limit": 16, "max_loop_lag_seconds": 0.05, **options}
    admission = InstallAdmission(clock=clock, **settings)  # type: ignore[arg-type]
    return admission, clock


def asking(admission: InstallAdmission, clock: FakeClock, seconds: float, per_second: int) -> int:
    """Devices asking evenly, ``per_second`` for ``seconds``: how many were admitted."""
    admitted = 0
    asks = round(seconds * per_second)
    for _ in range(asks):
        clock.now += 1 / per_second
        admitted += admission.admit()
    return admitted


def busy(admission: InstallAdmission, requests: int) -> None:
    for _ in range(requests):
        admission.request_started()


def lagging(admission: InstallAdmission, seconds: float) -> None:
    for _ in range(10):
        admission.observe_loop_lag(seconds)


def test_a_small_fleet_is_never_paced() -> None:
    admission, clock = admission_for_tests()
    assert asking(admission, clock, 0.1, 100) == 10  # the burst: ten at once
    assert asking(admission, clock, 60, 5) == 300


def test_a_crowd_is_admitted_at_a_rate_that_doubles_while_the_server_keeps_up() -> None:
    admission, clock = admission_for_tests(initial_rate_per_second=20)
    first = asking(admission, clock, 1.0, 1000)
    assert first < 60  # the burst and about 20 a second, not the 1,000 asking
    later = [asking(admission, clock, 0.5, 1000) for _ in range(6)]
    assert later == sorted(later) and later[-1] > 4 * later[0]  # slow start
    assert admission.state().refused > 0


def test_a_busy_process_halves_the_pace_then_grows_it_by_a_step() -> None:
    admission, clock = admission_for_tests(initial_rate_per_second=100, step_per_second=2)
    asking(admission, clock, 1.0, 500)
    before = admission.state().rate_per_second
    lagging(admission, 0.2)  # the process is short of CPU: timers fire 200 ms late
    asking(admission, clock, 0.5, 500)
    halved = admission.state().rate_per_second
    assert halved == pytest.approx(before / 2)
    lagging(admission, 0.001)  # caught up (the mean passes the line on the way down)
    asking(admission, clock, 0.5, 500)
    settled = admission.state().rate_per_second
    assert settled <= halved
    asking(admission, clock, 2.0, 500)  # four intervals with devices waiting
    assert admission.state().rate_per_second == pytest.approx(settled + 4 * 2, abs=2.1)


def test_many_requests_in_progress_count_as_busy() -> None:
    admission, clock = admission_for_tests(limit=3, initial_rate_per_second=100)
    asking(admission, clock, 1.0, 500)
    before = admission.state().rate_per_second
    busy(admission, 5)
    asking(admission, clock, 0.6, 500)
    assert admission.state().rate_per_second < before


def test_a_congested_server_still_starts_installs_at_the_floor_rate() -> None:
    admission, clock = admission_for_tests(min_rate_per_second=2)
    lagging(admission, 1.0)
    asking(admission, clock, 20, 100)  # busy for 20 s: the pace fell to the floor
    assert admission.state().rate_per_second == pytest.approx(2)
    assert 15 <= asking(admission, clock, 10, 100) <= 25  # about 2 a second


def test_after_a_calm_spell_the_pace_starts_over() -> None:
    admission, clock = admission_for_tests(initial_rate_per_second=20, calm_seconds=30)
    lagging(admission, 1.0)
    asking(admission, clock, 5, 100)
    assert admission.state().rate_per_second < 20
    lagging(admission, 0.0)
    asking(admission, clock, 40, 1)  # forty quiet seconds, one device a second
    assert admission.state().rate_per_second == pytest.approx(20)


def test_refused_devices_wait_in_line_and_are_woken_at_the_pace() -> None:
    import uuid

    admission, clock = admission_for_tests(initial_rate_per_second=10, min_rate_per_second=10)
    lagging(admission, 1.0)  # busy: the pace stays at 10 a second
    devices = [uuid.UUID(int=n + 1) for n in range(40)]
    admitted = [device for device in devices if admission.admit(device)]
    assert len(admitted) == 10  # the burst
    refused = [device for device in devices if device not in admitted]
    assert admission.state().waiting == 30
    admission.admit(refused[0])  # asking again keeps its place in line
    # Half a second at 10 a second: five, first refused first.
    assert admission.devices_to_wake(0.5) == refused[:5]
    assert admission.devices_to_wake(0.5) == refused[5:10]
    clock.now += 1.0  # ten tokens back: the next one asking is admitted and leaves the line
    assert admission.admit(refused[20])
    assert admission.state().waiting == 19
    assert refused[20] not in admission.devices_to_wake(10.0)
    assert admission.devices_to_wake(0.5) == []


def test_a_line_woken_at_the_pace_grows_the_pace_back_after_a_burst() -> None:
    import uuid

    # A burst of 500 woken devices made the process busy: the pace fell to the floor.
    admission, clock = admission_for_tests(min_rate_per_second=2, step_per_second=2)
    lagging(admission, 1.0)
    devices = [uuid.UUID(int=n + 1) for n in range(500)]
    for _ in range(10):
        clock.now += 0.5
        for device in devices:
            admission.admit(device)
    assert admission.state().rate_per_second == pytest.approx(2)
    lagging(admission, 0.0)  # the burst is over: the process keeps up again
    # Twice a second the line is woken at the pace; each woken device asks once and,
    # the pace being what admits it, is not refused. The line alone must grow the pace.
    seconds = 0.0
    while admission.state().waiting and seconds < 120:
        woken = admission.devices_to_wake(0.5)
        clock.now += 0.5
        seconds += 0.5
        for device in woken:
            admission.admit(device)
    assert admission.state().waiting == 0
    # Growing by 2 a second every half second, the line of 480 empties in 16 s; when
    # only refusals grew the pace, the woken (admitted at the pace) barely moved it: 51.5 s.
    assert seconds < 25, seconds
    assert admission.state().rate_per_second > 40


def test_a_device_admitted_is_admitted_again_while_it_has_not_reported() -> None:
    import uuid

    admission, clock = admission_for_tests(burst=1, initial_rate_per_second=1)
    lagging(admission, 1.0)
    device, other = uuid.UUID(int=1), uuid.UUID(int=2)
    assert admission.admit(device)
    assert not admission.admit(other)  # the one token is gone
    # The same device asks again (another heartbeat on another worker, an
    # update check): the offer does not come and go.
    assert all(admission.admit(device) for _ in range(5))
    clock.now += 121  # long after: it needs a token again like anyone
    others = iter(range(100, 10_000))
    while admission.admit(uuid.UUID(int=next(others))):
        pass  # the tokens that refilled meanwhile go to other devices
    assert not admission.admit(device)


def test_installs_wait_while_the_event_loop_runs_late() -> None:
    admission, clock = admission_for_tests(initial_rate_per_second=50)
    lagging(admission, 0.002)
    assert admission.state().loop_lag_seconds < 0.05
    calm = asking(admission, clock, 1.0, 1000)
    lagging(admission, 0.2)
    assert admission.state().loop_lag_seconds > 0.05
    asking(admission, clock, 1.0, 1000)  # two busy intervals: the pace is halved twice
    late = asking(admission, clock, 1.0, 1000)
    assert late < calm / 2  # fewer devices begin while the loop runs late


def test_a_direct_call_with_nothing_in_progress_is_admitted() -> None:
    assert admission_for_tests()[0].admit()


@pytest.mark.parametrize(("limit", "lag"), [(0, 0.05), (-1, 0.05), (1, 0.0), (1, -1.0)])
def test_nonsense_limits_are_refused(limit: int, lag: float) -> None:
    with pytest.raises(ValueError, match="at least 1|above 0"):
        InstallAdmission(limit=limit, max_loop_lag_seconds=lag)


# --------------------------------------------------------------------------- what a device sees


class Switchable(InstallAdmission):
    """Install admission whose verdict the test sets (``refuse``); it records who asked."""

    def __init__(self) -> None:
        super().__init__(limit=16, max_loop_lag_seconds=0.05, clock=FakeClock())
        self.refuse = False
        self.asked: list[object] = []

    def admit(self, device=None):  # type: ignore[no-untyped-def]
        self.asked.append(device)
        if self.refuse:
            return False
        return super().admit(device)


def test_a_refused_device_gets_no_directive_and_its_row_stays_pending(
    service, clock, register, beat, make_package
):  # type: ignore[no-untyped-def]
    from javia_core.models import StatusReport, UpdateStatus

    admission = Switchable()
    service.install_admission = service._heartbeats.admission = admission
    first, _ = register()
    second, _ = register()
    beat(first)
    beat(second)
    assert admission.asked == []  # nothing to begin: nobody asks
    update = service.publish_update(make_package("v1.1.0", "instant").upload(), now=clock.now)

    # The first device begins while the server keeps up.
    directive = beat(first).update
    assert directive is not None and directive.update_id == update.id
    assert admission.asked == [first.device_uuid]
    service.report_status(
        service.find_device(first.device_uuid),
        update.id,
        StatusReport(status=UpdateStatus.DOWNLOADING),
        now=clock.now,
    )
    # Then the server is busy: the second device is not told yet.
    admission.refuse = True
    answer = beat(second)
    assert admission.asked[-1] == second.device_uuid
    assert answer.update is None
    assert answer.held is None
    assert answer.heartbeat_interval_seconds == 300  # asked again at its usual time
    rows = {row.device_uuid: row.status for row in service.update_devices(update.id).items}
    assert rows[second.device_uuid] is UpdateStatus.PENDING
    # The device already downloading keeps its directive without asking: nothing is cut midway.
    asked = len(admission.asked)
    kept = beat(first).update
    assert kept is not None and kept.update_id == update.id
    assert len(admission.asked) == asked
    # Once the server keeps up again, the second device is offered the update.
    admission.refuse = False
    offered = beat(second).update
    assert offered is not None and offered.update_id == update.id


def test_scheduled_updates_not_yet_due_are_offered_even_while_the_server_is_busy(
    service, clock, register, beat, make_package
):  # type: ignore[no-untyped-def]
    admission = Switchable()
    admission.refuse = True
    service.install_admission = service._heartbeats.admission = admission
    device, _ = register()
    beat(device)
    service.publish_update(make_package("v1.1.0", "scheduled").upload(), now=clock.now)
    directive = beat(device).update
    # Its window (2 AM device-local) is hours away: telling the device costs nothing now.
    assert directive is not None and directive.install_at > clock.now
    assert admission.asked == []


def test_admission_can_be_turned_off(tmp_path, backend) -> None:  # type: ignore[no-untyped-def]
    from javia_updates.service import UpdateService
    from javia_updates.settings import ServerSettings

    settings = ServerSettings(
        api_key="test-admin-key-0123456789",
        data_dir=tmp_path / "data",
        install_admission_requests=0,
    )
    assert UpdateService(backend, settings).install_admission is None


# --------------------------------------------------------------------------- what is counted


@pytest.mark.parametrize(
    ("path", "counted"),
    [
        ("/api/v1/devices/0f0e0d0c-0b0a-0908-0706-050403020100/heartbeat", True),
        ("/api/v1/devices/0f0e0d0c-0b0a-0908-0706-050403020100/updates/3/status", True),
        ("/api/v1/updates/3/manifest", True),
        ("/api/v1/updates/3/download", False),
        ("/api/v1/objects/" + "a" * 64, False),
        ("/api/v1/patches/" + "a" * 64 + "/" + "b" * 64, False),
        ("/api/v1/devices/0f0e0d0c-0b0a-0908-0706-050403020100/wakeup", False),
    ],
)
def test_downloads_and_held_wakeups_are_not_counted_as_work(path: str, counted: bool) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from javia_updates.server.metrics import RequestMetrics

    admission = InstallAdmission(limit=4, max_loop_lag_seconds=0.05)

    async def seen(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(admission.state().in_progress))

    inner = Starlette(routes=[Route("/{rest:path}", seen, methods=["GET", "POST"])])
    with TestClient(RequestMetrics(inner, admission=admission)) as client:
        during = client.get(path).text
    assert during == ("1" if counted else "0")
    assert admission.state().in_progress == 0  # and every request is let go of
