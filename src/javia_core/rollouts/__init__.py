"""Rollouts the operator steers: phases, the phase gate, automatic halt (docs/rollouts.md). Pure.

A published update reaches its targeted devices in **phases**: cumulative
percentages such as ``(1, 10, 50, 100)``. Every rule here is a pure function
of data and ``now`` (aware datetimes, seconds); the server stores the
rollout's state and counts and calls these rules, so a second replica racing
the first reaches the same answer.

The rules, in one place (docs/rollouts.md explains them with a worked example):

* **Phase assignment** (:func:`phase_of`): a device's place in the rollout is
  SHA-256 of the rollout key (the update's version) and the device's uuid,
  read as a number in [0, 1). It is in the first phase whose cumulative
  percentage exceeds that number; a device tagged ``canary`` is in phase 0.
  The place depends on nothing else, so a re-plan never reshuffles devices
  and a device that joins later (tagged after publish) gets the place it
  would have had.
* **States** (:data:`TRANSITIONS`): ``awaiting_approval``, ``active``,
  ``paused``, ``halted``, ``cancelled``, ``completed``; operator and automatic
  events move between them through one total table (:func:`apply_event`).
* **Offers** (:func:`device_may_start`): only an active rollout offers, to the
  devices of its open phases; a completed one offers to everyone targeted.
* **Phase gate** (:func:`phase_gate`): the next phase opens once the open phase
  has stayed healthy for the soak (from its first completed install), and for
  scheduled updates once a maintenance window has closed since it opened; or
  waits for the operator with ``phase_approval``.
* **Halt** (:func:`halt_decision`): once ``halt_min_devices`` devices have
  finished, a failure rate (failed + rolled back + post-install regressions)
  of ``halt_failure_rate`` percent or more, shown with 95 % confidence (the
  Wilson lower bound, :func:`failure_rate_lower_bound`) or by every finished
  device failing, halts the rollout.
* **Post-install regression** (:func:`post_install_regression`): a device that
  completed, then within the soak went silent for more than three heartbeat
  intervals or reported its application restarting or crashing.
"""

from javia_core.rollouts.gate import GateDecision, GateVerdict, phase_gate
from javia_core.rollouts.health import (
    HALT_CONFIDENCE,
    SILENT_HEARTBEAT_INTERVALS,
    Tally,
    failure_rate_lower_bound,
    halt_decision,
    post_install_regression,
)
from javia_core.rollouts.phases import CANARY_TAG, phase_of
from javia_core.rollouts.policy import (
    DEFAULT_HALT_FAILURE_RATE,
    DEFAULT_HALT_MIN_DEVICES,
    DEFAULT_PHASE_SOAK_SECONDS,
    DEFAULT_PHASES,
    MAX_HALT_MIN_DEVICES,
    MAX_PHASE_SOAK_SECONDS,
    RolloutError,
    RolloutPolicy,
    RolloutStateError,
    format_duration,
    parse_approval_required,
    parse_duration,
    parse_halt_failure_rate,
    parse_halt_min_devices,
    parse_phase_soak,
    parse_phases,
)
from javia_core.rollouts.states import (
    TRANSITIONS,
    Effect,
    Move,
    Rollout,
    RolloutEvent,
    RolloutState,
    apply_event,
    device_may_start,
    rollout_at_publish,
    waiting_reason,
)

__all__ = [
    "HALT_CONFIDENCE",
    "CANARY_TAG",
    "DEFAULT_HALT_FAILURE_RATE",
    "DEFAULT_HALT_MIN_DEVICES",
    "DEFAULT_PHASES",
    "DEFAULT_PHASE_SOAK_SECONDS",
    "MAX_HALT_MIN_DEVICES",
    "MAX_PHASE_SOAK_SECONDS",
    "SILENT_HEARTBEAT_INTERVALS",
    "TRANSITIONS",
    "Effect",
    "GateDecision",
    "GateVerdict",
    "Move",
    "Rollout",
    "RolloutError",
    "RolloutEvent",
    "RolloutPolicy",
    "RolloutState",
    "RolloutStateError",
    "Tally",
    "apply_event",
    "device_may_start",
    "failure_rate_lower_bound",
    "format_duration",
    "halt_decision",
    "rollout_at_publish",
    "parse_approval_required",
    "parse_duration",
    "parse_halt_failure_rate",
    "parse_halt_min_devices",
    "parse_phase_soak",
    "parse_phases",
    "phase_gate",
    "phase_of",
    "post_install_regression",
    "waiting_reason",
]
