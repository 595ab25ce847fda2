"""Devices and enrollment: registration, device tokens (authenticate, revoke, rotate),
enrollment tokens, and the operator's device listings.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from javia_core.models import (
    DeviceOut,
    DeviceRegistered,
    DeviceRegisterRequest,
    DeviceStatus,
    DeviceTagsChange,
    DeviceUpdateOut,
    EnrollmentTokenCreated,
    EnrollmentTokenOut,
    UpdateStatus,
    check_tag,
)
from javia_core.versioning import Version
from javia_updates.backends.base import (
    AuditEntry,
    DeviceQuery,
    DeviceRecord,
    NewDevice,
    NewEnrollmentToken,
    Page,
)
from javia_updates.service import views
from javia_updates.service.common import InvalidRequestError, check_metadata
from javia_updates.service.records import FleetRecords
from javia_updates.service.tokens import hash_token, new_device_token, new_enrollment_token
from javia_updates.settings import ServerSettings

__all__ = ["Devices"]


class Devices:
    """Registration, tokens and device listings (the ``device_*`` methods of ``UpdateService``).

    Args:
        records: the store with its caches.
        settings: the heartbeat interval (for the derived ``offline`` status).
    """

    def __init__(self, records: FleetRecords, settings: ServerSettings) -> None:
        self.records = records
        self.store = records.store
        self.settings = settings

    def device_out(self, device: DeviceRecord, *, now: datetime) -> DeviceOut:
        """The operator's view of ``device`` with its derived status."""
        return views.device_out(
            device, now=now, heartbeat_interval_seconds=self.settings.heartbeat_interval_seconds
        )

    # ------------------------------------------------------------------ registration and tokens
    def register_device(
        self,
        request: DeviceRegisterRequest,
        *,
        now: datetime,
        actor: str = "admin",
        enrollment_token: str | None = None,
    ) -> DeviceRegistered:
        """See :meth:`javia_updates.service.UpdateService.register_device`."""
        device_uuid = request.device_uuid or uuid.uuid4()
        token = new_device_token()
        new = NewDevice(
            device_uuid=device_uuid,
            device_name=request.device_name,
            timezone=request.timezone,
            metadata=check_metadata(request.metadata),
            token_hash=hash_token(token),
            tags=tuple(request.tags),
        )
        details: dict[str, Any] = {
            "device_uuid": str(device_uuid),
            "device_name": request.device_name,
            "tags": list(request.tags),
        }
        if enrollment_token is None:
            device = self.store.create_device(
                new, now=now, audit=AuditEntry(actor, "device.register", details)
            )
        else:
            device = self.store.create_device_with_enrollment(
                hash_token(enrollment_token),
                new,
                now=now,
                audit=AuditEntry("enrollment", "device.register", details),
            )
        return views.device_registered(device, token)

    def revoke_device_token(
        self, device_uuid: uuid.UUID, *, now: datetime, actor: str = "admin"
    ) -> DeviceOut:
        """See :meth:`javia_updates.service.UpdateService.revoke_device_token`."""
        device = self.store.replace_device_token(
            device_uuid,
            token_hash=hash_token(new_device_token()),
            revoked=True,
            now=now,
            audit=AuditEntry(actor, "device.token_revoke", {"device_uuid": str(device_uuid)}),
        )
        self.records.token_replaced(device)
        return self.device_out(device, now=now)

    def rotate_device_token(
        self, device_uuid: uuid.UUID, *, now: datetime, actor: str = "admin"
    ) -> DeviceRegistered:
        """See :meth:`javia_updates.service.UpdateService.rotate_device_token`."""
        token = new_device_token()
        device = self.store.replace_device_token(
            device_uuid,
            token_hash=hash_token(token),
            revoked=False,
            now=now,
            audit=AuditEntry(actor, "device.token_rotate", {"device_uuid": str(device_uuid)}),
        )
        self.records.token_replaced(device)
        return views.device_registered(device, token)

    def change_device_tags(
        self, device_uuid: uuid.UUID, change: DeviceTagsChange, *, now: datetime, actor: str
    ) -> DeviceOut:
        """See :meth:`javia_updates.service.UpdateService.change_device_tags`."""
        device = self.store.change_device_tags(
            device_uuid,
            add=change.add,
            remove=change.remove,
            now=now,
            audit=AuditEntry(
                actor,
                "device.tags",
                {"device_uuid": str(device_uuid), "add": change.add, "remove": change.remove},
            ),
        )
        self.records.tags_changed(device)
        return self.device_out(device, now=now)

    def authenticate_device(self, token: str) -> DeviceRecord | None:
        """See :meth:`javia_updates.service.UpdateService.authenticate_device`."""
        if not token or len(token) > 512:
            return None
        return self.records.device_by_token_hash(hash_token(token))

    def cached_device(self, token: str) -> DeviceRecord | None:
        """See :meth:`javia_updates.service.UpdateService.cached_device`."""
        if not token or len(token) > 512:
            return None
        return self.records.cached_device(hash_token(token))

    # ------------------------------------------------------------------ enrollment tokens
    def create_enrollment_token(
        self,
        *,
        max_uses: int,
        expires_in_seconds: float,
        label: str | None,
        now: datetime,
        actor: str = "admin",
    ) -> EnrollmentTokenCreated:
        """See :meth:`javia_updates.service.UpdateService.create_enrollment_token`."""
        if max_uses < 1:
            raise InvalidRequestError(
                f"max_uses is {max_uses}: an enrollment token needs at least 1 use"
            )
        if not expires_in_seconds > 0:
            raise InvalidRequestError("expires_in_seconds must be positive, e.g. 86400 for a day")
        token = new_enrollment_token()
        record = self.store.create_enrollment_token(
            NewEnrollmentToken(
                token_hash=hash_token(token),
                label=label,
                expires_at=now + timedelta(seconds=expires_in_seconds),
                max_uses=max_uses,
            ),
            now=now,
            audit=AuditEntry(
                actor,
                "enrollment_token.create",
                {"label": label, "max_uses": max_uses, "expires_in_seconds": expires_in_seconds},
            ),
        )
        return EnrollmentTokenCreated(**views.enrollment_out(record, now).model_dump(), token=token)

    def list_enrollment_tokens(
        self, *, now: datetime, limit: int = 100, offset: int = 0
    ) -> Page[EnrollmentTokenOut]:
        """See :meth:`javia_updates.service.UpdateService.list_enrollment_tokens`."""
        page = self.store.list_enrollment_tokens(limit=limit, offset=offset)
        return Page([views.enrollment_out(record, now) for record in page.items], page.total)

    def revoke_enrollment_token(
        self, token_id: int, *, now: datetime, actor: str = "admin"
    ) -> EnrollmentTokenOut:
        """See :meth:`javia_updates.service.UpdateService.revoke_enrollment_token`."""
        record = self.store.revoke_enrollment_token(
            token_id,
            now=now,
            audit=AuditEntry(actor, "enrollment_token.revoke", {"token_id": token_id}),
        )
        return views.enrollment_out(record, now)

    # ------------------------------------------------------------------ listings
    def get_device(self, device_uuid: uuid.UUID, *, now: datetime) -> DeviceOut:
        """See :meth:`javia_updates.service.UpdateService.get_device`."""
        self.records.flush()
        return self.device_out(self.store.get_device(device_uuid), now=now)

    def list_devices(
        self,
        *,
        now: datetime,
        status: DeviceStatus | None = None,
        version: str | None = None,
        online: bool | None = None,
        tag: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[DeviceOut]:
        """See :meth:`javia_updates.service.UpdateService.list_devices`."""
        if tag is not None:
            try:
                check_tag(tag)
            except ValueError as error:
                raise InvalidRequestError(str(error)) from None
        if version is not None:
            Version.parse(version)
        self.records.flush()
        query = DeviceQuery(
            derived_status=status,
            offline_before=views.offline_before(now, self.settings.heartbeat_interval_seconds),
            online=online,
            current_version=version,
            tag=tag,
        )
        page = self.store.list_devices(query, limit=limit, offset=offset)
        return Page([self.device_out(device, now=now) for device in page.items], page.total)

    def device_history(
        self,
        device_uuid: uuid.UUID,
        *,
        status: UpdateStatus | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[DeviceUpdateOut]:
        """See :meth:`javia_updates.service.UpdateService.device_history`."""
        device = self.store.get_device(device_uuid)
        page = self.store.list_device_updates(
            device_id=device.id, status=status, limit=limit, offset=offset, with_failure=True
        )
        return Page([views.device_update_out(row) for row in page.items], page.total)
