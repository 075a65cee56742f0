"""scheduling: priority, VRAM estimate and reservation, lease, queue position (issue #4)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel  # noqa: F401
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("estimated_vram_mb", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("vram_estimate", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("gpu_index", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("gpu_name", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True))
        batch_op.add_column(sa.Column("reserved_mb", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("lease_expires_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("lost_count", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("wait_reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("queue_position", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("estimated_start_at", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_fine_tuning_jobs_priority"), ["priority"], unique=False)
        batch_op.create_index(batch_op.f("ix_fine_tuning_jobs_lease_expires_at"), ["lease_expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fine_tuning_jobs_lease_expires_at"))
        batch_op.drop_index(batch_op.f("ix_fine_tuning_jobs_priority"))
        for name in (
            "estimated_start_at", "queue_position", "wait_reason", "lost_count", "lease_expires_at",
            "reserved_mb", "gpu_name", "gpu_index", "vram_estimate", "estimated_vram_mb", "priority",
        ):
            batch_op.drop_column(name)
