"""Verify ftserve's webhooks: Standard Webhooks signing, as OpenAI's are.

The sender signs `{webhook-id}.{webhook-timestamp}.{body}` with HMAC-SHA256 under the endpoint's secret
(`whsec_` + base64 key) and sends `webhook-signature: v1,<base64>`; during a secret rotation it sends two
signatures, space separated. Pass the raw body bytes exactly as received: re-serialised JSON won't verify.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from .._exceptions import InvalidWebhookSignatureError
from .._resource import AsyncAPIResource, SyncAPIResource
from ..pagination import AsyncPaginator, SyncCursorPage
from ..types.webhooks import (
    WebhookDeliveryAttempt,
    WebhookEndpoint,
    WebhookEndpointDeleted,
    WebhookEndpointWithSecret,
    WebhookEvent,
    WebhookTestResult,
)

__all__ = ["Webhooks", "AsyncWebhooks", "verify_signature", "sign"]

DEFAULT_TOLERANCE_S = 300


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise InvalidWebhookSignatureError(f"Missing required header: {name}")


def _key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_") :], validate=True)
        except binascii.Error:
            raise InvalidWebhookSignatureError(
                "The webhook secret is not valid base64 after 'whsec_'."
            ) from None
    return secret.encode()


def sign(payload: str | bytes, *, secret: str, webhook_id: str, timestamp: int) -> str:
    """The `v1,<base64>` signature of a payload: what a sender puts in `webhook-signature`."""
    body = payload.encode() if isinstance(payload, str) else payload
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest()).decode()


def verify_signature(
    payload: str | bytes,
    headers: Mapping[str, str],
    *,
    secret: str,
    tolerance: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Raise InvalidWebhookSignatureError unless one `v1` signature matches and the timestamp is within
    `tolerance` seconds of now (either way: replays and clock-skewed forgeries are both refused)."""
    webhook_id = _header(headers, "webhook-id")
    timestamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise InvalidWebhookSignatureError("Invalid webhook-timestamp: not an integer.") from None
    current = int(now if now is not None else time.time())
    if current - sent_at > tolerance:
        raise InvalidWebhookSignatureError("Webhook timestamp is too old.")
    if sent_at - current > tolerance:
        raise InvalidWebhookSignatureError("Webhook timestamp is too new.")
    expected = sign(payload, secret=secret, webhook_id=webhook_id, timestamp=sent_at).removeprefix("v1,")
    # Versions other than v1 (e.g. v1a, asymmetric) are skipped, as the Standard Webhooks spec says.
    candidates = [s[3:] for s in signatures.split() if s.startswith("v1,")]
    if not any(hmac.compare_digest(expected.encode(), c.encode()) for c in candidates):
        raise InvalidWebhookSignatureError("The webhook signature does not match the expected signature.")


class _WebhooksMixin:
    _secret: str | None

    def verify(
        self,
        payload: str | bytes,
        headers: Mapping[str, str],
        *,
        secret: str | None = None,
        tolerance: int = DEFAULT_TOLERANCE_S,
    ) -> None:
        """Check a delivery's signature; raises InvalidWebhookSignatureError if it is not from ftserve.
        `secret` defaults to the client's `webhook_secret` (FTSERVE_WEBHOOK_SECRET)."""
        secret = secret if secret is not None else self._secret
        if not secret:
            raise ValueError(
                "No webhook secret: pass secret=, set webhook_secret= on the client, or FTSERVE_WEBHOOK_SECRET."
            )
        verify_signature(payload, headers, secret=secret, tolerance=tolerance)

    def unwrap(
        self,
        payload: str | bytes,
        headers: Mapping[str, str],
        *,
        secret: str | None = None,
        tolerance: int = DEFAULT_TOLERANCE_S,
    ) -> WebhookEvent:
        """Verify, then parse the event: `{id, object: "event", type, created_at, data: {id}}`."""
        self.verify(payload, headers, secret=secret, tolerance=tolerance)
        return WebhookEvent.model_validate(json.loads(payload))


def _endpoint_body(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


class Webhooks(SyncAPIResource, _WebhooksMixin):
    """Verify deliveries (`verify`, `unwrap`) and manage the endpoints that receive them."""

    @property
    def _secret(self) -> str | None:  # type: ignore[override]
        return self._client.webhook_secret

    def create(
        self,
        *,
        url: str,
        event_types: list[str] | None = None,
        name: str | None = None,
        description: str | None = None,
        enabled: bool | None = None,
    ) -> WebhookEndpointWithSecret:
        """Add an endpoint; `event_types` None means every type, future ones included. The returned
        `signing_secret` is shown this once."""
        body = _endpoint_body(
            url=url, event_types=event_types, name=name, description=description, enabled=enabled
        )
        return self._client._post("webhook_endpoints", WebhookEndpointWithSecret, body=body)

    def retrieve(self, webhook_endpoint_id: str) -> WebhookEndpoint:
        return self._client._get(f"webhook_endpoints/{webhook_endpoint_id}", WebhookEndpoint)

    def update(
        self,
        webhook_endpoint_id: str,
        *,
        url: str | None = None,
        event_types: list[str] | None = None,
        name: str | None = None,
        description: str | None = None,
        enabled: bool | None = None,
    ) -> WebhookEndpoint:
        body = _endpoint_body(
            url=url, event_types=event_types, name=name, description=description, enabled=enabled
        )
        return self._client._post(f"webhook_endpoints/{webhook_endpoint_id}", WebhookEndpoint, body=body)

    def delete(self, webhook_endpoint_id: str) -> WebhookEndpointDeleted:
        return self._client._delete(f"webhook_endpoints/{webhook_endpoint_id}", WebhookEndpointDeleted)

    def rotate_secret(
        self, webhook_endpoint_id: str, *, keep_old_secret_active_for_24_hours: bool = True
    ) -> WebhookEndpointWithSecret:
        """A new secret, returned once. By default the old one keeps signing for 24 h as well, so
        receivers can switch without losing events (`verify` accepts either)."""
        return self._client._post(
            f"webhook_endpoints/{webhook_endpoint_id}/rotate_secret",
            WebhookEndpointWithSecret,
            body={"keep_old_secret_active_for_24_hours": keep_old_secret_active_for_24_hours},
        )

    def test(self, webhook_endpoint_id: str, *, event_type: str) -> WebhookTestResult:
        """Send one signed sample event now; returns the receiver's answer."""
        return self._client._post(
            f"webhook_endpoints/{webhook_endpoint_id}/test",
            WebhookTestResult,
            body={"event_type": event_type},
        )

    def list(self, *, after: str | None = None, limit: int | None = None) -> SyncCursorPage[WebhookEndpoint]:
        return self._client._get_api_list(
            "webhook_endpoints", WebhookEndpoint, params={"after": after, "limit": limit}
        )

    def list_deliveries(
        self,
        webhook_endpoint_id: str,
        *,
        event_id: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> SyncCursorPage[WebhookDeliveryAttempt]:
        """Every delivery attempt, newest first; `event_id` (the `webhook-id`) keeps one event's."""
        return self._client._get_api_list(
            f"webhook_endpoints/{webhook_endpoint_id}/deliveries",
            WebhookDeliveryAttempt,
            params={"event_id": event_id, "after": after, "limit": limit},
        )


class AsyncWebhooks(AsyncAPIResource, _WebhooksMixin):
    """`verify` and `unwrap` are CPU-only, so they are plain methods here too; the rest are coroutines."""

    @property
    def _secret(self) -> str | None:  # type: ignore[override]
        return self._client.webhook_secret

    async def create(
        self,
        *,
        url: str,
        event_types: list[str] | None = None,
        name: str | None = None,
        description: str | None = None,
        enabled: bool | None = None,
    ) -> WebhookEndpointWithSecret:
        body = _endpoint_body(
            url=url, event_types=event_types, name=name, description=description, enabled=enabled
        )
        return await self._client._post("webhook_endpoints", WebhookEndpointWithSecret, body=body)

    async def retrieve(self, webhook_endpoint_id: str) -> WebhookEndpoint:
        return await self._client._get(f"webhook_endpoints/{webhook_endpoint_id}", WebhookEndpoint)

    async def update(
        self,
        webhook_endpoint_id: str,
        *,
        url: str | None = None,
        event_types: list[str] | None = None,
        name: str | None = None,
        description: str | None = None,
        enabled: bool | None = None,
    ) -> WebhookEndpoint:
        body = _endpoint_body(
            url=url, event_types=event_types, name=name, description=description, enabled=enabled
        )
        return await self._client._post(
            f"webhook_endpoints/{webhook_endpoint_id}", WebhookEndpoint, body=body
        )

    async def delete(self, webhook_endpoint_id: str) -> WebhookEndpointDeleted:
        return await self._client._delete(f"webhook_endpoints/{webhook_endpoint_id}", WebhookEndpointDeleted)

    async def rotate_secret(
        self, webhook_endpoint_id: str, *, keep_old_secret_active_for_24_hours: bool = True
    ) -> WebhookEndpointWithSecret:
        return await self._client._post(
            f"webhook_endpoints/{webhook_endpoint_id}/rotate_secret",
            WebhookEndpointWithSecret,
            body={"keep_old_secret_active_for_24_hours": keep_old_secret_active_for_24_hours},
        )

    async def test(self, webhook_endpoint_id: str, *, event_type: str) -> WebhookTestResult:
        return await self._client._post(
            f"webhook_endpoints/{webhook_endpoint_id}/test",
            WebhookTestResult,
            body={"event_type": event_type},
        )

    def list(self, *, after: str | None = None, limit: int | None = None) -> AsyncPaginator[WebhookEndpoint]:
        return self._client._get_api_list(
            "webhook_endpoints", WebhookEndpoint, params={"after": after, "limit": limit}
        )

    def list_deliveries(
        self,
        webhook_endpoint_id: str,
        *,
        event_id: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> AsyncPaginator[WebhookDeliveryAttempt]:
        return self._client._get_api_list(
            f"webhook_endpoints/{webhook_endpoint_id}/deliveries",
            WebhookDeliveryAttempt,
            params={"event_id": event_id, "after": after, "limit": limit},
        )
