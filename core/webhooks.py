"""Webhooks: event types, the outbox, Standard Webhooks signing, secrets at rest, and the retry schedule.

The outbox: `record_event` runs inside the transaction that changes a job, and writes one `WebhookEvent`
(the exact JSON body that will be signed) plus one `WebhookDelivery` per subscribed, enabled endpoint. The
scheduler's dispatcher (scheduler/webhooks.py) sends them. A status change and its webhook commit together
or not at all, so no event is lost and none is invented.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import random
import secrets
import time
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from core import ids
from core.models import FineTuningJob, WebhookDelivery, WebhookEndpoint, WebhookEvent
from core.settings import Settings

# OpenAI's three (exact strings, double "l" in cancelled) and ours.
JOB_SUCCEEDED = "fine_tuning.job.succeeded"
JOB_FAILED = "fine_tuning.job.failed"
JOB_CANCELLED = "fine_tuning.job.cancelled"
JOB_RUNNING = "fine_tuning.job.running"
CHECKPOINT_CREATED = "fine_tuning.job.checkpoint.created"
MODEL_READY = "fine_tuning.job.model.ready"
EVENT_TYPES: tuple[str, ...] = (
    JOB_SUCCEEDED,
    JOB_FAILED,
    JOB_CANCELLED,
    JOB_RUNNING,
    CHECKPOINT_CREATED,
    MODEL_READY,
)
# The job status whose arrival fires each event (core.jobs.transition looks this up).
EVENT_FOR_STATUS = {
    "succeeded": JOB_SUCCEEDED,
    "failed": JOB_FAILED,
    "cancelled": JOB_CANCELLED,
    "running": JOB_RUNNING,
}

# Delivery states.
PENDING, DELIVERED, FAILED, CANCELLED = "pending", "delivered", "failed", "cancelled"

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # Standard Webhooks: 24-64 random bytes
ROTATION_OVERLAP_S = 24 * 3600


def event_id() -> str:
    return ids.new_id("evt_")


def endpoint_id() -> str:
    return ids.new_id("whep_")


def attempt_id() -> str:
    return ids.new_id("whatt_")


# -- the outbox ------------------------------------------------------------------------------------------------


def event_payload(*, id: str, type: str, created_at: int, data: dict[str, Any]) -> str:
    """OpenAI's thin event, minified. These exact bytes are signed and sent, and never re-serialized."""
    body = {"id": id, "object": "event", "type": type, "created_at": created_at, "data": data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def record_event(
    session: Session,
    *,
    organization_id: str,
    type: str,
    job_id: str,
    data: dict[str, Any] | None = None,
    created_at: int | None = None,
) -> str | None:
    """Queue event `type` about `job_id` for every enabled endpoint of the org that subscribes to it, in the
    caller's transaction. `data` adds fields beside `data.id` (our own events only). Returns the event id, or
    None when no endpoint wants it (then nothing is written)."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {type!r}")
    endpoints = session.exec(
        select(WebhookEndpoint.id, WebhookEndpoint.events).where(
            WebhookEndpoint.organization_id == organization_id, col(WebhookEndpoint.enabled).is_(True)
        )
    ).all()
    subscribed = [eid for eid, events in endpoints if events is None or type in events]
    if not subscribed:
        return None
    created = created_at if created_at is not None else int(time.time())
    eid_ = event_id()
    event = WebhookEvent(
        id=eid_,
        organization_id=organization_id,
        type=type,
        job_id=job_id,
        created_at=created,
        payload=event_payload(id=eid_, type=type, created_at=created, data={"id": job_id, **(data or {})}),
    )
    session.add(event)
    now = time.time()
    for eid in subscribed:
        session.add(
            WebhookDelivery(
                id=ids.new_id("whdl_"),
                event_id=event.id,
                endpoint_id=eid,
                organization_id=organization_id,
                status=PENDING,
                next_attempt_at=now,
                created_at=int(now),
            )
        )
    return event.id


def record_job_event(
    session: Session, *, job_id: str, type: str, data: dict[str, Any] | None = None
) -> str | None:
    """`record_event` for callers that know only the job: one indexed lookup of its organization."""
    organization_id = session.exec(
        select(FineTuningJob.organization_id).where(FineTuningJob.id == job_id)
    ).first()
    if organization_id is None:
        return None
    return record_event(session, organization_id=organization_id, type=type, job_id=job_id, data=data)


def disable_endpoint(session: Session, *, endpoint_id: str, reason: str) -> None:
    """Stop sending to an endpoint: disable it and cancel what it still had pending (in the caller's
    transaction). Re-enabling it sends new events only."""
    session.execute(
        update(WebhookEndpoint)
        .where(col(WebhookEndpoint.id) == endpoint_id)
        .values(enabled=False, disabled_reason=reason, updated_at=int(time.time()))
    )
    session.execute(
        update(WebhookDelivery)
        .where(col(WebhookDelivery.endpoint_id) == endpoint_id, col(WebhookDelivery.status) == PENDING)
        .values(status=CANCELLED, last_error=f"Cancelled: {reason}", lease_owner=None, lease_expires_at=None)
    )


# -- signing (Standard Webhooks v1, as OpenAI and openai-python do it) ----------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_hint(secret: str) -> str:
    return f"{SECRET_PREFIX}...{secret[-4:]}"


def _key(secret: str) -> bytes:
    return (
        base64.b64decode(secret[len(SECRET_PREFIX) :])
        if secret.startswith(SECRET_PREFIX)
        else secret.encode()
    )


def sign(secret: str, *, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")), the key being the secret's decoded bytes."""
    raw = body.encode() if isinstance(body, str) else body
    message = f"{msg_id}.{timestamp}.".encode() + raw
    return base64.b64encode(hmac.new(_key(secret), message, hashlib.sha256).digest()).decode()


def signature_header(secrets_: list[str], *, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """`v1,<sig>` for each active secret, space-separated (during a rotation both the new and old sign)."""
    return " ".join(f"v1,{sign(s, msg_id=msg_id, timestamp=timestamp, body=body)}" for s in secrets_)


def webhook_headers(
    secrets_: list[str], *, msg_id: str, body: bytes | str, timestamp: int | None = None
) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature_header(secrets_, msg_id=msg_id, timestamp=ts, body=body),
    }


def verify(
    secret: str,
    *,
    body: bytes | str,
    headers: dict[str, str],
    tolerance_s: int = 300,
    now: float | None = None,
) -> bool:
    """The receiver's check (for our tests and tools): timestamp within tolerance, any `v1,` entry matches."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, ts = lower["webhook-id"], int(lower["webhook-timestamp"])
        signatures = lower["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        return False
    expected = sign(secret, msg_id=msg_id, timestamp=ts, body=body)
    return any(hmac.compare_digest(expected, s.removeprefix("v1,")) for s in signatures)


# -- secrets at rest -------------------------------------------------------------------------------------------


class SecretBox:
    """AES-256-GCM for signing secrets in the database. HMAC needs the secret itself, so it cannot be
    hashed like an API key; a database dump without the key reveals none. The endpoint id is the associated
    data, so a ciphertext copied onto another endpoint's row does not decrypt."""

    VERSION = "v1:"

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if len(key) != 32:
            raise ValueError("the webhook secret key must be 32 bytes")
        self._aead = AESGCM(key)

    def encrypt(self, plaintext: str, *, context: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), context.encode())
        return self.VERSION + base64.b64encode(nonce + sealed).decode()

    def decrypt(self, ciphertext: str, *, context: str) -> str:
        from cryptography.exceptions import InvalidTag

        if not ciphertext.startswith(self.VERSION):
            raise ValueError("unknown webhook secret encoding")
        raw = base64.b64decode(ciphertext[len(self.VERSION) :])
        try:
            return self._aead.decrypt(raw[:12], raw[12:], context.encode()).decode()
        except InvalidTag:
            raise ValueError(
                "the webhook signing secret cannot be decrypted: FTSERVE_WEBHOOK_SECRET_KEY differs from the "
                "key it was stored with"
            ) from None


def load_secret_key(*, configured: str | None, data_dir: Path) -> bytes:
    """FTSERVE_WEBHOOK_SECRET_KEY (any string, hashed to 32 bytes) or else a random key kept in
    DATA_DIR/webhook_secret.key (created once, mode 0600, shared by every process of one `ftserve up`)."""
    if configured:
        return hashlib.sha256(b"ftserve-webhook-secrets\0" + configured.encode()).digest()
    path = data_dir / "webhook_secret.key"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process may be writing it right now
            text = path.read_text().strip()
            if text:
                return base64.b64decode(text)
            time.sleep(0.02)
        raise RuntimeError(f"{path} is empty; delete it or set FTSERVE_WEBHOOK_SECRET_KEY") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    return base64.b64decode(path.read_text().strip())


# -- retry schedule --------------------------------------------------------------------------------------------


def retry_delay(
    attempts: int,
    *,
    base_s: float,
    factor: float,
    max_interval_s: float,
    jitter: float = 0.2,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after the `attempts`-th failed attempt: base·factor^(attempts-1), capped, ±jitter."""
    raw = min(base_s * factor ** max(0, attempts - 1), max_interval_s)
    spread = (rng or random).uniform(1 - jitter, 1 + jitter)
    return max(0.0, raw * spread)


def secret_box(settings: Settings) -> SecretBox:
    return SecretBox(load_secret_key(configured=settings.webhook_secret_key, data_dir=settings.data_dir))
