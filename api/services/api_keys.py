"""/v1/organization/api_keys: an org admin lists, creates and revokes its organization's keys. The secret is shown
once, in the answer to the create; only its SHA-256 is stored (core/keys.py)."""

from __future__ import annotations

from typing import Any, Literal

from sqlmodel import Session, col, select

from api.protocol import CursorListResponse
from api.protocol_org import ApiKeyDeleted, ApiKeyObject, CreateApiKeyRequest
from api.services.pagination import paginate
from core.errors import NotFoundError
from core.keys import ADMIN, FINE_TUNE, INFERENCE, create_key, revoke_key
from core.models import ApiKey, Organization

DEFAULT_SCOPES = [FINE_TUNE, INFERENCE]


def key_object(row: ApiKey, value: str | None = None) -> ApiKeyObject:
    return ApiKeyObject(
        id=row.id,
        name=row.name,
        redacted_value=f"{row.display_prefix}…",
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        scopes=list(row.scopes) if row.scopes is not None else [ADMIN],
        inference_token_quota=row.inference_token_quota,
        value=value,
    )


def list_keys(
    *, session: Session, org: Organization, after: str | None, limit: int, order: Literal["asc", "desc"]
) -> CursorListResponse[ApiKeyObject]:
    filters: list[Any] = [ApiKey.organization_id == org.id, col(ApiKey.revoked_at).is_(None)]
    rows, has_more = paginate(session, model=ApiKey, filters=filters, after=after, limit=limit, order=order)
    data = [key_object(row) for row in rows]
    return CursorListResponse[ApiKeyObject](
        data=data,
        has_more=has_more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


def create(*, session: Session, org: Organization, request: CreateApiKeyRequest) -> ApiKeyObject:
    row, value = create_key(
        session,
        org_name=org.name,
        name=request.name,
        scopes=list(request.scopes) if request.scopes is not None else DEFAULT_SCOPES,
        inference_token_quota=request.inference_token_quota,
    )
    session.commit()
    return key_object(row, value)


def delete(*, session: Session, org: Organization, key_id: str) -> ApiKeyDeleted:
    row = session.exec(
        select(ApiKey).where(
            ApiKey.id == key_id, ApiKey.organization_id == org.id, col(ApiKey.revoked_at).is_(None)
        )
    ).first()
    if row is None:
        raise NotFoundError(f"No such API key: {key_id}", param="key_id")
    revoke_key(session, key_id=row.id)
    session.commit()
    return ApiKeyDeleted(id=row.id)
