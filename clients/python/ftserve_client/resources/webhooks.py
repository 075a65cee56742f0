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

from .._exceptions import InvalidWebhookSignatureError
from .._resource import AsyncAPIResource, SyncAPIResource
from ..types.webhooks import WebhookEvent

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


class Webhooks(SyncAPIResource, _WebhooksMixin):
    @property
    def _secret(self) -> str | None:  # type: ignore[override]
        return self._client.webhook_secret


class AsyncWebhooks(AsyncAPIResource, _WebhooksMixin):
    """Verification is CPU-only, so the async twin's methods are plain (not coroutines)."""

    @property
    def _secret(self) -> str | None:  # type: ignore[override]
        return self._client.webhook_secret
