"""Webhook endpoints: create (the secret is shown once), list, retrieve, update, delete, rotate the secret,
send a test event, and list delivery attempts. Every query is scoped to the caller's organization."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import delete, func
from sqlmodel import Session, col, select

from api.protocol import (
    CreateWebhookEndpointRequest,
    CursorListResponse,
    UpdateWebhookEndpointRequest,
    WebhookDeliveryAttemptObject,
    WebhookEndpointDeleted,
    WebhookEndpointObject,
    WebhookEndpointTestResultObject,
    WebhookEndpointWithSecretObject,
    WebhookEventTypeList,
)
from api.services.pagination import paginate
from core import ids, netguard, webhook_sender, webhooks
from core.errors import InvalidRequestError, NotFoundError, ServiceUnavailableError
from core.models import Organization, WebhookDelivery, WebhookDeliveryAttempt, WebhookEndpoint
from core.settings import Settings


def event_types() -> WebhookEventTypeList:
    return WebhookEventTypeList(data=list(webhooks.EVENT_TYPES))


# -- validation ------------------------------------------------------------------------------------------------

_UNSET: Any = object()


def _subscription(events: list[str] | str | None, event_types: list[str] | None) -> list[str] | None | Any:
    """The stored subscription (a list, or None for every type); _UNSET when the request names none."""
    if events is not None and event_types is not None:
        raise InvalidRequestError("Pass either 'events' or 'event_types', not both.", param="events")
    name = "events" if events is not None else "event_types"
    value: list[str] | str | None = events if events is not None else event_types
    if value is None:
        return _UNSET
    if isinstance(value, str):
        if value == "all":
            return None
        raise InvalidRequestError(
            f"'{name}' must be a list of event types or \"all\" (got {value!r}).", param=name
        )
    if not value:
        raise InvalidRequestError(f"'{name}' must name at least one event type, or be \"all\".", param=name)
    out: list[str] = []
    for i, item in enumerate(value):
        if item not in webhooks.EVENT_TYPES:
            raise InvalidRequestError(
                f"Unknown event type {item!r}; known types: {', '.join(webhooks.EVENT_TYPES)}.",
                param=f"{name}[{i}]",
                code="invalid_event_type",
            )
        if item not in out:
            out.append(item)
    return out


def check_url(settings: Settings, url: str, *, param: str = "url") -> str:
    """Refuse URLs that are malformed, not https (outside development), or that resolve to a private,
    loopback, link-local or metadata address (unless FTSERVE_WEBHOOK_ALLOW_PRIVATE=1)."""
    url = url.strip()
    try:
        netguard.resolve_checked(
            url,
            allow_private=settings.webhook_allow_private,
            allow_http=settings.webhook_allow_http,
        )
    except netguard.UnsafeURLError as exc:
        raise InvalidRequestError(f"Invalid webhook URL: {exc}", param=param, code="invalid_url") from None
    return url


# -- objects ---------------------------------------------------------------------------------------------------


def _fields(row: WebhookEndpoint) -> dict[str, Any]:
    expires = row.previous_secret_expires_at
    return {
        "id": row.id,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "url": row.url,
        "name": row.name,
        "event_types": list(row.events) if row.events is not None else list(webhooks.EVENT_TYPES),
        "signing_secret_hint": row.secret_hint,
        "events": list(row.events) if row.events is not None else "all",
        "description": row.description,
        "enabled": row.enabled,
        "disabled_reason": row.disabled_reason,
        "previous_secret_expires_at": expires if expires and expires > time.time() else None,
    }


def endpoint_object(row: WebhookEndpoint) -> WebhookEndpointObject:
    return WebhookEndpointObject(**_fields(row))


def _endpoint(session: Session, *, org: Organization, endpoint_id: str) -> WebhookEndpoint:
    row = session.exec(
        select(WebhookEndpoint).where(
            WebhookEndpoint.id == endpoint_id, WebhookEndpoint.organization_id == org.id
        )
    ).first()
    if row is None:
        raise NotFoundError(f"No such webhook endpoint: {endpoint_id}", param="webhook_endpoint_id")
    return row


def _default_name(url: str) -> str:
    try:
        return netguard.parse_url(url, allow_http=True).host[:128]
    except netguard.UnsafeURLError:
        return ""


# -- endpoints -------------------------------------------------------------------------------------------------


def create_endpoint(
    *, session: Session, settings: Settings, org: Organization, request: CreateWebhookEndpointRequest
) -> WebhookEndpointWithSecretObject:
    subscription = _subscription(request.events, request.event_types)
    url = check_url(settings, request.url)
    count = session.exec(
        select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.organization_id == org.id)
    ).one()
    if count >= settings.webhook_max_endpoints_per_org:
        raise InvalidRequestError(
            f"An organization can have at most {settings.webhook_max_endpoints_per_org} webhook endpoints; "
            "delete one first.",
            param="url",
            code="limit_reached",
        )
    secret = webhooks.new_secret()
    endpoint_id = webhooks.endpoint_id()
    row = WebhookEndpoint(
        id=endpoint_id,
        organization_id=org.id,
        url=url,
        name=request.name if request.name is not None else _default_name(url),
        description=request.description,
        events=None if subscription is _UNSET else subscription,
        enabled=request.enabled,
        disabled_reason=None if request.enabled else "Disabled by user.",
        secret_ciphertext=webhooks.secret_box(settings).encrypt(secret, context=endpoint_id),
        secret_hint=webhooks.secret_hint(secret),
    )
    session.add(row)
    session.commit()
    return WebhookEndpointWithSecretObject(**_fields(row), signing_secret=secret)


def list_endpoints(
    *, session: Session, org: Organization, after: str | None, limit: int
) -> CursorListResponse[WebhookEndpointObject]:
    rows, has_more = paginate(
        session,
        model=WebhookEndpoint,
        filters=[WebhookEndpoint.organization_id == org.id],
        after=after,
        limit=limit,
    )
    data = [endpoint_object(r) for r in rows]
    return CursorListResponse[WebhookEndpointObject](
        data=data,
        has_more=has_more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


def retrieve_endpoint(*, session: Session, org: Organization, endpoint_id: str) -> WebhookEndpointObject:
    return endpoint_object(_endpoint(session, org=org, endpoint_id=endpoint_id))


def update_endpoint(
    *,
    session: Session,
    settings: Settings,
    org: Organization,
    endpoint_id: str,
    request: UpdateWebhookEndpointRequest,
) -> WebhookEndpointObject:
    row = _endpoint(session, org=org, endpoint_id=endpoint_id)
    sent = request.model_fields_set
    for name in ("url", "name", "enabled"):
        if name in sent and getattr(request, name) is None:
            raise InvalidRequestError(f"'{name}' cannot be null.", param=name)
    subscription = _subscription(request.events, request.event_types)
    changed = False
    if request.url is not None and request.url.strip() != row.url:
        row.url = check_url(settings, request.url)
        changed = True
    if subscription is not _UNSET and subscription != row.events:
        row.events = subscription
        changed = True
    if request.name is not None and request.name != row.name:
        row.name = request.name
        changed = True
    if "description" in sent and request.description != row.description:
        row.description = request.description
        changed = True
    if request.enabled is True and not row.enabled:
        row.enabled, row.disabled_reason = True, None
        changed = True
    if changed:
        row.updated_at = int(time.time())
        session.add(row)
    if request.enabled is False and row.enabled:
        webhooks.disable_endpoint(session, endpoint_id=row.id, reason="Disabled by user.")
    session.commit()
    session.refresh(row)
    return endpoint_object(row)


def delete_endpoint(*, session: Session, org: Organization, endpoint_id: str) -> WebhookEndpointDeleted:
    row = _endpoint(session, org=org, endpoint_id=endpoint_id)
    # Its pending deliveries go with it: nothing is sent to a deleted endpoint.
    session.execute(delete(WebhookDeliveryAttempt).where(col(WebhookDeliveryAttempt.endpoint_id) == row.id))
    session.execute(delete(WebhookDelivery).where(col(WebhookDelivery.endpoint_id) == row.id))
    session.delete(row)
    session.commit()
    return WebhookEndpointDeleted(id=endpoint_id)


def rotate_secret(
    *, session: Session, settings: Settings, org: Organization, endpoint_id: str, keep_old: bool
) -> WebhookEndpointWithSecretObject:
    row = _endpoint(session, org=org, endpoint_id=endpoint_id)
    secret = webhooks.new_secret()
    now = int(time.time())
    if keep_old:
        row.previous_secret_ciphertext = row.secret_ciphertext
        row.previous_secret_expires_at = now + webhooks.ROTATION_OVERLAP_S
    else:
        row.previous_secret_ciphertext, row.previous_secret_expires_at = None, None
    row.secret_ciphertext = webhooks.secret_box(settings).encrypt(secret, context=row.id)
    row.secret_hint = webhooks.secret_hint(secret)
    row.updated_at = now
    session.add(row)
    session.commit()
    return WebhookEndpointWithSecretObject(**_fields(row), signing_secret=secret)


def list_deliveries(
    *,
    session: Session,
    org: Organization,
    endpoint_id: str,
    after: str | None,
    limit: int,
    event_id: str | None,
) -> CursorListResponse[WebhookDeliveryAttemptObject]:
    endpoint = _endpoint(session, org=org, endpoint_id=endpoint_id)
    filters: list[Any] = [WebhookDeliveryAttempt.endpoint_id == endpoint.id]
    if event_id:
        filters.append(WebhookDeliveryAttempt.event_id == event_id)
    rows, has_more = paginate(
        session, model=WebhookDeliveryAttempt, filters=filters, after=after, limit=limit
    )
    delivery_ids = {r.delivery_id for r in rows}
    status = (
        dict(
            session.exec(
                select(WebhookDelivery.id, WebhookDelivery.status).where(
                    col(WebhookDelivery.id).in_(delivery_ids)
                )
            ).all()
        )
        if delivery_ids
        else {}
    )
    data = [
        WebhookDeliveryAttemptObject(
            id=r.id,
            webhook_endpoint_id=r.endpoint_id,
            event_id=r.event_id,
            event_type=r.event_type,
            attempt=r.attempt,
            status=r.status,
            response_status_code=r.response_status_code,
            latency_ms=r.latency_ms,
            error=r.error,
            response_body=r.response_body,
            created_at=r.created_at,
            next_retry_at=r.next_retry_at,
            delivery_status=status.get(r.delivery_id, webhooks.CANCELLED),
        )
        for r in rows
    ]
    return CursorListResponse[WebhookDeliveryAttemptObject](
        data=data,
        has_more=has_more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


def send_test(
    *, session: Session, settings: Settings, org: Organization, endpoint_id: str, event_type: str
) -> WebhookEndpointTestResultObject:
    """Send one sample event now, signed like a real one, and report the receiver's answer. Not retried,
    not logged as a delivery. The job id in it (`ftjob-test...`) does not exist."""
    if event_type not in webhooks.EVENT_TYPES:
        raise InvalidRequestError(
            f"Unknown event type {event_type!r}; known types: {', '.join(webhooks.EVENT_TYPES)}.",
            param="event_type",
            code="invalid_event_type",
        )
    row = _endpoint(session, org=org, endpoint_id=endpoint_id)
    box = webhooks.secret_box(settings)
    try:
        active = [box.decrypt(row.secret_ciphertext, context=row.id)]
        if row.previous_secret_ciphertext and (row.previous_secret_expires_at or 0) > time.time():
            active.append(box.decrypt(row.previous_secret_ciphertext, context=row.id))
    except ValueError as exc:  # the server's FTSERVE_WEBHOOK_SECRET_KEY changed: an operator problem
        raise ServiceUnavailableError(f"Cannot sign webhooks: {exc}.") from None
    msg_id = webhooks.event_id()
    body = webhooks.event_payload(
        id=msg_id, type=event_type, created_at=int(time.time()), data={"id": ids.new_id("ftjob-test")}
    ).encode()
    headers = webhooks.webhook_headers(active, msg_id=msg_id, body=body)

    async def _send() -> webhook_sender.SendResult:
        async with webhook_sender.make_client(
            timeout_s=settings.webhook_timeout_s, connect_timeout_s=settings.webhook_connect_timeout_s
        ) as client:
            return await webhook_sender.post_signed(
                client,
                row.url,
                body=body,
                headers=headers,
                allow_private=settings.webhook_allow_private,
                allow_http=settings.webhook_allow_http,
                timeout_s=settings.webhook_timeout_s,
            )

    result = asyncio.run(_send())  # sync route: FastAPI runs it in a worker thread with no event loop
    if result.status_code is None:
        raise InvalidRequestError(
            f"The test event could not be delivered to {row.url}: {result.error}",
            param="webhook_endpoint_id",
            code="webhook_unreachable",
        )
    return WebhookEndpointTestResultObject(
        webhook_endpoint_id=row.id,
        event_type=event_type,
        status_code=result.status_code,
        latency_ms=result.latency_ms,
        response_body=result.response_excerpt,
    )
