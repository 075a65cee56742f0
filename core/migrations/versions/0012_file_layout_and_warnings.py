"""files: data_layout (the layout the first valid example came in) and validation_warnings (fields ignored)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel  # noqa: F401
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("files", schema=None) as batch_op:
        # NULL for files validated before these columns: their layout is their format's, and no warning was kept.
        batch_op.add_column(
            sa.Column("data_layout", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
        batch_op.add_column(sa.Column("validation_warnings", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_column("validation_warnings")
        batch_op.drop_column("data_layout")
