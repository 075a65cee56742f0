"""FastAPI dependencies as `Annotated` aliases. Long-lived handles live on `app.state`, built in the lifespan."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.engine import Engine
from sqlmodel import Session

from api.scopes import check_request_scope
from api.services.idempotency import IDEMPOTENCY_HEADER, MAX_IDEMPOTENCY_KEY
from core.keys import authenticate
from core.models import ApiKey, Organization
from core.settings import Settings
from core.storage import Storage


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


def get_session(engine: Annotated[Engine, Depends(get_engine)]) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def get_current_org(request: Request, engine: Annotated[Engine, Depends(get_engine)]) -> Organization:
    with Session(engine, expire_on_commit=False) as session:
        key, org = authenticate(session, key=_bearer(request))
    request.state.organization_id = org.id
    request.state.api_key = key  # for scopes, the audit log and per-key metering
    check_request_scope(request, key)
    return org


def get_current_key(request: Request, org: Annotated[Organization, Depends(get_current_org)]) -> ApiKey:
    key: ApiKey = request.state.api_key
    return key


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
StorageDep = Annotated[Storage, Depends(get_storage)]
SessionDep = Annotated[Session, Depends(get_session)]
CurrentOrg = Annotated[Organization, Depends(get_current_org)]
CurrentKey = Annotated[ApiKey, Depends(get_current_key)]
# Checked by the service (api/services/idempotency.py), so a bad key is a 400 in the error envelope.
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        description=(
            "Makes the create safe to retry: the same key and request within 24 h return the object created "
            "first (with `Idempotent-Replayed: true`) and create nothing; the same key with another request is "
            f"a 422 `idempotency_key_reused`. Keys are per organization, 1-{MAX_IDEMPOTENCY_KEY} printable ASCII "
            "characters."
        ),
    ),
]
