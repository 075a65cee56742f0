"""inference replicas: agent_url, the adapter agent beside a vLLM of a split deployment

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 23:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel  # noqa: F401
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inference_replicas", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("agent_url", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("inference_replicas", schema=None) as batch_op:
        batch_op.drop_column("agent_url")
