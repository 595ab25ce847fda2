"""Which devices an update targets: by uuid, by tag, or every device (docs/rollouts.md, "Tags"). Pure.

An update targets a device when it names no devices and no tags (every
device), when the device's uuid is among its ``targets``, or when the device
carries any of its ``target_tags``. The same rule decides at publish (which
devices get a row) and at every heartbeat (a device tagged later joins), so
the server's plan and the rows it writes never disagree.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable

__all__ = ["is_targeted", "targeting_reason"]


def is_targeted(
    targets: Collection[uuid.UUID] | None,
    target_tags: Collection[str] | None,
    device_uuid: uuid.UUID,
    device_tags: Iterable[str],
) -> bool:
    """Whether an update with ``targets`` and ``target_tags`` is meant for this device.

    Args:
        targets: the device uuids the update names, or None.
        target_tags: the tags it names (a device with any of them), or None.
        device_uuid: the device.
        device_tags: the device's tags.

    Returns:
        True when both are None (every device), the uuid is listed, or one of
        the device's tags is named.
    """
    if targets is None and target_tags is None:
        return True
    if targets is not None and device_uuid in targets:
        return True
    return target_tags is not None and any(tag in target_tags for tag in device_tags)


def targeting_reason(
    targets: Collection[uuid.UUID] | None,
    target_tags: Collection[str] | None,
    device_uuid: uuid.UUID,
    device_tags: Iterable[str],
) -> tuple[bool, str]:
    """:func:`is_targeted` with the operator's words for why the device is in or out.

    Returns:
        ``(targeted, reason)``, the reason one short phrase: ``"every device"``,
        ``"listed by uuid"``, ``"tagged kitchen"``, ``"not tagged kitchen or
        beta"``, ``"not listed by uuid"``, ``"not listed by uuid and not tagged
        kitchen"``.
    """
    if targets is None and target_tags is None:
        return True, "every device"
    if targets is not None and device_uuid in targets:
        return True, "listed by uuid"
    held = sorted(set(device_tags) & set(target_tags or ()))
    if held:
        return True, "tagged " + " and ".join(held)
    missing = []
    if targets is not None:
        missing.append("not listed by uuid")
    if target_tags is not None:
        missing.append("not tagged " + " or ".join(sorted(target_tags)))
    return False, " and ".join(missing)
