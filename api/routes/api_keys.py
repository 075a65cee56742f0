"""/v1/organization/api_keys and /v1/organization/audit_logs: an org admin's keys and audit log (admin scope)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request

from api.deps import CurrentOrg, SessionDep
from api.protocol import CursorListResponse, ErrorResponse
from api.protocol_org import ApiKeyDeleted, ApiKeyObject, AuditLogObject, CreateApiKeyRequest
from api.services import api_keys as service
from api.services import audit

router = APIRouter(
    prefix="/v1/organization",
    tags=["organization"],
    responses={
        400: {"model": ErrorResponse},
        401: {"model": ErrorResponse},
        403: {"model": ErrorResponse},
        404: {"model": ErrorResponse},
    },
)


@router.get("/api_keys", response_model=CursorListResponse[ApiKeyObject])
def list_api_keys(
    org: CurrentOrg,
    session: SessionDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = "asc",
) -> CursorListResponse[ApiKeyObject]:
    """The organization's keys that are not revoked, without their secrets."""
    return service.list_keys(session=session, org=org, after=after, limit=limit, order=order)


@router.post("/api_keys", response_model=ApiKeyObject, response_model_exclude_none=False)
def create_api_key(
    body: CreateApiKeyRequest, request: Request, org: CurrentOrg, session: SessionDep
) -> ApiKeyObject:
    """A new key; its secret (`value`) is in this answer only."""
    created = service.create(session=session, org=org, request=body)
    data = {
        "name": created.name,
        "scopes": created.scopes,
        "inference_token_quota": created.inference_token_quota,
    }
    audit.record(request, session, type="api_key.created", object_id=created.id, data=data)
    return created


@router.delete("/api_keys/{key_id}", response_model=ApiKeyDeleted)
def delete_api_key(key_id: str, request: Request, org: CurrentOrg, session: SessionDep) -> ApiKeyDeleted:
    """Revoke a key: it stops working at once (within a second for inference)."""
    deleted = service.delete(session=session, org=org, key_id=key_id)
    audit.record(request, session, type="api_key.deleted", object_id=key_id)
    return deleted


@router.get("/audit_logs", response_model=CursorListResponse[AuditLogObject])
def list_audit_logs(
    request: Request,
    org: CurrentOrg,
    session: SessionDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    effective_at_gte: int | None = Query(None, alias="effective_at[gte]", ge=0, le=2**31 - 1),
    effective_at_lte: int | None = Query(None, alias="effective_at[lte]", ge=0, le=2**31 - 1),
) -> CursorListResponse[AuditLogObject]:
    """Who did what, newest first. Filter with `event_types[]` (repeated) and `effective_at[gte]`/`[lte]`."""
    types = request.query_params.getlist("event_types[]") + request.query_params.getlist("event_types")
    data, has_more = audit.list_audit_logs(
        session=session, org=org, after=after, limit=limit, event_types=types or None,
        effective_at_gte=effective_at_gte, effective_at_lte=effective_at_lte,
    )  # fmt: skip
    return CursorListResponse[AuditLogObject](
        data=data,
        has_more=has_more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )
