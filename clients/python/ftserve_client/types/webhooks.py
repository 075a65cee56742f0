"""Webhook event payloads and the endpoints that receive them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .._models import BaseModel

__all__ = [
    "WebhookEvent",
    "WebhookEndpoint",
    "WebhookEndpointWithSecret",
    "WebhookEndpointDeleted",
    "WebhookDeliveryAttempt",
    "WebhookTestResult",
]


class WebhookEvent(BaseModel):
    """OpenAI's thin payload: fetch the object named in `data.id` for details."""

    id: str
    object: Literal["event"] = "event"
    type: str
    """e.g. fine_tuning.job.succeeded, fine_tuning.job.failed, fine_tuning.job.model.ready"""
    created_at: int
    data: dict[str, Any] = Field(default_factory=dict)


class WebhookEndpoint(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    created_at: int
    updated_at: int | None = None
    url: str
    name: str
    event_types: list[str]
    events: list[str] | Literal["all"]
    """The subscribed types, or "all" (future types included)."""
    signing_secret_hint: str | None = None
    description: str | None = None
    enabled: bool
    disabled_reason: str | None = None
    previous_secret_expires_at: int | None = None
    """During a rotation: when the old secret stops signing."""


class WebhookEndpointWithSecret(WebhookEndpoint):
    signing_secret: str
    """`whsec_...`: shown only at creation and rotation; store it now."""


class WebhookEndpointDeleted(BaseModel):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool


class WebhookDeliveryAttempt(BaseModel):
    id: str
    object: Literal["webhook_endpoint.delivery_attempt"] = "webhook_endpoint.delivery_attempt"
    webhook_endpoint_id: str
    event_id: str
    """The `webhook-id` header: the same on every attempt of one event."""
    event_type: str
    attempt: int
    status: Literal["succeeded", "failed"]
    response_status_code: int | None = None
    latency_ms: int | None = None
    error: str | None = None
    response_body: str | None = None
    created_at: int
    next_retry_at: int | None = None
    delivery_status: Literal["pending", "delivered", "failed", "cancelled"]


class WebhookTestResult(BaseModel):
    object: Literal["webhook_endpoint.test"] = "webhook_endpoint.test"
    webhook_endpoint_id: str
    event_type: str
    status_code: int
    success: bool = True
    latency_ms: int | None = None
    response_body: str | None = None
