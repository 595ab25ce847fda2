"""The update flow table: docs/agent.md holds it verbatim, and every row is a legal move."""

from __future__ import annotations

from pathlib import Path

from javia_agent.driver import RECOVERY_PROBES, STEPS
from javia_agent.flow import FLOW, Edge, Event, markdown_table
from javia_agent.state import POST_SWITCH_STATES, PRE_SWITCH_STATES, TRANSITIONS, UpdateState

DOC = Path(__file__).resolve().parents[2] / "docs" / "agent.md"
START = "<!-- flow-table: generated from javia_agent.flow.markdown_table(); a test keeps it in step -->\n"
END = "<!-- /flow-table -->"


def test_the_docs_table_is_the_code_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert START in text and END in text
    documented = text.split(START, 1)[1].split(END, 1)[0]
    assert documented == markdown_table(), (
        "docs/agent.md's flow table differs from javia_agent.flow.FLOW: paste "
        "markdown_table()'s output between the flow-table markers"
    )


def test_every_row_is_an_allowed_transition_and_every_state_has_a_step() -> None:
    for (state, event), row in FLOW.items():
        assert row.next == state or row.next in TRANSITIONS[state], (state, event, row)
        assert state in STEPS
    assert set(STEPS) == set(UpdateState) - {UpdateState.IDLE}
    assert len(RECOVERY_PROBES) > 0


def test_every_state_survives_a_restart_and_a_loop() -> None:
    for state in set(UpdateState) - {UpdateState.IDLE}:
        assert (state, Event.RESTARTED) in FLOW, state
        if state != UpdateState.REPORTING:  # saving the final report never trips the cap
            assert (state, Event.LOOP_DETECTED) in FLOW, state


def test_before_the_switch_failures_report_and_after_it_they_roll_back() -> None:
    for state in PRE_SWITCH_STATES:
        assert FLOW[state, Event.FAILURE].next == UpdateState.REPORTING
        assert FLOW[state, Event.RETRY_LATER].edge == Edge.WAIT
        assert FLOW[state, Event.ABANDON].next == UpdateState.IDLE
    for state in POST_SWITCH_STATES - {UpdateState.ROLLING_BACK}:
        assert FLOW[state, Event.LOOP_DETECTED].next == UpdateState.ROLLING_BACK
        assert (state, Event.ABANDON) not in FLOW
    assert FLOW[UpdateState.ROLLING_BACK, Event.LOOP_DETECTED].edge == Edge.GIVE_UP_ROLLBACK
