"""inference replicas, served adapters and adapter placements

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-28 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel  # noqa: F401
from alembic import op

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None


def _s(n: int) -> sa.types.TypeEngine:
    return sqlmodel.sql.sqltypes.AutoString(length=n)


def upgrade() -> None:
    op.create_table(
        "inference_replicas",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", _s(64), nullable=False),
        sa.Column("base_model", _s(256), nullable=False),
        sa.Column("url", _s(512), nullable=False),
        sa.Column("adapter_dir", _s(1024), nullable=False),
        sa.Column("api_key", _s(512), nullable=True),
        sa.Column("max_adapters", sa.Integer(), nullable=False),
        sa.Column("max_lora_rank", sa.Integer(), nullable=False),
        sa.Column("source", _s(16), nullable=False),
        sa.Column("status", _s(16), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_checked_at", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("inference_replicas", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_inference_replicas_id"), ["id"], unique=True)
        batch_op.create_index(batch_op.f("ix_inference_replicas_base_model"), ["base_model"], unique=False)
        batch_op.create_index(batch_op.f("ix_inference_replicas_url"), ["url"], unique=True)

    op.create_table(
        "served_adapters",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", _s(512), nullable=False),
        sa.Column("organization_id", _s(64), nullable=False),
        sa.Column("job_id", _s(64), nullable=False),
        sa.Column("base_model", _s(256), nullable=False),
        sa.Column("checkpoint_step", sa.Integer(), nullable=True),
        sa.Column("storage_prefix", _s(512), nullable=False),
        sa.Column("version", _s(64), nullable=True),
        sa.Column("rel_path", _s(1024), nullable=True),
        sa.Column("status", _s(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("ready_at", sa.Integer(), nullable=True),
        sa.Column("deleted_at", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("served_adapters", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_served_adapters_id"), ["id"], unique=True)
        batch_op.create_index(batch_op.f("ix_served_adapters_organization_id"), ["organization_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_served_adapters_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_served_adapters_status"), ["status"], unique=False)

    op.create_table(
        "adapter_placements",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("adapter_id", _s(512), nullable=False),
        sa.Column("replica_id", _s(64), nullable=False),
        sa.Column("lora_path", _s(1024), nullable=False),
        sa.Column("loaded_at", sa.Integer(), nullable=False),
        sa.Column("last_used_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("adapter_id", "replica_id", name="uq_adapter_placements_adapter_replica"),
    )
    with op.batch_alter_table("adapter_placements", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_adapter_placements_adapter_id"), ["adapter_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_adapter_placements_replica_id"), ["replica_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("adapter_placements", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_adapter_placements_replica_id"))
        batch_op.drop_index(batch_op.f("ix_adapter_placements_adapter_id"))
    op.drop_table("adapter_placements")
    with op.batch_alter_table("served_adapters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_served_adapters_status"))
        batch_op.drop_index(batch_op.f("ix_served_adapters_job_id"))
        batch_op.drop_index(batch_op.f("ix_served_adapters_organization_id"))
        batch_op.drop_index(batch_op.f("ix_served_adapters_id"))
    op.drop_table("served_adapters")
    with op.batch_alter_table("inference_replicas", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inference_replicas_url"))
        batch_op.drop_index(batch_op.f("ix_inference_replicas_base_model"))
        batch_op.drop_index(batch_op.f("ix_inference_replicas_id"))
    op.drop_table("inference_replicas")
