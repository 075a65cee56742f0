"""fine_tuning_jobs: token_counts, the job's files counted with its model's tokenizer at validation

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 18:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        # NULL for jobs validated before the count existed, or whose model has no countable tokenizer.
        batch_op.add_column(sa.Column("token_counts", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.drop_column("token_counts")
