"""When a device stages an update ahead of its install time (``javia_core.staging_lead``).

The lead is real elapsed seconds on the server's clock: across every zone and
DST change, a scheduled update planned in the device's own window (device-local
02:00, :func:`plan_in_own_window`) starts staging exactly ``lead`` seconds
before that window's slot, and never installs earlier because of it.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, time, timedelta
from zoneinfo import available_timezones

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from javia_core.errors import ScheduleError
from javia_core.models import InstallDirective, UpdateStatus, UpdateType
from javia_core.scheduling import decide_install, plan_in_own_window
from javia_core.staging_lead import (
    DEFAULT_STAGING_LEAD_SECONDS,
    MAX_STAGING_LEAD_SECONDS,
    check_staging_lead,
    decide_staging,
)

ZONES = sorted(available_timezones() - {"localtime"})
# Zones with DST changes at 02:00-03:00 local, where a lead crosses one most often.
DST_ZONES = ["Europe/Berlin", "America/New_York", "Australia/Sydney", "America/Santiago"]
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2080, 1, 1), timezones=st.just(UTC)
)
leads = st.integers(min_value=1, max_value=MAX_STAGING_LEAD_SECONDS)


def _directive(update_type: UpdateType, install_at: datetime) -> InstallDirective:
    return InstallDirective.model_validate(
        {
            "update_id": 3,
            "version": "v1.1.0",
            "update_type": update_type,
            "status": UpdateStatus.PENDING,
            "install_at": install_at,
            "window_end": install_at + timedelta(hours=3)
            if update_type is UpdateType.SCHEDULED
            else None,
            "size": 1,
            "manifest_url": "/api/v1/updates/3/manifest",
            "signature_url": "/api/v1/updates/3/signature",
            "download_url": "/api/v1/updates/3/download",
        }
    )


@settings(max_examples=300, deadline=None)
@given(
    now=instants,
    zone=st.one_of(st.sampled_from(DST_ZONES), st.sampled_from(ZONES)),
    lead=leads,
    device=st.uuids(),
)
def test_a_pinned_window_is_staged_exactly_lead_seconds_before_its_slot(
    now: datetime, zone: str, lead: int, device: uuid.UUID
) -> None:
    offered = _directive(UpdateType.SCHEDULED, now + timedelta(days=2))
    planned = plan_in_own_window(
        offered,
        now=now,
        timezone=zone,
        device_uuid=device,
        window_start=time(2, 0),
        window_seconds=3 * 3600,
    )
    decision = decide_staging(
        UpdateType.SCHEDULED, now=now, install_at=planned.install_at, lead_seconds=lead
    )
    assert decision.starts_at is not None
    # Elapsed seconds, whatever the local clock did in between (DST).
    elapsed = planned.install_at.astimezone(UTC) - decision.starts_at
    assert elapsed == timedelta(seconds=lead)
    assert decision.stage_now == (now >= decision.starts_at)
    # Staging is due from its start on, and never makes the install come sooner.
    at_start = decide_staging(
        UpdateType.SCHEDULED,
        now=decision.starts_at,
        install_at=planned.install_at,
        lead_seconds=lead,
    )
    assert at_start.stage_now
    if decision.starts_at < planned.install_at:
        assert not decide_install(planned, now=decision.starts_at, idle_seconds=None).install_now


@settings(max_examples=200, deadline=None)
@given(now=instants, ahead=st.integers(min_value=-86400, max_value=10 * 86400), lead=leads)
def test_staging_is_due_exactly_from_install_at_minus_lead(
    now: datetime, ahead: int, lead: int
) -> None:
    install_at = now + timedelta(seconds=ahead)
    decision = decide_staging(
        UpdateType.SCHEDULED, now=now, install_at=install_at, lead_seconds=lead
    )
    assert decision.stage_now == (ahead <= lead)
    assert decision.starts_at == install_at - timedelta(seconds=lead)
    # A longer lead never stages later.
    longer = decide_staging(
        UpdateType.SCHEDULED,
        now=now,
        install_at=install_at,
        lead_seconds=min(MAX_STAGING_LEAD_SECONDS, lead * 2),
    )
    assert longer.stage_now or not decision.stage_now


@given(now=instants, ahead=st.integers(min_value=0, max_value=10 * 86400))
def test_instant_never_and_a_zero_lead_never_stage_ahead(now: datetime, ahead: int) -> None:
    install_at = now + timedelta(seconds=ahead)
    instant = decide_staging(
        UpdateType.INSTANT,
        now=now,
        install_at=install_at,
        lead_seconds=DEFAULT_STAGING_LEAD_SECONDS,
    )
    assert not instant.stage_now and instant.starts_at is None
    for kind in (UpdateType.SCHEDULED, UpdateType.URGENT):
        zero = decide_staging(kind, now=now, install_at=install_at, lead_seconds=0)
        assert not zero.stage_now and zero.starts_at is None


@given(now=instants, ahead=st.integers(min_value=0, max_value=30 * 86400), lead=leads)
def test_urgent_updates_stage_at_once(now: datetime, ahead: int, lead: int) -> None:
    """Its idle moment may come at any time before the deadline."""
    decision = decide_staging(
        UpdateType.URGENT, now=now, install_at=now + timedelta(seconds=ahead), lead_seconds=lead
    )
    assert decision.stage_now and decision.starts_at == now


@pytest.mark.parametrize(
    "lead", [-1, MAX_STAGING_LEAD_SECONDS + 1, math.nan, math.inf, True, "6h", None]
)
def test_a_lead_out_of_range_is_refused_naming_the_range(lead: object) -> None:
    with pytest.raises(ScheduleError, match="staging lead must be 0 to 604800 seconds"):
        check_staging_lead(lead)  # type: ignore[arg-type]


def test_naive_times_are_refused() -> None:
    with pytest.raises(ScheduleError, match="timezone-aware"):
        decide_staging(
            UpdateType.SCHEDULED,
            now=datetime(2027, 1, 1),
            install_at=datetime(2027, 1, 2, tzinfo=UTC),
            lead_seconds=60,
        )
