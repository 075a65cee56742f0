"""Merge the scheduling, inference and webhooks branches into one head.

The three were written in parallel on top of 0002; `migrate()` upgrades every head, so this merge only
restores a single head for `alembic revision --autogenerate`.

Revision ID: 0006
Revises: 0003, 0004, 0005
"""

from __future__ import annotations

revision = "0006"
down_revision = ("0003", "0004", "0005")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
