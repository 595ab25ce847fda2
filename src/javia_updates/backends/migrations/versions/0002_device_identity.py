"""Device identity: revocable device tokens and enrollment tokens.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06

- ``devices.token_revoked_at``: when the operator revoked the device's token
  (NULL: not revoked). Revoking replaces ``token_hash`` with the hash of a
  token nobody holds, so the column stays NOT NULL and unique and no table is
  rebuilt (SQLite's ``ADD COLUMN`` only; a rebuild of ``devices`` would, with
  foreign keys on, cascade-delete its ``device_updates``).
- ``enrollment_tokens``: tokens with which a new device registers itself
  without the admin key, stored as SHA-256 hashes, each with a use limit and
  an expiry (docs/security.md).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from javia_updates.backends.schema import UTCDateTime, id_type

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    return context.config.attributes.get("javia_schema")


def upgrade() -> None:
    schema = _schema()
    op.add_column(
        "devices", sa.Column("token_revoked_at", UTCDateTime(), nullable=True), schema=schema
    )
    op.create_table(
        "enrollment_tokens",
        sa.Column("id", id_type(), nullable=False, autoincrement=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("label", sa.String(200), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("max_uses", sa.Integer(), nullable=False),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrollment_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_enrollment_tokens_token_hash")),
        sa.CheckConstraint(
            "uses >= 0 AND uses <= max_uses AND max_uses >= 1",
            name=op.f("ck_enrollment_tokens_uses"),
        ),
        schema=schema,
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    schema = _schema()
    op.drop_table("enrollment_tokens", schema=schema)
    # Native DROP COLUMN (SQLite 3.35 or newer), again without a table rebuild.
    op.drop_column("devices", "token_revoked_at", schema=schema)
