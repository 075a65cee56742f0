"""/v1/webhook_endpoints and /v1/webhook_event_types: the official SDK's `client.webhooks.*` calls, plus
PATCH for updates and the delivery-attempt log."""

from __future__ import annotations

from fastapi import APIRouter, Body, Query

from api.deps import CurrentOrg, SessionDep, SettingsDep
from api.protocol import (
    CreateWebhookEndpointRequest,
    CursorListResponse,
    ErrorResponse,
    RotateWebhookSecretRequest,
    UpdateWebhookEndpointRequest,
    WebhookDeliveryAttemptObject,
    WebhookEndpointDeleted,
    WebhookEndpointObject,
    WebhookEndpointTestResultObject,
    WebhookEndpointWithSecretObject,
    WebhookEventTypeList,
    WebhookTestRequest,
)
from api.services import webhooks as service

router = APIRouter(
    prefix="/v1",
    tags=["webhooks"],
    responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)


@router.get("/webhook_event_types", response_model=WebhookEventTypeList)
def list_event_types(org: CurrentOrg) -> WebhookEventTypeList:
    return service.event_types()


@router.post("/webhook_endpoints", response_model=WebhookEndpointWithSecretObject)
def create_endpoint(
    body: CreateWebhookEndpointRequest, org: CurrentOrg, session: SessionDep, settings: SettingsDep
) -> WebhookEndpointWithSecretObject:
    return service.create_endpoint(session=session, settings=settings, org=org, request=body)


@router.get("/webhook_endpoints", response_model=CursorListResponse[WebhookEndpointObject])
def list_endpoints(
    org: CurrentOrg,
    session: SessionDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
) -> CursorListResponse[WebhookEndpointObject]:
    return service.list_endpoints(session=session, org=org, after=after, limit=limit)


@router.get("/webhook_endpoints/{endpoint_id}", response_model=WebhookEndpointObject)
def retrieve_endpoint(endpoint_id: str, org: CurrentOrg, session: SessionDep) -> WebhookEndpointObject:
    return service.retrieve_endpoint(session=session, org=org, endpoint_id=endpoint_id)


@router.post("/webhook_endpoints/{endpoint_id}", response_model=WebhookEndpointObject)
@router.patch("/webhook_endpoints/{endpoint_id}", response_model=WebhookEndpointObject)
def update_endpoint(
    endpoint_id: str,
    body: UpdateWebhookEndpointRequest,
    org: CurrentOrg,
    session: SessionDep,
    settings: SettingsDep,
) -> WebhookEndpointObject:
    return service.update_endpoint(
        session=session, settings=settings, org=org, endpoint_id=endpoint_id, request=body
    )


@router.delete("/webhook_endpoints/{endpoint_id}", response_model=WebhookEndpointDeleted)
def delete_endpoint(endpoint_id: str, org: CurrentOrg, session: SessionDep) -> WebhookEndpointDeleted:
    return service.delete_endpoint(session=session, org=org, endpoint_id=endpoint_id)


@router.post("/webhook_endpoints/{endpoint_id}/rotate_secret", response_model=WebhookEndpointWithSecretObject)
def rotate_secret(
    endpoint_id: str,
    org: CurrentOrg,
    session: SessionDep,
    settings: SettingsDep,
    body: RotateWebhookSecretRequest | None = Body(None),
) -> WebhookEndpointWithSecretObject:
    keep_old = body.keep_old_secret_active_for_24_hours if body is not None else True
    return service.rotate_secret(
        session=session, settings=settings, org=org, endpoint_id=endpoint_id, keep_old=keep_old
    )


@router.post("/webhook_endpoints/{endpoint_id}/test", response_model=WebhookEndpointTestResultObject)
def test_endpoint(
    endpoint_id: str, body: WebhookTestRequest, org: CurrentOrg, session: SessionDep, settings: SettingsDep
) -> WebhookEndpointTestResultObject:
    return service.send_test(
        session=session, settings=settings, org=org, endpoint_id=endpoint_id, event_type=body.event_type
    )


@router.get(
    "/webhook_endpoints/{endpoint_id}/deliveries",
    response_model=CursorListResponse[WebhookDeliveryAttemptObject],
)
def list_deliveries(
    endpoint_id: str,
    org: CurrentOrg,
    session: SessionDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    event_id: str | None = Query(None, description="Only the attempts of this event (webhook-id)."),
) -> CursorListResponse[WebhookDeliveryAttemptObject]:
    return service.list_deliveries(
        session=session, org=org, endpoint_id=endpoint_id, after=after, limit=limit, event_id=event_id
    )
