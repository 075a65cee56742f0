"""usage metering, budgets, job caps, key scopes and quotas, and the audit log

Revision ID: 0014_usage
Revises: 0013_exports
Create Date: 2026-12-06 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0014_usage"
down_revision = "0013_exports"
branch_labels = None
depends_on = None


def _s(n: int) -> sa.types.TypeEngine:
    return sqlmodel.sql.sqltypes.AutoString(length=n)


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scopes", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("inference_token_quota", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_trained_tokens", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("max_cost", sa.Float(), nullable=True))

    op.create_table(
        "training_usage",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("organization_id", _s(64), nullable=False),
        sa.Column("job_id", _s(64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("model", _s(256), nullable=False),
        sa.Column("gpu_class", _s(128), nullable=False),
        sa.Column("trained_tokens", sa.BigInteger(), nullable=False),
        sa.Column("gpu_seconds", sa.Float(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("job_id", "attempt", name="uq_training_usage_job_attempt"),
    )
    op.create_index("ix_training_usage_job_id", "training_usage", ["job_id"])
    op.create_index("ix_training_usage_org_created", "training_usage", ["organization_id", "created_at"])

    op.create_table(
        "inference_usage",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("organization_id", _s(64), nullable=False),
        sa.Column("api_key_id", _s(64), nullable=False),
        sa.Column("model", _s(512), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_inference_usage_org_created", "inference_usage", ["organization_id", "created_at"])
    op.create_index("ix_inference_usage_key_created", "inference_usage", ["api_key_id", "created_at"])

    op.create_table(
        "organization_budgets",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("organization_id", _s(64), nullable=False),
        sa.Column("monthly_cost", sa.Float(), nullable=True),
        sa.Column("monthly_trained_tokens", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index(
        "ix_organization_budgets_organization_id", "organization_budgets", ["organization_id"], unique=True
    )

    op.create_table(
        "audit_logs",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", _s(64), nullable=False),
        sa.Column("organization_id", _s(64), nullable=False),
        sa.Column("type", _s(64), nullable=False),
        sa.Column("effective_at", sa.Integer(), nullable=False),
        sa.Column("actor_type", _s(16), nullable=False),
        sa.Column("actor_api_key_id", _s(64), nullable=True),
        sa.Column("object_id", _s(512), nullable=True),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_audit_logs_id", "audit_logs", ["id"], unique=True)
    op.create_index("ix_audit_logs_org_effective", "audit_logs", ["organization_id", "effective_at"])


def downgrade() -> None:
    op.drop_index("ix_audit_logs_org_effective", table_name="audit_logs")
    op.drop_index("ix_audit_logs_id", table_name="audit_logs")
    op.drop_table("audit_logs")
    op.drop_index("ix_organization_budgets_organization_id", table_name="organization_budgets")
    op.drop_table("organization_budgets")
    op.drop_index("ix_inference_usage_key_created", table_name="inference_usage")
    op.drop_index("ix_inference_usage_org_created", table_name="inference_usage")
    op.drop_table("inference_usage")
    op.drop_index("ix_training_usage_org_created", table_name="training_usage")
    op.drop_index("ix_training_usage_job_id", table_name="training_usage")
    op.drop_table("training_usage")
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.drop_column("max_cost")
        batch_op.drop_column("max_trained_tokens")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("inference_token_quota")
        batch_op.drop_column("scopes")
