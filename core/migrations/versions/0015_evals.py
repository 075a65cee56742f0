"""evals, eval runs and their output items: base against fine-tuned models scored by graders

Revision ID: 0015_evals
Revises: 0014_usage
Create Date: 2026-12-07 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0015_evals"
down_revision = "0014_usage"
branch_labels = None
depends_on = None


def _s(n: int) -> sa.types.TypeEngine:
    return sqlmodel.sql.sqltypes.AutoString(length=n)


def upgrade() -> None:
    op.create_table(
        "evals",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", _s(64), nullable=False),
        sa.Column("organization_id", _s(64), nullable=False),
        sa.Column("name", _s(256), nullable=False),
        sa.Column("data_source_config", sa.JSON(), nullable=False),
        sa.Column("testing_criteria", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("deleted_at", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_evals_id", "evals", ["id"], unique=True)
    op.create_index("ix_evals_organization_id", "evals", ["organization_id"])

    op.create_table(
        "eval_runs",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", _s(64), nullable=False),
        sa.Column("eval_id", _s(64), nullable=False),
        sa.Column("organization_id", _s(64), nullable=False),
        sa.Column("name", _s(256), nullable=False),
        sa.Column("model", _s(512), nullable=False),
        sa.Column("data_source", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("status", _s(16), nullable=False),
        sa.Column("result_counts", sa.JSON(), nullable=False),
        sa.Column("per_testing_criteria_results", sa.JSON(), nullable=False),
        sa.Column("report_file_id", _s(64), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("runner_id", _s(64), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Integer(), nullable=True),
        sa.Column("finished_at", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_eval_runs_id", "eval_runs", ["id"], unique=True)
    op.create_index("ix_eval_runs_eval_id", "eval_runs", ["eval_id"])
    op.create_index("ix_eval_runs_organization_id", "eval_runs", ["organization_id"])
    op.create_index("ix_eval_runs_status", "eval_runs", ["status"])

    op.create_table(
        "eval_output_items",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", _s(64), nullable=False),
        sa.Column("run_id", _s(64), nullable=False),
        sa.Column("eval_id", _s(64), nullable=False),
        sa.Column("datasource_item_id", sa.Integer(), nullable=False),
        sa.Column("datasource_item", sa.JSON(), nullable=False),
        sa.Column("status", _s(16), nullable=False),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.Column("sample", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("run_id", "datasource_item_id", name="uq_eval_output_items_run_item"),
    )
    op.create_index("ix_eval_output_items_id", "eval_output_items", ["id"], unique=True)
    op.create_index("ix_eval_output_items_run_id", "eval_output_items", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_eval_output_items_run_id", table_name="eval_output_items")
    op.drop_index("ix_eval_output_items_id", table_name="eval_output_items")
    op.drop_table("eval_output_items")
    for column in ("status", "organization_id", "eval_id", "id"):
        op.drop_index(f"ix_eval_runs_{column}", table_name="eval_runs")
    op.drop_table("eval_runs")
    op.drop_index("ix_evals_organization_id", table_name="evals")
    op.drop_index("ix_evals_id", table_name="evals")
    op.drop_table("evals")
