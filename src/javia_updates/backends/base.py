"""Storage behind one interface (DESIGN.md section 5): where each part lives.

A :class:`Backend` is a metadata :class:`Store` (devices, updates,
device_updates, audit log) plus a :class:`BlobStore` (package objects). The
service layer talks only to these two interfaces. This module gathers them
for importers; each has its own home:

- :mod:`javia_updates.backends.records`: the records the store reads and writes;
- :mod:`javia_updates.backends.store`: the :class:`Store` protocol (every
  method's shapes, units and exceptions), :class:`BlobStore` and
  :class:`EnrollmentError`;
- :mod:`javia_updates.backends.registry`: :class:`Backend` and the registry
  of backend names;
- :mod:`javia_updates.backends.sql`: the store on SQLAlchemy Core.
"""

from __future__ import annotations

from javia_updates.backends.records import (
    AuditEntry,
    AuditRecord,
    DeviceQuery,
    DeviceRecord,
    DeviceUpdateRecord,
    DeviceWithRows,
    EnrollmentTokenRecord,
    HeartbeatWrite,
    NewDevice,
    NewDeviceUpdate,
    NewEnrollmentToken,
    NewRollout,
    NewUpdate,
    Page,
    PublishTarget,
    RolloutDeviceRow,
    RolloutMember,
    RolloutRecord,
    StatusGroup,
    SupersededRow,
    TransitionResult,
    UpdateRecord,
)
from javia_updates.backends.registry import (
    Backend,
    backend_names,
    create_backend,
    get_backend_class,
    register_backend,
)
from javia_updates.backends.store import BlobStore, EnrollmentError, Store

__all__ = [
    "AuditEntry",
    "AuditRecord",
    "Backend",
    "BlobStore",
    "DeviceQuery",
    "DeviceRecord",
    "DeviceUpdateRecord",
    "DeviceWithRows",
    "EnrollmentError",
    "EnrollmentTokenRecord",
    "HeartbeatWrite",
    "NewDevice",
    "NewDeviceUpdate",
    "NewEnrollmentToken",
    "NewRollout",
    "NewUpdate",
    "Page",
    "PublishTarget",
    "RolloutDeviceRow",
    "RolloutMember",
    "RolloutRecord",
    "StatusGroup",
    "Store",
    "SupersededRow",
    "TransitionResult",
    "UpdateRecord",
    "backend_names",
    "create_backend",
    "get_backend_class",
    "register_backend",
]
