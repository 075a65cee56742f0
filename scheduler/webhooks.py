"""Webhook delivery: the scheduler sends what the outbox (core.webhooks.record_event) holds.

- At least once: a delivery row leaves `pending` only after a 2xx (or when retries run out, or the endpoint is
  gone). Every attempt of an event carries the same `webhook-id`, so receivers can deduplicate.
- Leases: a dispatcher claims one delivery at a time with a compare-and-set lease; another scheduler skips
  it until the lease lapses. A killed scheduler's deliveries are sent again by whoever runs next.
- Independence: each endpoint gets its own task that sends its due deliveries one after another, so a slow or
  dead endpoint holds only its own task; at most `webhook_max_concurrency` endpoints are served at once.
- Retries: exponential backoff with jitter (`webhook_retry_*` settings), honouring Retry-After on 429/503,
  until `webhook_retry_window_s` (3 days) after the event; 410 Gone disables the endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import ColumnElement, CursorResult, delete, or_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core import metrics, netguard, webhook_sender, webhooks
from core.db import session_scope
from core.models import WebhookDelivery, WebhookDeliveryAttempt, WebhookEndpoint, WebhookEvent
from core.settings import Settings

log = logging.getLogger("ftserve.scheduler.webhooks")
PRUNE_EVERY_S = 3600.0


@dataclass(frozen=True)
class Claimed:
    """A delivery this dispatcher holds the lease on, with what sending it needs."""

    delivery_id: str
    token: str
    attempts: int
    event_id: str
    event_type: str
    event_created_at: int
    payload: str
    endpoint_id: str
    url: str
    secrets: list[str]


def _rowcount(session: Session, statement: Any) -> int:
    result: CursorResult[Any] = session.execute(statement)  # type: ignore[assignment]
    return int(result.rowcount)


def _unleased(now: float) -> ColumnElement[bool]:
    return or_(col(WebhookDelivery.lease_expires_at).is_(None), col(WebhookDelivery.lease_expires_at) < now)


class WebhookDispatcher:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        resolver: netguard.Resolver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        owner: str | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.resolver = resolver
        self.box = webhooks.secret_box(settings)
        self.owner = (owner or f"{socket.gethostname()}-{os.getpid()}")[:40]
        self.client = webhook_sender.make_client(
            timeout_s=settings.webhook_timeout_s,
            connect_timeout_s=settings.webhook_connect_timeout_s,
            transport=transport,
        )
        self.busy: set[str] = set()  # endpoints with a sender task running
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self._pruned_at = time.monotonic() - PRUNE_EVERY_S + 60  # first prune a minute after start

    # -- the loop ------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.settings.webhook_poll_interval_s
        log.info("webhook dispatcher started (every %gs, owner %s)", interval, self.owner)
        try:
            while not stop.is_set():
                try:
                    await self.dispatch_once()
                    if time.monotonic() - self._pruned_at > PRUNE_EVERY_S:
                        self._pruned_at = time.monotonic()
                        await asyncio.to_thread(self.prune)
                except Exception:
                    log.exception("webhook dispatch failed; retrying in %.1fs", interval)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=interval)
                except TimeoutError:
                    pass
        finally:
            await self.close(grace_s=self.settings.webhook_timeout_s + 1)

    async def close(self, grace_s: float = 0.0) -> None:
        """Let sends in flight finish (up to `grace_s`), then cancel the rest; their leases lapse and another
        dispatcher (or this one after a restart) sends them again with the same webhook-id."""
        self.stopping = True
        if self.tasks:
            _done, pending = await asyncio.wait(set(self.tasks), timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await self.client.aclose()

    async def dispatch_once(self) -> int:
        """Start a sender task for every endpoint that has due deliveries and none running yet."""
        room = self.settings.webhook_max_concurrency - len(self.busy)
        if room <= 0 or self.stopping:
            return 0
        endpoint_ids = await asyncio.to_thread(self._due_endpoints, room, set(self.busy))
        for endpoint_id in endpoint_ids:
            self.busy.add(endpoint_id)
            task = asyncio.create_task(self._serve_endpoint(endpoint_id), name=f"webhooks:{endpoint_id}")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return len(endpoint_ids)

    async def wait_idle(self) -> None:
        while self.tasks:
            await asyncio.wait(set(self.tasks))

    async def deliver_due(self) -> None:
        """One round, waited for: send everything due now (tests and tools)."""
        await self.dispatch_once()
        await self.wait_idle()

    async def _serve_endpoint(self, endpoint_id: str) -> None:
        try:
            while not self.stopping:
                claimed = await asyncio.to_thread(self._claim_next, endpoint_id)
                if claimed is None:
                    return
                await self._deliver(claimed)
        except Exception:
            log.exception(
                "webhook sender for %s failed; its deliveries are retried after the lease", endpoint_id
            )
        finally:
            self.busy.discard(endpoint_id)

    # -- one delivery --------------------------------------------------------------------------------------

    async def _deliver(self, claimed: Claimed) -> None:
        body = claimed.payload.encode()
        headers = webhooks.webhook_headers(claimed.secrets, msg_id=claimed.event_id, body=body)
        result = await webhook_sender.post_signed(
            self.client,
            claimed.url,
            body=body,
            headers=headers,
            allow_private=self.settings.webhook_allow_private,
            allow_http=self.settings.webhook_allow_http,
            timeout_s=self.settings.webhook_timeout_s,
            resolver=self.resolver,
        )
        await asyncio.to_thread(self._record, claimed, result)
        if result.ok:
            log.info(
                "webhook %s (%s) delivered to %s", claimed.event_id, claimed.event_type, claimed.endpoint_id
            )
        else:
            log.warning(
                "webhook %s to %s attempt %d failed: %s",
                claimed.event_id,
                claimed.endpoint_id,
                claimed.attempts + 1,
                result.error,
            )

    # -- database (run in a thread: SQLite may wait on a lock) ---------------------------------------------

    def prune(self, *, now: float | None = None) -> int:
        """Delete finished deliveries older than the retention, their attempts, and events left with no
        delivery. Pending deliveries are never touched. Returns how many deliveries went."""
        cutoff = int((now if now is not None else time.time()) - self.settings.webhook_retention_days * 86400)
        finished = col(WebhookDelivery.status).in_([webhooks.DELIVERED, webhooks.FAILED, webhooks.CANCELLED])
        with session_scope(self.engine) as session:
            old = select(WebhookDelivery.id).where(finished, col(WebhookDelivery.created_at) < cutoff)
            session.execute(
                delete(WebhookDeliveryAttempt).where(col(WebhookDeliveryAttempt.delivery_id).in_(old))
            )
            gone = _rowcount(session, delete(WebhookDelivery).where(col(WebhookDelivery.id).in_(old)))
            session.execute(
                delete(WebhookEvent).where(
                    col(WebhookEvent.created_at) < cutoff,
                    col(WebhookEvent.id).not_in(select(WebhookDelivery.event_id)),
                )
            )
        if gone:
            log.info(
                "pruned %d webhook deliveries older than %g days", gone, self.settings.webhook_retention_days
            )
        return gone

    def _due_endpoints(self, limit: int, busy: set[str]) -> list[str]:
        now = time.time()
        with Session(self.engine) as session:
            statement = (
                select(WebhookDelivery.endpoint_id)
                .join(WebhookEndpoint, col(WebhookEndpoint.id) == col(WebhookDelivery.endpoint_id))
                .where(
                    WebhookDelivery.status == webhooks.PENDING,
                    col(WebhookDelivery.next_attempt_at) <= now,
                    _unleased(now),
                    col(WebhookEndpoint.enabled).is_(True),
                )
                .distinct()
                .limit(limit)
            )
            if busy:
                statement = statement.where(col(WebhookDelivery.endpoint_id).not_in(list(busy)))
            return list(session.exec(statement).all())

    def _claim_next(self, endpoint_id: str) -> Claimed | None:
        """Lease the oldest due delivery of `endpoint_id` (compare-and-set: two dispatchers never hold the
        same row). The UPDATE runs in its own transaction, so on SQLite it takes the write lock first."""
        now = time.time()
        with Session(self.engine) as session:
            candidates = session.exec(
                select(WebhookDelivery.id)
                .where(
                    WebhookDelivery.endpoint_id == endpoint_id,
                    WebhookDelivery.status == webhooks.PENDING,
                    col(WebhookDelivery.next_attempt_at) <= now,
                    _unleased(now),
                )
                .order_by(col(WebhookDelivery.next_attempt_at), col(WebhookDelivery.seq))
                .limit(5)
            ).all()
        for delivery_id in candidates:
            token = f"{self.owner}:{secrets.token_hex(6)}"
            with session_scope(self.engine) as session:
                won = _rowcount(
                    session,
                    update(WebhookDelivery)
                    .where(
                        col(WebhookDelivery.id) == delivery_id,
                        col(WebhookDelivery.status) == webhooks.PENDING,
                        _unleased(now),
                    )
                    .values(lease_owner=token, lease_expires_at=now + self.settings.webhook_lease_s),
                )
            if won != 1:
                continue
            claimed = self._load(delivery_id, token)
            if claimed is not None:
                return claimed
        return None

    def _load(self, delivery_id: str, token: str) -> Claimed | None:
        with Session(self.engine) as session:
            row = session.exec(
                select(WebhookDelivery, WebhookEvent, WebhookEndpoint)
                .join(WebhookEvent, col(WebhookEvent.id) == col(WebhookDelivery.event_id))
                .join(WebhookEndpoint, col(WebhookEndpoint.id) == col(WebhookDelivery.endpoint_id))
                .where(WebhookDelivery.id == delivery_id)
            ).first()
        if row is None:  # the endpoint was deleted meanwhile (its deliveries go with it)
            return None
        delivery, event, endpoint = row
        if not endpoint.enabled:
            self._finish(delivery_id, token, status=webhooks.CANCELLED, error="The endpoint is disabled.")
            return None
        try:
            active = [self.box.decrypt(endpoint.secret_ciphertext, context=endpoint.id)]
            if (
                endpoint.previous_secret_ciphertext
                and endpoint.previous_secret_expires_at
                and endpoint.previous_secret_expires_at > time.time()
            ):
                active.append(self.box.decrypt(endpoint.previous_secret_ciphertext, context=endpoint.id))
        except ValueError as exc:
            # Misconfigured key: keep the delivery pending (the lease lapses), say why loudly.
            log.error("cannot sign webhooks for %s: %s", endpoint.id, exc)
            return None
        return Claimed(
            delivery_id=delivery.id,
            token=token,
            attempts=delivery.attempts,
            event_id=event.id,
            event_type=event.type,
            event_created_at=event.created_at,
            payload=event.payload,
            endpoint_id=endpoint.id,
            url=endpoint.url,
            secrets=active,
        )

    def _finish(self, delivery_id: str, token: str, *, status: str, error: str) -> None:
        with session_scope(self.engine) as session:
            session.execute(
                update(WebhookDelivery)
                .where(col(WebhookDelivery.id) == delivery_id, col(WebhookDelivery.lease_owner) == token)
                .values(status=status, last_error=error, lease_owner=None, lease_expires_at=None)
            )

    def _record(self, claimed: Claimed, result: webhook_sender.SendResult) -> None:
        """Write the attempt and move the delivery on: delivered, retry later, failed, or endpoint gone.
        Fenced by the lease token: a dispatcher whose lease lapsed only adds its attempt to the log."""
        now = time.time()
        attempt = claimed.attempts + 1
        s = self.settings
        next_at: float | None = None
        if result.ok:
            values: dict[str, object] = {"status": webhooks.DELIVERED, "delivered_at": int(now)}
        elif result.status_code == 410:
            values = {"status": webhooks.FAILED}
        else:
            delay = webhooks.retry_delay(
                attempt, base_s=s.webhook_retry_base_s, factor=s.webhook_retry_factor,
                max_interval_s=s.webhook_retry_max_interval_s,
            )  # fmt: skip
            if result.retry_after_s is not None:
                delay = max(delay, min(result.retry_after_s, s.webhook_retry_max_interval_s))
            if now + delay > claimed.event_created_at + s.webhook_retry_window_s:
                values = {"status": webhooks.FAILED}
            else:
                next_at = now + delay
                values = {"status": webhooks.PENDING, "next_attempt_at": next_at}
        error = result.error
        if result.status_code == 410:
            error = "The endpoint answered 410 Gone; it has been disabled."
        elif values["status"] == webhooks.FAILED:
            error = f"{result.error}; no more retries" if result.error else "no more retries"
        with session_scope(self.engine) as session:
            fenced = _rowcount(
                session,
                update(WebhookDelivery)
                .where(
                    col(WebhookDelivery.id) == claimed.delivery_id,
                    col(WebhookDelivery.lease_owner) == claimed.token,
                )
                .values(
                    attempts=attempt,
                    last_status_code=result.status_code,
                    last_error=None if result.ok else error,
                    lease_owner=None,
                    lease_expires_at=None,
                    **values,
                ),
            )
            session.add(
                WebhookDeliveryAttempt(
                    id=webhooks.attempt_id(),
                    delivery_id=claimed.delivery_id,
                    endpoint_id=claimed.endpoint_id,
                    event_id=claimed.event_id,
                    event_type=claimed.event_type,
                    attempt=attempt,
                    status="succeeded" if result.ok else "failed",
                    response_status_code=result.status_code,
                    latency_ms=result.latency_ms,
                    error=None if result.ok else error,
                    response_body=result.response_excerpt,
                    next_retry_at=math.ceil(next_at) if (fenced and next_at is not None) else None,
                    created_at=int(now),
                )
            )
            if fenced and result.status_code == 410:
                webhooks.disable_endpoint(
                    session, endpoint_id=claimed.endpoint_id, reason="The endpoint answered 410 Gone."
                )
        if fenced and result.ok:  # committed: this dispatcher's delivery is the one that counts
            metrics.WEBHOOK_DELIVERY_LAG.observe(max(0.0, now - claimed.event_created_at))
