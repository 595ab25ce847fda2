"""scheduling.install_times: a publish's bulk planning gives plan_install's instants."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from javia_core.models import UpdateType
from javia_core.scheduling import install_times, plan_install

ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Pacific/Apia",
]

uuids = st.uuids().flatmap(lambda value: st.sampled_from([value, str(value), str(value).upper()]))


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(list(UpdateType)),
    seconds=st.integers(0, 40 * 365 * 86400),
    at=st.times().map(lambda t: t.replace(microsecond=0)),
    window_seconds=st.sampled_from([1, 30, 7200, 3 * 3600, 86400]),
    devices=st.lists(st.tuples(st.sampled_from(ZONES), uuids), max_size=12),
)
def test_bulk_planning_equals_planning_each_device(
    kind, seconds, at: time, window_seconds, devices
) -> None:  # type: ignore[no-untyped-def]
    now = datetime(2000, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)

    bulk = install_times(
        kind, now=now, devices=devices, window_start=at, window_seconds=window_seconds
    )

    one_by_one = [
        plan_install(
            kind,
            now=now,
            timezone=zone,
            device_uuid=device,
            window_start=at,
            window_seconds=window_seconds,
        )
        for zone, device in devices
    ]
    assert bulk == [(plan.install_at, plan.window_end) for plan in one_by_one]
