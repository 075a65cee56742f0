"""An organization with an API key, and webhook endpoints created through the API's service (its URL checks
included), for tests that deliver webhooks."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from api.protocol import CreateWebhookEndpointRequest
from api.services import webhooks as endpoint_service
from core.db import session_scope
from core.keys import create_key
from core.models import Organization
from core.settings import Settings


def make_org_with_key(settings: Settings, engine: Engine, name: str = "hooks") -> tuple[Organization, str]:
    with session_scope(engine) as session:
        key_row, key = create_key(session, org_name=name)
        org = session.exec(select(Organization).where(Organization.id == key_row.organization_id)).one()
        session.expunge(org)
    return org, key


def add_endpoint(
    settings: Settings, engine: Engine, org: Organization, url: str, events: list[str] | str = "all"
) -> tuple[str, str]:
    """(endpoint id, signing secret), created through the API's service (URL checks included)."""
    with Session(engine, expire_on_commit=False) as session:
        created = endpoint_service.create_endpoint(
            session=session,
            settings=settings,
            org=org,
            request=CreateWebhookEndpointRequest(url=url, events=events),
        )
    return created.id, created.signing_secret
