"""fine_tuning_job_exports: a job's adapter, merged model or GGUF export, made by a worker and offered as a File

Revision ID: 0013_exports
Revises: 0012
Create Date: 2026-12-05 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel  # noqa: F401
from alembic import op

revision = "0013_exports"
down_revision = "0012"
branch_labels = None
depends_on = None

TABLE = "fine_tuning_job_exports"


def _s(n: int) -> sa.types.TypeEngine:
    return sqlmodel.sql.sqltypes.AutoString(length=n)


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", _s(64), nullable=False),
        sa.Column("organization_id", _s(64), nullable=False),
        sa.Column("job_id", _s(64), nullable=False),
        sa.Column("format", _s(16), nullable=False),
        sa.Column("checkpoint_step", sa.Integer(), nullable=True),
        sa.Column("source_model", _s(512), nullable=False),
        sa.Column("status", _s(16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker_id", _s(128), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.Column("file_id", _s(64), nullable=True),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("checks", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Integer(), nullable=True),
        sa.Column("finished_at", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index(f"ix_{TABLE}_id", TABLE, ["id"], unique=True)
    op.create_index(f"ix_{TABLE}_organization_id", TABLE, ["organization_id"])
    op.create_index(f"ix_{TABLE}_job_id", TABLE, ["job_id"])
    op.create_index(f"ix_{TABLE}_status", TABLE, ["status"])
    op.create_index(f"ix_{TABLE}_worker_id", TABLE, ["worker_id"])


def downgrade() -> None:
    for column in ("worker_id", "status", "job_id", "organization_id", "id"):
        op.drop_index(f"ix_{TABLE}_{column}", table_name=TABLE)
    op.drop_table(TABLE)
