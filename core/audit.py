"""The audit log: who created, cancelled or deleted jobs, files and models, and who changed keys and budgets."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from core import ids
from core.models import AuditLog

# The types written (OpenAI's `<object>.<verb>` naming).
TYPES = (
    "api_key.created",
    "api_key.deleted",
    "file.created",
    "file.deleted",
    "fine_tuning.job.created",
    "fine_tuning.job.cancelled",
    "fine_tuning.job.paused",
    "fine_tuning.job.resumed",
    "model.deleted",
    "budget.updated",
)


def record(
    session: Session,
    *,
    organization_id: str,
    type: str,
    object_id: str | None,
    actor_api_key_id: str | None = None,
    actor_type: str = "api_key",
    data: dict[str, Any] | None = None,
) -> AuditLog:
    """Append one entry; the caller commits (with the change it records, where it can)."""
    row = AuditLog(
        id=ids.new_id("audit_log-"),
        organization_id=organization_id,
        type=type,
        actor_type=actor_type,
        actor_api_key_id=actor_api_key_id,
        object_id=object_id,
        data=data or None,
    )
    session.add(row)
    return row
