"""files: longest_example_bytes, the upper bound that sizes an "auto" max_seq_length

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("files", schema=None) as batch_op:
        # NULL for files validated before this column: their jobs size max_seq_length by the model's context.
        batch_op.add_column(sa.Column("longest_example_bytes", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_column("longest_example_bytes")
