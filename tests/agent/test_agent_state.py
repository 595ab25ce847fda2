"""The persisted state machine: atomic saves, the transition table, the loop breaker."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from javia_agent.errors import CrashLoopError
from javia_agent.state import (
    POST_SWITCH_STATES,
    PRE_SWITCH_STATES,
    RECOVERY,
    TRANSITIONS,
    AgentState,
    Recovery,
    StateStore,
    UpdateRecord,
    UpdateState,
)


def _with(state: AgentState, step: UpdateState, version: str = "v1.1.0") -> AgentState:
    record = state.update or UpdateRecord(update_id=1, version=version, state=step)
    return state.model_copy(update={"update": record.model_copy(update={"state": step})})


def test_a_missing_state_file_is_an_idle_device(tmp_path: Path) -> None:
    state = StateStore(tmp_path / "state.json").load()
    assert state.state == UpdateState.IDLE and state.update is None and state.failed_versions == []


def test_save_round_trips_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    saved = store.save(_with(store.load(), UpdateState.DOWNLOADING))
    assert saved.update is not None and saved.update.saves == 1
    again = StateStore(tmp_path / "state.json").load()
    assert again == saved
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_write_leaves_the_previous_state_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(tmp_path / "state.json")
    store.save(_with(store.load(), UpdateState.DOWNLOADING))
    before = (tmp_path / "state.json").read_bytes()

    def power_loss(src: str, dst: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", power_loss)
    with pytest.raises(Exception, match="cannot write state file"):
        store.save(_with(store.load(), UpdateState.VERIFYING))
    monkeypatch.undo()
    assert (tmp_path / "state.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_saves_are_fsynced_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1]
    )
    store = StateStore(tmp_path / "state.json")
    store.save(_with(store.load(), UpdateState.DOWNLOADING))
    assert events == ["fsync", "replace", "fsync"]  # file, rename, directory


def test_transitions_outside_the_table_are_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    state = store.save(_with(store.load(), UpdateState.DOWNLOADING))
    with pytest.raises(RuntimeError, match="downloading -> committing"):
        store.save(_with(state, UpdateState.COMMITTING))
    state = store.save(_with(state, UpdateState.VERIFYING))
    state = store.save(_with(state, UpdateState.STAGING))
    with pytest.raises(RuntimeError, match="staging -> switching"):  # only a staged release
        store.save(_with(state, UpdateState.SWITCHING))
    state = store.save(_with(state, UpdateState.STAGED))
    state = store.save(_with(state, UpdateState.SWITCHING))
    with pytest.raises(
        RuntimeError
    ):  # past the switch there is no way back to idle but via a report
        store.save(state.model_copy(update={"update": None}))


def test_the_tables_cover_every_state_and_post_switch_states_never_go_idle_directly() -> None:
    assert set(TRANSITIONS) == set(UpdateState) == set(RECOVERY)
    for state in POST_SWITCH_STATES:
        assert UpdateState.IDLE not in TRANSITIONS[state]
        assert RECOVERY[state] not in (Recovery.NOTHING, Recovery.RESUME_DOWNLOAD)
    for state in PRE_SWITCH_STATES:
        assert UpdateState.REPORTING in TRANSITIONS[state]  # a failure is always reportable
    assert RECOVERY[UpdateState.DOWNLOADING] == Recovery.RESUME_DOWNLOAD
    assert RECOVERY[UpdateState.STAGING] == Recovery.RESTAGE


def test_the_save_cap_breaks_crash_loops_but_lets_a_rollback_through(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json", max_saves=5)
    state = store.save(_with(store.load(), UpdateState.DOWNLOADING))
    for _ in range(4):
        state = store.save(_with(state, UpdateState.DOWNLOADING))  # each restart re-saves
    with pytest.raises(CrashLoopError, match="crash loop"):
        store.save(_with(state, UpdateState.VERIFYING))
    state = store.save(
        _with(state, UpdateState.REPORTING)
    )  # reporting the failure is always allowed
    assert state.update is not None and state.update.saves == 6


def test_a_new_update_starts_a_new_save_count(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json", max_saves=5)
    state = store.save(_with(store.load(), UpdateState.DOWNLOADING))
    state = store.save(state.model_copy(update={"update": None}))
    other = UpdateRecord(update_id=2, version="v1.2.0", state=UpdateState.DOWNLOADING)
    state = store.save(state.model_copy(update={"update": other}))
    assert state.update is not None and state.update.saves == 1


def test_a_corrupt_state_file_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_bytes(b'{"update": {"state": "downl')
    state = StateStore(tmp_path / "state.json").load()
    assert state.update is None
    assert (tmp_path / "state.json.corrupt").exists() and not (tmp_path / "state.json").exists()


def test_state_names_are_a_stable_wire_format(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    store.save(_with(store.load(), UpdateState.DOWNLOADING))
    body = json.loads((tmp_path / "state.json").read_text())
    assert body["update"]["state"] == "downloading" and body["format"] == 1
