"""How a rollout reads each device-update status (javia_core.rollouts.statuses, docs/rollouts.md)."""

from __future__ import annotations

from pathlib import Path

from javia_core.models import FINAL_STATUSES, UpdateStatus
from javia_core.rollouts import statuses
from javia_core.status_rules import ALLOWED_PREVIOUS, IN_FLIGHT_STATUSES

DOC = Path(__file__).resolve().parents[1] / "docs" / "rollouts.md"
TABLE_START = (
    "<!-- status-table: generated from javia_core.rollouts.statuses.markdown_table(); "
    "a test keeps it in step -->\n"
)
TABLE_END = "<!-- /status-table -->"


def test_the_docs_table_is_the_code_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert TABLE_START in text and TABLE_END in text
    documented = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0]
    assert documented == statuses.markdown_table(), (
        "docs/rollouts.md's status table differs from javia_core.rollouts.statuses: "
        "paste markdown_table()'s output between the status-table markers"
    )


def test_every_status_has_one_row() -> None:
    rows = statuses.markdown_table().splitlines()[2:]
    assert sorted(row.split("`")[1] for row in rows) == sorted(
        status.value for status in UpdateStatus
    )


def test_staged_and_retrying_took_the_offer_and_a_pause_holds_them() -> None:
    both = {UpdateStatus.STAGED, UpdateStatus.RETRYING}
    assert both <= statuses.TOOK_OFFER
    assert both == statuses.HELD_BY_PAUSE
    assert not both & statuses.FINISHED and not both & statuses.NOT_TARGETED


def test_the_sets_agree_with_the_status_rules() -> None:
    # What a cancel ends is what the store lets it end; what it cannot end is in flight.
    assert ALLOWED_PREVIOUS[UpdateStatus.CANCELLED] == statuses.STOPPED_BY_CANCEL
    open_rows = set(UpdateStatus) - FINAL_STATUSES
    assert open_rows - statuses.STOPPED_BY_CANCEL == IN_FLIGHT_STATUSES
    assert statuses.FINISHED | statuses.NOT_TARGETED == FINAL_STATUSES
    assert UpdateStatus.PENDING not in statuses.TOOK_OFFER
    assert set(UpdateStatus) - {UpdateStatus.PENDING} - statuses.NOT_TARGETED == statuses.TOOK_OFFER
