"""The persisted update state machine (DESIGN.md section 7; Mender-style, STYLE.md).

An update moves through a fixed set of named states. The state is written to
``<state_dir>/state.json`` *before* the step it names runs (temp file → fsync →
``os.replace`` → fsync of the directory), so after a crash or power loss the
agent knows which step was interrupted and :data:`RECOVERY` says what to do.

- :data:`TRANSITIONS` is the one table of allowed moves; :class:`StateStore`
  refuses any other (a programming error, ``RuntimeError``). Re-entering the
  same state is always allowed: that is a retry after a crash.
- Every save of an update counts; past ``max_saves`` a forward step raises
  :class:`~javia_agent.errors.CrashLoopError`, and the flow table's
  ``loop_detected`` row fails the update or rolls back to the old release
  (the loop breaker; :data:`javia_agent.flow.FLOW` says which moves happen,
  this module which are allowed).
- State names are a wire format: a released name never changes meaning.

Pure apart from :class:`StateStore`, which owns the one file.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from javia_agent._fs import atomic_write
from javia_agent.errors import CrashLoopError, StateError
from javia_core.models import UpdateStatus
from javia_core.versioning import Version

__all__ = [
    "POST_SWITCH_STATES",
    "PRE_SWITCH_STATES",
    "RECOVERY",
    "TRANSITIONS",
    "AgentState",
    "Recovery",
    "StateStore",
    "UpdateRecord",
    "UpdateSource",
    "UpdateState",
]

logger = logging.getLogger(__name__)

STATE_FORMAT = 1


class UpdateState(StrEnum):
    """Where an update is. Saved *before* the named step runs."""

    IDLE = "idle"  # no update in progress
    DOWNLOADING = "downloading"  # fetching manifest, signature, payload (resumable)
    VERIFYING = "verifying"  # payload size and SHA-256 against the signed manifest
    STAGING = "staging"  # extracting into releases/<version>, building its Python environment
    #: Staged: the release is complete on disk; apt's install, the setup command,
    #: then the switch remain (held here, ahead of the window, until install time).
    STAGED = "staged"
    SWITCHING = "switching"  # stop service, point `current` at the new release, start
    HEALTH_CHECK = "health_check"  # the new release must stay up for health_seconds
    COMMITTING = "committing"  # new release is good: record it, prune old releases
    ROLLING_BACK = "rolling_back"  # point `current` back at the old release, restart it
    REPORTING = "reporting"  # queue the final status report, then idle


class UpdateSource(StrEnum):
    """Where a package came from."""

    SERVER = "server"  # a directive in a heartbeat answer; progress is reported
    DIRECTORY = "directory"  # ``javia agent install PACKAGE_DIR``; nothing is reported


class Recovery(StrEnum):
    """What the agent does on start-up when it finds an update in a given state."""

    NOTHING = "nothing"
    RESUME_DOWNLOAD = "resume_download"  # keep the .partial; resume when next told to install
    REVERIFY = "reverify"  # verify the downloaded payload again when next told to install
    RESTAGE = "restage"  # remove the half-written staging dir; stage again when next told
    KEEP_STAGED = "keep_staged"  # keep the staged release; checked against the manifest before use
    CHECK_CURRENT = "check_current"  # `current` → new: health check; else redo the switch
    RECHECK_HEALTH = "recheck_health"  # `current` → new: health check again; else roll back
    COMMIT = "commit"  # redo the (idempotent) commit, then report completed
    ROLL_BACK = "roll_back"  # redo the (idempotent) rollback, then report rolled_back
    REPORT = "report"  # queue the final report again (the server accepts repeats)


_S = UpdateState

#: The only allowed moves between states (besides re-entering the same state).
TRANSITIONS: Mapping[UpdateState, frozenset[UpdateState]] = MappingProxyType(
    {
        _S.IDLE: frozenset({_S.DOWNLOADING, _S.VERIFYING}),
        _S.DOWNLOADING: frozenset({_S.VERIFYING, _S.REPORTING, _S.IDLE}),
        _S.VERIFYING: frozenset({_S.STAGING, _S.REPORTING, _S.IDLE}),
        _S.STAGING: frozenset({_S.STAGED, _S.REPORTING, _S.IDLE}),
        # A staged release that no longer matches its signed manifest is made again.
        _S.STAGED: frozenset({_S.SWITCHING, _S.VERIFYING, _S.REPORTING, _S.IDLE}),
        _S.SWITCHING: frozenset({_S.HEALTH_CHECK, _S.ROLLING_BACK}),
        _S.HEALTH_CHECK: frozenset({_S.COMMITTING, _S.ROLLING_BACK}),
        # A commit the loop breaker stops (it kept crashing the agent) is rolled back.
        _S.COMMITTING: frozenset({_S.REPORTING, _S.ROLLING_BACK}),
        _S.ROLLING_BACK: frozenset({_S.REPORTING}),
        _S.REPORTING: frozenset({_S.IDLE}),
    }
)

#: What to do after a crash, for each saved state (STYLE.md, Mender's recovery table).
RECOVERY: Mapping[UpdateState, Recovery] = MappingProxyType(
    {
        _S.IDLE: Recovery.NOTHING,
        _S.DOWNLOADING: Recovery.RESUME_DOWNLOAD,
        _S.VERIFYING: Recovery.REVERIFY,
        _S.STAGING: Recovery.RESTAGE,
        _S.STAGED: Recovery.KEEP_STAGED,
        _S.SWITCHING: Recovery.CHECK_CURRENT,
        _S.HEALTH_CHECK: Recovery.RECHECK_HEALTH,
        _S.COMMITTING: Recovery.COMMIT,
        _S.ROLLING_BACK: Recovery.ROLL_BACK,
        _S.REPORTING: Recovery.REPORT,
    }
)

#: States in which the running release is untouched: abandoning the update is safe.
PRE_SWITCH_STATES = frozenset({_S.DOWNLOADING, _S.VERIFYING, _S.STAGING, _S.STAGED})
#: States after the service was stopped: recovery must converge on a good release.
POST_SWITCH_STATES = frozenset({_S.SWITCHING, _S.HEALTH_CHECK, _S.COMMITTING, _S.ROLLING_BACK})
# Steps that move an update forward; the loop breaker stops these first.
_FORWARD_STATES = PRE_SWITCH_STATES | {_S.SWITCHING, _S.HEALTH_CHECK, _S.COMMITTING}

if not set(TRANSITIONS) == set(UpdateState) == set(RECOVERY):  # pragma: no cover
    raise RuntimeError("every update state needs a transition row and a recovery action")


class UpdateRecord(BaseModel):
    """The update in progress, as saved in ``state.json``.

    Attributes:
        update_id: the server's update id; ``None`` for a package directory.
        version: the version being installed (``vX.Y.Z``).
        previous_version: the release running before it (``None``: none yet);
            the rollback target.
        state: the step about to run or running.
        source: server directive or package directory.
        package_dir: the package directory for :attr:`UpdateSource.DIRECTORY`.
        size: signed payload size in bytes, when known.
        attempts: how many times the update was (re)started: first run, retries
            after network errors, recoveries after a crash.
        saves: how many times this record was saved (the loop breaker's counter).
        stalled_cycles: download attempts in a row (one per agent cycle) that
            ended without a single new byte on disk; the installer gives up
            on the update after :data:`javia_agent.installer.MAX_STALLED_DOWNLOADS`.
        error: the reason for a failure or rollback.
        final_status: the status to report from :attr:`UpdateState.REPORTING`.
        started_at: device wall clock at the first save; informative only.
        transient_failures: transient faults so far (an index, mirror or disk;
            :mod:`javia_agent.retry_policy`); each one restarts the loop
            breaker's count, the deadline bounds them instead.
        retrying_since, retry_deadline, retry_at: the first transient fault,
            when retrying ends, when the next try is due (device wall clock, UTC).
        failure: the structured failure to report with the final status
            (:class:`javia_core.failures.FailureDetails` as JSON).
    """

    model_config = ConfigDict(extra="ignore")

    update_id: int | None = None
    version: str
    previous_version: str | None = None
    state: UpdateState
    source: UpdateSource = UpdateSource.SERVER
    package_dir: str | None = None
    size: int | None = None
    attempts: int = 0
    saves: int = 0
    stalled_cycles: int = 0
    error: str | None = None
    final_status: UpdateStatus | None = None
    started_at: datetime | None = None
    transient_failures: int = 0
    retrying_since: datetime | None = None
    retry_deadline: datetime | None = None
    retry_at: datetime | None = None
    failure: dict[str, Any] | None = None

    @field_validator("version", "previous_version")
    @classmethod
    def _a_version(cls, value: str | None) -> str | None:
        # The version names a directory the agent deletes: only vX.Y.Z passes.
        if value is not None:
            Version.parse(value)
        return value

    @field_validator("update_id")
    @classmethod
    def _an_id(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= 2**63 - 1:
            raise ValueError(f"invalid update id {value}: expected a whole number from 1")
        return value

    def same_update(self, other: UpdateRecord | None) -> bool:
        """Whether ``other`` describes the same update (same id and version)."""
        return (
            other is not None
            and other.update_id == self.update_id
            and other.version == self.version
            and other.source == self.source
        )


class AgentState(BaseModel):
    """The whole of ``state.json``.

    Attributes:
        current_version: the last committed (healthy) release, or ``None``.
        update: the update in progress; ``None`` when idle.
        failed_versions: versions that failed or were rolled back; a server
            directive for one of them is never installed again.
        attention: why the device needs a person, or ``None``. Set when the
            loop breaker stopped a rollback that kept crashing the agent and
            the previous release is not what runs ("rollback could not
            complete: ..."); shown by ``javia agent status``, sent as
            ``attention`` in every heartbeat's metadata, cleared when an
            update commits.
    """

    model_config = ConfigDict(extra="ignore")

    format: int = STATE_FORMAT
    current_version: str | None = None
    update: UpdateRecord | None = None
    failed_versions: list[str] = Field(default_factory=list)
    attention: str | None = None

    @field_validator("current_version", mode="wrap")
    @classmethod
    def _current_or_none(cls, value: object, handler: ValidatorFunctionWrapHandler) -> object:
        checked = handler(value)
        if checked is not None and not Version.is_valid(checked):
            logger.error("state file: ignoring an invalid current version %.60r", checked)
            return None
        return checked

    @field_validator("update", mode="wrap")
    @classmethod
    def _update_or_none(cls, value: object, handler: ValidatorFunctionWrapHandler) -> object:
        # A record naming no valid version or id (written by an older agent from
        # a hostile server answer) is dropped, never turned into a path; the
        # start-up clean-up removes whatever it left under releases/ and downloads/.
        try:
            return handler(value)
        except ValidationError as error:
            logger.error("state file: dropping an invalid update record (%s)", error)
            return None

    @field_validator("failed_versions", mode="before")
    @classmethod
    def _only_versions(cls, value: object) -> object:
        if isinstance(value, list):
            return [item for item in value if isinstance(item, str) and Version.is_valid(item)]
        return value

    @property
    def state(self) -> UpdateState:
        """The update's state, or :attr:`UpdateState.IDLE` without one."""
        return self.update.state if self.update is not None else UpdateState.IDLE


class StateStore:
    """Loads and saves ``state.json``, enforcing :data:`TRANSITIONS` and the save cap.

    Args:
        path: the state file (``<state_dir>/state.json``).
        max_saves: saves allowed per update before forward steps raise
            :class:`CrashLoopError`; a rollback gets twice as many.
    """

    def __init__(self, path: Path, *, max_saves: int = 30) -> None:
        self.path = Path(path)
        self.max_saves = max_saves
        self._last: AgentState | None = None

    def load(self) -> AgentState:
        """Read the saved state; a missing file is a fresh, idle device.

        A file that does not parse (disk corruption; the atomic writes rule out
        a torn write) is moved aside to ``state.json.corrupt`` and the device
        starts idle: the ``current`` link still says what runs.

        Raises:
            StateError: the file exists but cannot be read (permissions).
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            state = AgentState()
        except OSError as error:
            raise StateError(f"cannot read state file {self.path}: {error.strerror}") from None
        else:
            try:
                state = AgentState.model_validate(json.loads(data.decode("utf-8")))
            except (UnicodeDecodeError, ValueError, ValidationError) as error:
                aside = self.path.with_name(self.path.name + ".corrupt")
                logger.error("state file %s is corrupt (%s); moved to %s", self.path, error, aside)
                os.replace(self.path, aside)
                state = AgentState()
        self._last = state
        return state

    def save(self, state: AgentState) -> AgentState:
        """Save ``state`` durably and return it as saved (with the save counter set).

        Args:
            state: the new state; its ``update.saves`` is overwritten.

        Returns:
            The state as written.

        Raises:
            RuntimeError: the move is not in :data:`TRANSITIONS` (a bug).
            CrashLoopError: the update has been saved too often (loop breaker);
                nothing is written.
            StateError: the file cannot be written.
        """
        previous = self._last if self._last is not None else self.load()
        old_state, new_state = previous.state, state.state
        if new_state != old_state and new_state not in TRANSITIONS[old_state]:
            raise RuntimeError(f"invalid update state transition {old_state} -> {new_state}")
        if state.update is not None:
            record = state.update
            before = previous.update
            saves = before.saves if before is not None and record.same_update(before) else 0
            if before is not None and record.transient_failures > before.transient_failures:
                saves = 0  # a deliberate, deadline-bound retry, not a crash loop
            saves += 1
            limit = self.max_saves if new_state in _FORWARD_STATES else 2 * self.max_saves
            if new_state != UpdateState.REPORTING and saves > limit:
                raise CrashLoopError(
                    f"update {record.version} saved its state {saves - 1} times "
                    f"(limit {limit}): breaking a crash loop at {new_state}"
                )
            state = state.model_copy(update={"update": record.model_copy(update={"saves": saves})})
        payload = state.model_dump_json(indent=2).encode("utf-8") + b"\n"
        try:
            atomic_write(self.path, payload, mode=0o644)
        except OSError as error:
            raise StateError(f"cannot write state file {self.path}: {error.strerror}") from None
        self._last = state
        return state
