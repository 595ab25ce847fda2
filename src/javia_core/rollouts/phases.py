"""Which phase of a rollout a device belongs to (docs/rollouts.md, phases). Pure.

A device's place is a stable hash of the rollout key and its uuid, so a
re-plan never reshuffles devices and a device that joins later gets the place
it would have had.
"""

from __future__ import annotations

import hashlib
import uuid

from javia_core.rollouts.policy import check_phases

__all__ = ["CANARY_TAG", "phase_of"]

#: A device with this tag is in phase 0 of every rollout that targets it.
CANARY_TAG = "canary"

_HASH_BITS = 64
_HASH_SPAN = 1 << _HASH_BITS


def _position(device_uuid: uuid.UUID, rollout_key: str) -> int:
    """The device's place in the rollout: an integer in [0, 2**64), uniform over uuids."""
    digest = hashlib.sha256(
        b"javia-rollout\x00" + rollout_key.encode("utf-8") + b"\x00" + device_uuid.bytes
    ).digest()
    return int.from_bytes(digest[: _HASH_BITS // 8], "big")


def phase_of(
    device_uuid: uuid.UUID, rollout_key: str, phases: tuple[int, ...], *, canary: bool = False
) -> int:
    """The index of the phase a device belongs to (docs/rollouts.md, phases).

    The device's place is the first 64 bits of SHA-256 over a fixed prefix, the
    rollout key and the uuid's 16 bytes, as a fraction of 2**64; the device is in
    the first phase ``k`` with ``place < phases[k] / 100`` (compared exactly, in
    integers). Over many devices the share in phases ``0..k`` approaches
    ``phases[k]`` percent. The result depends only on these arguments: never on
    the other devices, the order of planning or the process.

    Args:
        device_uuid: the device's uuid.
        rollout_key: what makes each rollout's order its own; the update's
            version (``v1.4.0``), so every release gets a different first 1 %.
        phases: the policy's cumulative percentages (validated).
        canary: the device is tagged ``canary``: it is in phase 0.

    Returns:
        The phase index, ``0 <= index < len(phases)``.

    Raises:
        RolloutError: ``phases`` breaks the rules of :class:`RolloutPolicy`.
    """
    check_phases(tuple(phases))
    if canary:
        return 0
    scaled = _position(device_uuid, rollout_key) * 100
    for index, percent in enumerate(phases):
        if scaled < percent * _HASH_SPAN:
            return index
    raise AssertionError("unreachable: the last phase is 100 %")  # pragma: no cover
