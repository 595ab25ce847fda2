"""Rollouts: phases, the automatic halt and operator commands (docs/rollouts.md).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

- ``rollouts``: one row per update: its state, phases, soak, halt policy,
  approval flags, halt reason and a ``revision`` every change is conditional
  on (two operators or replicas racing: one write wins, the other re-reads).
- ``device_updates.regressed_at`` / ``regression_reason``: a post-install
  regression recorded on a completed row (the status stays ``completed``).

Updates published before this revision get a rollout row too (backfilled
here): ``active``, one phase of 100 %, the default soak and halt policy —
what they did before, so nothing changes for them.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import context, op

from javia_core.models import RolloutState
from javia_core.rollouts import (
    DEFAULT_HALT_FAILURE_RATE,
    DEFAULT_HALT_MIN_DEVICES,
    DEFAULT_PHASE_SOAK_SECONDS,
)
from javia_updates.backends.schema import UTCDateTime, id_type, json_type

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    return context.config.attributes.get("javia_schema")


def upgrade() -> None:
    schema = _schema()
    prefix = f"{schema}." if schema else ""
    states = ", ".join(f"'{state.value}'" for state in RolloutState)
    rollouts = op.create_table(
        "rollouts",
        sa.Column("update_id", id_type(), nullable=False, autoincrement=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("phases", json_type(), nullable=False),
        sa.Column("phase_index", sa.Integer(), nullable=False),
        sa.Column("phase_opened_at", UTCDateTime(), nullable=True),
        sa.Column("phase_soak_seconds", sa.Integer(), nullable=False),
        sa.Column("halt_failure_rate", sa.Float(), nullable=False),
        sa.Column("halt_min_devices", sa.Integer(), nullable=False),
        sa.Column("require_approval", sa.Boolean(), nullable=False),
        sa.Column("phase_approval", sa.Boolean(), nullable=False),
        sa.Column("awaiting_phase_approval", sa.Boolean(), nullable=False),
        sa.Column("halt_reason", sa.Text(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["update_id"],
            [f"{prefix}updates.id"],
            name=op.f("fk_rollouts_update_id_updates"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("update_id", name=op.f("pk_rollouts")),
        sa.CheckConstraint(f"state IN ({states})", name=op.f("ck_rollouts_state")),
        schema=schema,
    )
    # Native ADD COLUMN on both databases: no table rebuild (see revision 0002).
    op.add_column(
        "device_updates", sa.Column("regressed_at", UTCDateTime(), nullable=True), schema=schema
    )
    op.add_column(
        "device_updates", sa.Column("regression_reason", sa.Text(), nullable=True), schema=schema
    )
    updates = sa.table("updates", sa.column("id"), sa.column("created_at"), schema=schema)
    existing = op.get_bind().execute(sa.select(updates.c.id, updates.c.created_at)).all()
    now = datetime.now(UTC)
    if existing:
        op.bulk_insert(
            rollouts,
            [
                {
                    "update_id": update_id,
                    "state": RolloutState.ACTIVE.value,
                    "phases": [100],
                    "phase_index": 0,
                    "phase_opened_at": created_at,
                    "phase_soak_seconds": DEFAULT_PHASE_SOAK_SECONDS,
                    "halt_failure_rate": DEFAULT_HALT_FAILURE_RATE,
                    "halt_min_devices": DEFAULT_HALT_MIN_DEVICES,
                    "require_approval": False,
                    "phase_approval": False,
                    "awaiting_phase_approval": False,
                    "halt_reason": None,
                    "revision": 0,
                    "created_at": now,
                    "updated_at": now,
                }
                for update_id, created_at in existing
            ],
        )


def downgrade() -> None:
    schema = _schema()
    op.drop_column("device_updates", "regression_reason", schema=schema)
    op.drop_column("device_updates", "regressed_at", schema=schema)
    op.drop_table("rollouts", schema=schema)
