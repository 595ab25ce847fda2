"""Which devices a change wakes, and how fast (docs/agent.md, "The wake-up channel").

:class:`DeviceWakeups` is the one hook the use cases call where a change that
concerns devices commits (``notify_devices``); the notice travels over the
:mod:`wake-up bus <javia_updates.backends.wakeup_bus>` to every server
process, which answers those devices' held wake-up requests. A wake-up only
says "heartbeat now": the heartbeat decides, as before.

| change | devices woken | spread |
|---|---|---|
| publish | its uuid targets, else every device (tags included: a device outside them costs one heartbeat) | instant 0 s, urgent 30 s, scheduled 120 s |
| rollout pause, cancel, halt | every device | 0 s |
| rollout resume, approve, a phase opens | every device | instant 0 s, else 60 s |
| token revoked or rotated | that device | 0 s |

The spread lets a fleet woken for an update that need not start this second
heartbeat over a minute or two instead of in one burst.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from javia_core.models import RolloutState, UpdateType
from javia_core.wakeup import WakeupReason
from javia_updates.backends.wakeup_bus import LocalWakeupBus, WakeupBus, WakeupNotice

__all__ = ["PUBLISH_SPREAD_SECONDS", "DeviceWakeups"]

#: Spread of the woken devices' heartbeats after a publish, per update type, in seconds.
PUBLISH_SPREAD_SECONDS = {
    UpdateType.INSTANT: 0.0,
    UpdateType.URGENT: 30.0,
    UpdateType.SCHEDULED: 120.0,
}
#: Spread after a rollout change that lets devices start (resume, approve, a new phase), in seconds.
ROLLOUT_START_SPREAD_SECONDS = 60.0
_STOPPING = frozenset({RolloutState.PAUSED, RolloutState.CANCELLED, RolloutState.HALTED})


class DeviceWakeups:
    """The use cases' side of the wake-up bus.

    Args:
        bus: the process's bus (default: in-process, which delivers nothing
            until started: a service without a server wakes nobody).
    """

    def __init__(self, bus: WakeupBus | None = None) -> None:
        self.bus: WakeupBus = bus or LocalWakeupBus()

    def notify_devices(
        self,
        reason: WakeupReason,
        devices: Iterable[uuid.UUID] | None = None,
        *,
        spread_seconds: float = 0.0,
    ) -> None:
        """Wake ``devices`` (None: every device) on every server process; never raises."""
        self.bus.publish(WakeupNotice.for_devices(reason, devices, spread_seconds=spread_seconds))

    def published(self, update_type: UpdateType, targets: Iterable[uuid.UUID] | None) -> None:
        """An update was published for ``targets`` (None: every device, or tags)."""
        self.notify_devices(
            WakeupReason.UPDATE, targets, spread_seconds=PUBLISH_SPREAD_SECONDS[update_type]
        )

    def rollout_changed(self, update_type: UpdateType, state: RolloutState) -> None:
        """A rollout moved to ``state`` (by the operator or the rules)."""
        spread = 0.0
        if state not in _STOPPING and update_type is not UpdateType.INSTANT:
            spread = ROLLOUT_START_SPREAD_SECONDS
        self.notify_devices(WakeupReason.ROLLOUT, None, spread_seconds=spread)

    def token_changed(self, device_uuid: uuid.UUID) -> None:
        """The device's token was revoked or rotated: its held request ends."""
        self.notify_devices(WakeupReason.TOKEN, [device_uuid])
