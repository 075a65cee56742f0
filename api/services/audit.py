"""The audit log: written by the routes that change things (after the change commits), read by org admins through
`GET /v1/organization/audit_logs`, shaped like OpenAI's."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from api.protocol_org import AuditLogActor, AuditLogObject
from api.services.pagination import paginate
from core import audit
from core.errors import InvalidRequestError
from core.models import AuditLog, Organization


def record(
    request: Request, session_or_engine: Session | Engine, *, type: str, object_id: str | None,
    data: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """Append one entry for the request's organization and key, and commit it."""
    key = getattr(request.state, "api_key", None)
    organization_id = getattr(request.state, "organization_id", None) or getattr(key, "organization_id", None)
    if organization_id is None:
        return

    def write(session: Session) -> None:
        audit.record(
            session, organization_id=organization_id, type=type, object_id=object_id,
            actor_api_key_id=getattr(key, "id", None), data=data,
        )  # fmt: skip
        session.commit()

    if isinstance(session_or_engine, Session):
        write(session_or_engine)
    else:
        with Session(session_or_engine) as session:
            write(session)


def list_audit_logs(
    *,
    session: Session,
    org: Organization,
    after: str | None,
    limit: int,
    event_types: list[str] | None,
    effective_at_gte: int | None,
    effective_at_lte: int | None,
) -> tuple[list[AuditLogObject], bool]:
    unknown = sorted(set(event_types or ()) - set(audit.TYPES))
    if unknown:
        raise InvalidRequestError(
            f"Unknown event type {unknown[0]!r}; the types are {', '.join(audit.TYPES)}.",
            param="event_types[]",
            code="invalid_value",
        )
    filters: list[Any] = [AuditLog.organization_id == org.id]
    if event_types:
        filters.append(col(AuditLog.type).in_(event_types))
    if effective_at_gte is not None:
        filters.append(col(AuditLog.effective_at) >= effective_at_gte)
    if effective_at_lte is not None:
        filters.append(col(AuditLog.effective_at) <= effective_at_lte)
    rows, has_more = paginate(session, model=AuditLog, filters=filters, after=after, limit=limit)
    return [audit_log_object(row) for row in rows], has_more


def audit_log_object(row: AuditLog) -> AuditLogObject:
    actor = AuditLogActor(
        type=row.actor_type,
        api_key={"id": row.actor_api_key_id, "type": "organization"} if row.actor_api_key_id else None,
    )
    payload: dict[str, Any] = {"id": row.object_id}
    if row.data:
        payload["data"] = row.data
    return AuditLogObject.model_validate(
        {"id": row.id, "type": row.type, "effective_at": row.effective_at, "actor": actor, row.type: payload}
    )
