"""Device tags and tag targeting, on SQLite and PostgreSQL (docs/rollouts.md, "Tags").

What an operator relies on: tags stay as set (heartbeats never touch them),
devices list by tag, a publish with tags reaches the devices carrying any of
them, a device tagged after the publish joins at its next heartbeat, an
untagged device never does, and a tag no device has publishes nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from javia_core.errors import ConflictError, NotFoundError
from javia_core.models import (
    MAX_TAGS,
    DeviceRegisterRequest,
    DeviceTagsChange,
    HeartbeatRequest,
    UpdateType,
)
from javia_updates.backends import Backend
from javia_updates.backends.base import DeviceQuery, DeviceRecord
from javia_updates.service import InvalidRequestError, UpdateService
from javia_updates.settings import ServerSettings

from .conftest import DATABASE_KINDS

NOW = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(params=DATABASE_KINDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    """SQLite and PostgreSQL (tags are SQL: JSON lists, json_each / JSONB containment)."""
    return str(request.param)


@pytest.fixture
def cached_service(backend: Backend, settings: ServerSettings) -> UpdateService:
    """The service with the heartbeat path's device cache on, as a server runs it."""
    return UpdateService(backend, settings.model_copy(update={"device_cache_seconds": 300.0}))


def register(service: UpdateService, *tags: str) -> tuple[DeviceRecord, str]:
    registered = service.register_device(DeviceRegisterRequest(tags=list(tags)), now=NOW)
    return service.find_device(registered.device_uuid), registered.device_token


def tag(service: UpdateService, device: DeviceRecord, add=(), remove=()):  # type: ignore[no-untyped-def]
    change = DeviceTagsChange(add=list(add), remove=list(remove))
    return service.change_device_tags(device.device_uuid, change, now=NOW)


def heartbeat(service: UpdateService, token: str, at: datetime = NOW):  # type: ignore[no-untyped-def]
    """A heartbeat as the server takes it: the device found by its token (through the cache)."""
    device = service.authenticate_device(token)
    assert device is not None
    return service.heartbeat(device, HeartbeatRequest(current_version="v1.0.0"), now=at).update


def test_tags_round_trip_sorted_and_a_repeated_change_changes_nothing(service, backend):
    device, _ = register(service, "kitchen")
    assert device.tags == ("kitchen",)

    changed = tag(service, device, add=["beta", "attic"], remove=["kitchen"])
    again = tag(service, device, add=["beta", "attic"], remove=["kitchen"])

    assert changed.tags == again.tags == ["attic", "beta"]
    assert service.find_device(device.device_uuid).tags == ("attic", "beta")
    audits = [entry for entry in service.audit_log().items if entry.action == "device.tags"]
    assert len(audits) == 1
    assert audits[0].actor == "admin"
    assert audits[0].details["before"] == ["kitchen"]
    assert audits[0].details["tags"] == ["attic", "beta"]


def test_tag_changes_refuse_unknown_devices_and_more_than_the_limit(service):
    device, _ = register(service)
    with pytest.raises(NotFoundError):
        tag(service, replace(device, device_uuid=uuid.uuid4()), add=["a"])
    tag(service, device, add=[f"t{i}" for i in range(MAX_TAGS)])
    with pytest.raises(ConflictError, match=f"at most {MAX_TAGS}"):
        tag(service, device, add=["one-more"])
    assert len(service.find_device(device.device_uuid).tags) == MAX_TAGS


def test_devices_list_by_tag(service, backend):
    kitchen, _ = register(service, "kitchen", "beta")
    register(service, "beta")
    register(service)

    page = service.list_devices(now=NOW, tag="kitchen")
    both = backend.store.list_devices(DeviceQuery(tag="beta"), limit=10, offset=0)

    assert [device.device_uuid for device in page.items] == [kitchen.device_uuid]
    assert page.items[0].tags == ["beta", "kitchen"]
    assert both.total == 2
    assert service.list_devices(now=NOW, tag="nobody").total == 0
    with pytest.raises(InvalidRequestError, match="not valid"):
        service.list_devices(now=NOW, tag="Kitchen!")


def test_heartbeats_keep_the_tags(cached_service, backend):
    service = cached_service
    device, token = register(service, "kitchen")
    heartbeat(service, token)
    tag(service, device, add=["beta"])
    for minute in range(3):
        heartbeat(service, token, at=NOW + timedelta(minutes=minute))
    service.flush_soft_state()

    stored = backend.store.get_device(device.device_uuid)
    assert stored.tags == ("beta", "kitchen")
    assert stored.last_seen == NOW + timedelta(minutes=2)


def test_publish_by_tag_reaches_tagged_devices_and_a_device_tagged_later_joins_at_its_next_heartbeat(
    cached_service, backend, make_package
):
    service = cached_service
    kitchen, kitchen_token = register(service, "kitchen")
    listed, listed_token = register(service)
    later, later_token = register(service)
    untagged, untagged_token = register(service, "attic")
    for token in (kitchen_token, listed_token, later_token, untagged_token):
        heartbeat(service, token)  # every device cached, as in a running fleet

    update = service.publish_update(
        make_package("v1.1.0").upload(),
        now=NOW,
        targets=[listed.device_uuid],
        tags=["kitchen"],
    )
    rows = {row.device_uuid for row in backend.store.list_device_updates(update_id=update.id).items}
    assert rows == {kitchen.device_uuid, listed.device_uuid}
    assert service.resolve_update("v1.1.0").target_tags == ("kitchen",)

    assert heartbeat(service, later_token, at=NOW + timedelta(minutes=1)) is None
    tag(service, later, add=["kitchen"])
    directive = heartbeat(service, later_token, at=NOW + timedelta(minutes=2))

    assert directive is not None and directive.update_id == update.id
    assert heartbeat(service, untagged_token, at=NOW + timedelta(minutes=2)) is None
    rows = {row.device_uuid for row in backend.store.list_device_updates(update_id=update.id).items}
    assert untagged.device_uuid not in rows and later.device_uuid in rows


def test_a_tag_no_device_has_publishes_nothing(service, make_package):
    register(service, "kitchen")
    with pytest.raises(InvalidRequestError, match="unknown tag garden: no device has it"):
        service.publish_update(make_package("v1.1.0").upload(), now=NOW, tags=["kitchen", "garden"])
    with pytest.raises(NotFoundError):
        service.resolve_update("v1.1.0")
    assert not [e for e in service.audit_log().items if e.action == "update.publish"]


def test_the_plan_says_why_each_device_is_in_or_out(service, make_package):
    kitchen, _ = register(service, "kitchen")
    listed, _ = register(service)
    other, _ = register(service, "attic")

    dry = {
        entry.device_uuid: entry
        for entry in service.plan_new_update(
            UpdateType.SCHEDULED, "v1.1.0", [listed.device_uuid], now=NOW, tags=["kitchen"]
        )
    }
    service.publish_update(make_package("v1.1.0").upload(), now=NOW, tags=["kitchen"])
    published = {entry.device_uuid: entry for entry in service.plan_published("v1.1.0", now=NOW)}

    assert dry[kitchen.device_uuid].reason.startswith("tagged kitchen; ")
    assert dry[listed.device_uuid].reason.startswith("listed by uuid; ")
    assert dry[other.device_uuid].reason == "not listed by uuid and not tagged kitchen"
    assert dry[other.device_uuid].gets_row is False
    assert dry[other.device_uuid].install_at_utc is None
    assert published[kitchen.device_uuid].reason.startswith("tagged kitchen; ")
    assert published[kitchen.device_uuid].gets_row is True
    assert published[other.device_uuid].reason == "not tagged kitchen"
    assert published[listed.device_uuid].gets_row is False
