"""The rollout part of ``javia updates show`` and the plan's phase column, rendered at a fixed width."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from rich.console import Console

from javia_core.models import (
    Cohort,
    DeviceUpdateOut,
    PlanEntry,
    RolloutHealth,
    RolloutOut,
    RolloutState,
    UpdateStatus,
)
from javia_updates.cli.rollout_view import BAR_WIDTH, PhaseProgress, phase_bar, rollout_view
from javia_updates.cli.updates import plan_table, progress_table


def render(renderable: object, width: int = 140) -> str:
    console = Console(width=width, record=True, color_system=None, emoji=False)
    console.print(renderable)
    return console.export_text()


HALTED = RolloutOut(
    state=RolloutState.HALTED,
    phase=1,
    phases=[1, 10, 50, 100],
    phase_soak_seconds=7200,
    halt_failure_rate=10,
    halt_min_devices=5,
    halt_reason="6 of 28 finished devices failed (21.4%) >= 10%\x1b[2J",
    phase_counts=[
        {"completed": 6},
        {"completed": 22, "failed": 3, "rolled_back": 1, "installing": 2, "pending": 6},
        {"pending": 160},
        {},
    ],
    health=RolloutHealth(
        exposed=Cohort(
            devices=40, finished=28, failed=3, rolled_back=1, regressions=2, failure_rate=21.4
        ),
        previous=Cohort(devices=360, finished=0, silent=4),
    ),
)


def test_show_has_the_state_halt_reason_a_bar_per_phase_and_the_health():
    text = render(rollout_view(HALTED))

    assert "rollout: halted, phase 2 of 4 (10%) open" in text
    assert "halt reason: 6 of 28 finished devices failed (21.4%) >= 10%\\x1b[2J" in text
    assert "\x1b" not in text  # device-reported text stays inert
    for phase in ("1 of 4", "2 of 4", "3 of 4", "4 of 4"):
        assert phase in text
    phase_two = next(line for line in text.splitlines() if line.startswith("│ 2 of 4"))
    assert "10%" in phase_two
    assert all(part in phase_two for part in ("█", "▓", "▒", "░"))
    assert "exposed (started this update)" in text and "21.4%" in text
    assert "previous (still on the old version)" in text


def test_a_phase_bar_shows_each_outcome_in_proportion():
    bar = phase_bar(PhaseProgress({"completed": 5, "failed": 2, "installing": 1, "pending": 2}))
    assert bar.plain == "█" * 15 + "▓" * 6 + "▒" * 3 + "░" * 6
    assert len(phase_bar(PhaseProgress({}))) == BAR_WIDTH
    crowded = PhaseProgress({"completed": 998, "failed": 1, "downloading": 1})
    assert len(phase_bar(crowded)) == BAR_WIDTH


def test_plan_shows_each_devices_phase_when_phased():
    entry = PlanEntry(
        device_uuid=uuid.UUID(int=1),
        device_name="kitchen",
        timezone="UTC",
        gets_row=True,
        install_at_utc=None,
        install_at_local=None,
        reason="phase 2 (opens after phase 1 soaks)",
        phase=1,
    )
    phased = render(plan_table([entry], "plan"))
    plain = render(plan_table([entry.model_copy(update={"phase": None})], "plan"))

    assert "phase" in phased.splitlines()[2] and "│ 2 " in phased
    assert "phase" not in plain.splitlines()[2]


def test_regressions_count_as_failures_in_the_bar_and_the_device_row():
    regressed = HALTED.model_copy(update={"phase_regressions": [2, 0, 0, 0]})
    phase_one = next(
        line for line in render(rollout_view(regressed)).splitlines() if line.startswith("│ 1 of 4")
    )
    assert "█" * 20 + "▓" * 10 + " " in phase_one  # 4 completed and stayed, 2 regressed
    assert PhaseProgress({"completed": 6}, regressions=2).failed == 2

    now = datetime(2027, 6, 10, 12, 0, tzinfo=UTC)
    row = DeviceUpdateOut(
        device_uuid=uuid.UUID(int=1),
        device_name="kitchen",
        update_id=3,
        version="v1.5.0",
        status=UpdateStatus.COMPLETED,
        scheduled_for=now,
        started_at=now,
        completed_at=now,
        error_message=None,
        created_at=now,
        updated_at=now,
        regressed_at=now,
        regression_reason="application exited with status 1",
    )
    assert "completed, regressed: application exited with status 1" in render(
        progress_table([row]), width=200
    )


def test_an_awaiting_rollout_offers_nothing_and_the_soak_reads_as_a_duration():
    awaiting = HALTED.model_copy(
        update={"state": RolloutState.AWAITING_APPROVAL, "phase": 0, "halt_reason": None}
    )
    summary = render(rollout_view(awaiting)).splitlines()[0]
    assert summary.startswith("rollout: awaiting_approval: awaiting approval: nothing offered;")
    assert "open" not in summary
    assert "soak 2h," in summary


def test_format_duration_reads_back_as_the_same_seconds():
    from hypothesis import given
    from hypothesis import strategies as st

    from javia_core.rollouts import format_duration, parse_duration

    assert [format_duration(s) for s in (0, 90, 1800, 3600, 5400, 86400)] == [
        "0", "1m30s", "30m", "1h", "1h30m", "1d",
    ]  # fmt: skip

    @given(st.integers(0, 10**9))
    def round_trip(seconds: int) -> None:
        assert parse_duration(format_duration(seconds)) == seconds

    round_trip()


def test_the_show_header_ends_with_the_description_or_with_the_key():
    from javia_core.models import UpdateOut, UpdateType
    from javia_updates.cli.updates import update_header

    info = UpdateOut(
        id=4,
        version="v1.2.1",
        created_at=datetime(2027, 6, 10, 12, 0, tzinfo=UTC),
        update_type=UpdateType.URGENT,
        description="",
        package_url="/api/v1/updates/4/package",
        requires_system_packages=False,
        system_packages=[],
        size=226,
        key_id="5ed855d39742dd4d",
    )
    assert render(update_header(info)).strip() == "v1.2.1 (urgent), update 4, key 5ed855d39742dd4d"
    described = info.model_copy(update={"description": "fixes [bold]"})
    assert render(update_header(described)).strip().endswith("key 5ed855d39742dd4d: fixes [bold]")


def test_staged_and_retrying_devices_are_in_flight_in_the_bar_and_the_phase_row():
    counts = {"completed": 2, "staged": 4, "retrying": 1, "downloading": 1, "pending": 2}
    progress = PhaseProgress(counts)
    assert (progress.in_flight, progress.devices) == (6, 10)
    assert phase_bar(progress).plain == "█" * 6 + "▒" * 18 + "░" * 6
    waiting = HALTED.model_copy(update={"phase_counts": [counts, {}, {}, {}]})
    phase_one = next(
        line for line in render(rollout_view(waiting)).splitlines() if line.startswith("│ 1 of 4")
    )
    assert "6 (4 staged, 1 retrying)" in phase_one
