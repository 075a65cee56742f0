"""webhook endpoints, events, the delivery outbox and delivery attempts

Revision ID: 0005
Revises: 0002
Create Date: 2026-11-29 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel  # noqa: F401
from alembic import op

revision = "0005"
down_revision = "0002"
branch_labels = None
depends_on = None


def _s(n: int) -> sa.types.TypeEngine:
    return sqlmodel.sql.sqltypes.AutoString(length=n)


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", _s(64), nullable=False),
        sa.Column("organization_id", _s(64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("name", _s(128), nullable=False),
        sa.Column("description", _s(512), nullable=True),
        sa.Column("events", sa.JSON(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", _s(256), nullable=True),
        sa.Column("secret_ciphertext", sa.Text(), nullable=False),
        sa.Column("secret_hint", _s(32), nullable=False),
        sa.Column("previous_secret_ciphertext", sa.Text(), nullable=True),
        sa.Column("previous_secret_expires_at", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_webhook_endpoints_id", "webhook_endpoints", ["id"], unique=True)
    op.create_index("ix_webhook_endpoints_organization_id", "webhook_endpoints", ["organization_id"])

    op.create_table(
        "webhook_events",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", _s(64), nullable=False),
        sa.Column("organization_id", _s(64), nullable=False),
        sa.Column("type", _s(64), nullable=False),
        sa.Column("job_id", _s(64), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_webhook_events_id", "webhook_events", ["id"], unique=True)
    op.create_index("ix_webhook_events_organization_id", "webhook_events", ["organization_id"])
    op.create_index("ix_webhook_events_job_id", "webhook_events", ["job_id"])

    op.create_table(
        "webhook_deliveries",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", _s(64), nullable=False),
        sa.Column("event_id", _s(64), nullable=False),
        sa.Column("endpoint_id", _s(64), nullable=False),
        sa.Column("organization_id", _s(64), nullable=False),
        sa.Column("status", _s(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("lease_owner", _s(64), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", _s(512), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("delivered_at", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("event_id", "endpoint_id", name="uq_webhook_deliveries_event_endpoint"),
    )
    op.create_index("ix_webhook_deliveries_id", "webhook_deliveries", ["id"], unique=True)
    op.create_index("ix_webhook_deliveries_event_id", "webhook_deliveries", ["event_id"])
    op.create_index("ix_webhook_deliveries_endpoint_id", "webhook_deliveries", ["endpoint_id"])
    op.create_index("ix_webhook_deliveries_status", "webhook_deliveries", ["status"])
    op.create_index("ix_webhook_deliveries_next_attempt_at", "webhook_deliveries", ["next_attempt_at"])

    op.create_table(
        "webhook_delivery_attempts",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", _s(64), nullable=False),
        sa.Column("delivery_id", _s(64), nullable=False),
        sa.Column("endpoint_id", _s(64), nullable=False),
        sa.Column("event_id", _s(64), nullable=False),
        sa.Column("event_type", _s(64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", _s(16), nullable=False),
        sa.Column("response_status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("error", _s(512), nullable=True),
        sa.Column("response_body", _s(512), nullable=True),
        sa.Column("next_retry_at", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_webhook_delivery_attempts_id", "webhook_delivery_attempts", ["id"], unique=True)
    op.create_index("ix_webhook_delivery_attempts_delivery_id", "webhook_delivery_attempts", ["delivery_id"])
    op.create_index("ix_webhook_delivery_attempts_endpoint_id", "webhook_delivery_attempts", ["endpoint_id"])
    op.create_index("ix_webhook_delivery_attempts_event_id", "webhook_delivery_attempts", ["event_id"])


def downgrade() -> None:
    op.drop_table("webhook_delivery_attempts")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_events")
    op.drop_table("webhook_endpoints")
