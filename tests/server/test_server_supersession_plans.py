"""Plans, publish and heartbeat apply one supersession rule (DESIGN.md section 4).

A new user saw ``updates plan`` promise a scheduled v7.0.0 for Saturday 02:55
while the device installed it at once with the instant timing of a pending
v6.0.1, the superseded row shown as "gets it: yes" with an install time, and
superseded rows left ``pending`` until each device's next heartbeat. Here the
dry run, the plan of a published update, the rows a publish writes and the
heartbeat's directive must agree, for every pair of update types.
"""

from __future__ import annotations

import pytest

from javia_core.models import UpdateStatus, UpdateType
from javia_core.rollouts import RolloutPolicy, phase_of
from javia_updates.backends.base import AuditEntry

TYPES = [UpdateType.SCHEDULED, UpdateType.URGENT, UpdateType.INSTANT]


def _publish(service, clock, make_package, version, update_type, **options):  # type: ignore[no-untyped-def]
    package = make_package(version, update_type.value)
    return service.publish_update(package.upload(), now=clock.now, **options)


def _entry(entries, device):  # type: ignore[no-untyped-def]
    (entry,) = [entry for entry in entries if entry.device_uuid == device.device_uuid]
    return entry


def _row(service, device, update_id):  # type: ignore[no-untyped-def]
    return service.store.get_device_update(device.id, update_id)


@pytest.mark.parametrize("first", TYPES)
@pytest.mark.parametrize("second", TYPES)
def test_the_dry_run_the_publish_and_the_heartbeat_agree(
    service, clock, register, beat, make_package, first: UpdateType, second: UpdateType
) -> None:
    device, _ = register(timezone="Europe/Berlin")
    beat(device)
    older = _publish(service, clock, make_package, "v1.1.0", first)
    clock.advance(minutes=1)
    beat(device, None)  # still v1.0.0; the v1.1.0 row stays pending (agent down, say)

    dry = _entry(service.plan_new_update(second, "v1.2.0", None, now=clock.now), device)
    newer = _publish(service, clock, make_package, "v1.2.0", second)

    # Superseded at publish, in the same write: no heartbeat needed.
    superseded = _row(service, device, older.id)
    assert (superseded.status, superseded.error_message) == (
        UpdateStatus.SUPERSEDED,
        "superseded by v1.2.0",
    )
    winner = _row(service, device, newer.id)
    strongest = max(first, second, key=TYPES.index)
    assert winner.install_type is strongest
    assert dry.gets_row and dry.install_at_utc == winner.scheduled_for
    assert "supersedes pending v1.1.0" in dry.reason
    if strongest is not second:
        assert f"takes the {strongest.value} timing of v1.1.0" in dry.reason

    published = _entry(service.plan_published("v1.2.0", now=clock.now), device)
    assert published.gets_row and published.install_at_utc == winner.scheduled_for
    gone = _entry(service.plan_published("v1.1.0", now=clock.now), device)
    assert not gone.gets_row and gone.install_at_utc is None
    assert gone.reason == "superseded: superseded by v1.2.0"

    directive = beat(device, None).update
    assert (str(directive.version), directive.update_type) == ("v1.2.0", strongest)
    assert directive.install_at == dry.install_at_utc == published.install_at_utc


def test_a_row_left_pending_by_a_gated_publish_is_planned_as_its_heartbeat_will_supersede_it(
    service, clock, register, beat, make_package
) -> None:
    device, _ = register()
    beat(device)
    _publish(service, clock, make_package, "v1.1.0", UpdateType.INSTANT)
    # Awaiting approval, the new row may not start: the publish supersedes nothing.
    gated = _publish(
        service, clock, make_package, "v1.2.0", UpdateType.SCHEDULED,
        policy=RolloutPolicy(require_approval=True),
    )  # fmt: skip
    fix = _entry(service.plan_published("v1.1.0", now=clock.now), device)
    assert fix.gets_row and fix.status is UpdateStatus.PENDING
    assert fix.install_at_utc == clock.now

    service.rollout_command(gated.id, "approve", reason=None, now=clock.now)
    fix = _entry(service.plan_published("v1.1.0", now=clock.now), device)
    assert not fix.gets_row and fix.install_at_utc is None
    assert fix.reason == "pending, superseded by v1.2.0 at its next heartbeat"
    release = _entry(service.plan_published("v1.2.0", now=clock.now), device)
    assert release.install_at_utc == clock.now
    assert "takes the instant timing of v1.1.0" in release.reason

    directive = beat(device).update
    assert (str(directive.version), directive.install_at) == ("v1.2.0", release.install_at_utc)


def test_a_phased_publish_supersedes_only_where_the_device_may_start(
    service, clock, register, beat, make_package
) -> None:
    canary, _ = register(name="canary")
    other, _ = register(name="other")
    service.store.change_device_tags(
        canary.device_uuid, add=["canary"], remove=[], now=clock.now, audit=AuditEntry("t", "tag")
    )
    for device in (canary, other):
        beat(device)
    fix = _publish(service, clock, make_package, "v1.1.0", UpdateType.INSTANT)
    _publish(
        service, clock, make_package, "v1.2.0", UpdateType.SCHEDULED,
        policy=RolloutPolicy(phases=(1, 100)),
    )  # fmt: skip

    # The canary is in the open first phase: superseded at publish.
    assert _row(service, canary, fix.id).status is UpdateStatus.SUPERSEDED
    # The other device waits for the second phase (unless its hash put it in the first).
    waits = phase_of(other.device_uuid, "v1.2.0", (1, 100)) > 0
    expected = UpdateStatus.PENDING if waits else UpdateStatus.SUPERSEDED
    assert _row(service, other, fix.id).status is expected
