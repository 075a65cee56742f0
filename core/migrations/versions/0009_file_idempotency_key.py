"""files: idempotency_key, unique per organization

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel  # noqa: F401
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("idempotency_key", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True)
        )
        # NULLs are distinct in a unique index on SQLite and PostgreSQL: files without a key never collide.
        batch_op.create_index(
            "ix_files_org_idempotency_key", ["organization_id", "idempotency_key"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_index("ix_files_org_idempotency_key")
        batch_op.drop_column("idempotency_key")
