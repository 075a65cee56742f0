"""Webhook delivery by the scheduler's dispatcher, against real HTTP receivers on loopback and a real database:
outage and retries with one webhook-id, 410, slow endpoints, leases between two dispatchers, the SSRF guard at
delivery time (DNS rebinding), and a scheduler process killed while an event is pending."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest
import pytest_asyncio
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from api.services import webhooks as endpoint_service
from core import jobs, netguard, webhooks
from core.db import make_engine, migrate, session_scope
from core.models import Organization, WebhookDelivery, WebhookDeliveryAttempt, WebhookEndpoint, WebhookEvent
from core.settings import Settings
from core.storage import Storage
from scheduler.webhooks import WebhookDispatcher
from tests.scheduler.factories import chat_rows, make_file, make_job
from tests.support.webhook_endpoints import add_endpoint, make_org_with_key
from tests.support.webhook_receiver import WebhookReceiver

REPO_ROOT = Path(__file__).resolve().parents[2]
FAST_RETRIES = {
    "webhook_retry_base_s": 0.2,
    "webhook_retry_factor": 2.0,
    "webhook_poll_interval_s": 0.05,
    "webhook_timeout_s": 5.0,
}


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", redis_url=redis_url, webhook_allow_private=True, **FAST_RETRIES
    )


@pytest.fixture(params=["sqlite", "postgres"])
def any_db(request: pytest.FixtureRequest, settings: Settings) -> Iterator[tuple[Settings, Engine]]:
    """The same test on SQLite and on PostgreSQL (skipped, with the reason, where it is absent)."""
    if request.param == "postgres":
        settings = settings.model_copy(update={"database_url": request.getfixturevalue("postgres_url")})
    migrate(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    yield settings, engine
    engine.dispose()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


def finish_job(engine: Engine, storage: Storage, org: Organization, to_status: str = jobs.SUCCEEDED) -> str:
    """A job that reaches `to_status` through core.jobs.transition, as the worker and API do."""
    training = make_file(engine, storage, org.id, chat_rows(12))
    job_id = make_job(engine, org.id, training, status=jobs.RUNNING)
    with session_scope(engine) as session:
        assert jobs.transition(session, job_id=job_id, from_status=[jobs.RUNNING], to_status=to_status)
    return job_id


def deliveries(engine: Engine, endpoint_id: str | None = None) -> list[WebhookDelivery]:
    with Session(engine, expire_on_commit=False) as session:
        statement = select(WebhookDelivery).order_by(col(WebhookDelivery.seq))
        if endpoint_id:
            statement = statement.where(WebhookDelivery.endpoint_id == endpoint_id)
        return list(session.exec(statement).all())


async def wait_until(predicate, timeout_s: float = 20.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest_asyncio.fixture(loop_scope="function")
async def running(engine: Engine, settings: Settings) -> AsyncIterator[WebhookDispatcher]:
    """A dispatcher running its loop, as `ftserve scheduler` does."""
    dispatcher = WebhookDispatcher(engine, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    yield dispatcher
    stop.set()
    await task


# -- outage ----------------------------------------------------------------------------------------------------


async def test_outage_retries_with_the_same_webhook_id_until_a_2xx(
    engine: Engine, settings: Settings, storage: Storage, running: WebhookDispatcher
) -> None:
    org, key = make_org_with_key(settings, engine)
    with WebhookReceiver([500, 500, 500, 200]) as receiver:
        endpoint_id, secret = add_endpoint(settings, engine, org, receiver.url, [webhooks.JOB_SUCCEEDED])
        job_id = finish_job(engine, storage, org)
        got = await receiver.until(4)
        await wait_until(lambda: deliveries(engine)[0].status == webhooks.DELIVERED, what="delivered")
        await asyncio.sleep(0.5)  # nothing more arrives after the 2xx
        assert len(receiver.received) == 4

    ids = {r.headers["webhook-id"] for r in got}
    assert len(ids) == 1 and ids.pop().startswith("evt_")
    bodies = {r.body for r in got}
    assert len(bodies) == 1  # the exact same bytes every time
    event = json.loads(got[0].body)
    assert event == {
        "id": got[0].headers["webhook-id"],
        "object": "event",
        "type": "fine_tuning.job.succeeded",
        "created_at": event["created_at"],
        "data": {"id": job_id},
    }
    verifier = openai.OpenAI(api_key="unused", webhook_secret=secret)
    for request in got:  # each attempt is signed afresh, and each verifies
        verifier.webhooks.verify_signature(request.body, request.headers)
    # Backoff: the gaps grow (0.2 s, 0.4 s, 0.8 s nominal, ±20% jitter).
    gaps = [b.at - a.at for a, b in zip(got, got[1:], strict=False)]
    assert gaps[0] >= 0.15 and gaps[2] > gaps[0]

    # The deliveries API shows all 4 attempts, newest first.
    from api.main import create_app

    with TestClient(create_app(settings)) as client:
        page = client.get(
            f"/v1/webhook_endpoints/{endpoint_id}/deliveries", headers={"authorization": f"Bearer {key}"}
        ).json()
    attempts = page["data"]
    assert [a["attempt"] for a in attempts] == [4, 3, 2, 1]
    assert [a["response_status_code"] for a in attempts] == [200, 500, 500, 500]
    assert [a["status"] for a in attempts] == ["succeeded", "failed", "failed", "failed"]
    assert {a["event_id"] for a in attempts} == {got[0].headers["webhook-id"]}
    assert all(a["delivery_status"] == "delivered" for a in attempts)
    assert all(isinstance(a["latency_ms"], int) for a in attempts)
    assert attempts[0]["next_retry_at"] is None and all(a["next_retry_at"] for a in attempts[1:])
    # Response bodies are capped: the receiver's 3.4 KB error page is kept as a short excerpt.
    assert all(len(a["response_body"]) <= 256 for a in attempts[1:])


async def test_gone_410_disables_the_endpoint_and_cancels_what_it_had_pending(
    engine: Engine, settings: Settings, storage: Storage, running: WebhookDispatcher
) -> None:
    org, _key = make_org_with_key(settings, engine)
    with WebhookReceiver([410]) as receiver:
        endpoint_id, _secret = add_endpoint(settings, engine, org, receiver.url)
        finish_job(engine, storage, org)
        await receiver.until(1)
        await wait_until(
            lambda: deliveries(engine)[0].status == webhooks.FAILED, what="the 410 delivery to fail"
        )
        with Session(engine) as session:
            endpoint = session.exec(select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)).one()
            assert not endpoint.enabled and "410" in (endpoint.disabled_reason or "")
        # Later events are not even queued for it, and nothing more is sent.
        finish_job(engine, storage, org)
        await asyncio.sleep(0.4)
        assert len(receiver.received) == 1
        assert len(deliveries(engine)) == 1


async def test_a_slow_endpoint_blocks_nobody(
    engine: Engine, settings: Settings, storage: Storage, running: WebhookDispatcher
) -> None:
    org, _key = make_org_with_key(settings, engine)
    hold = threading.Event()
    with WebhookReceiver(hold=hold) as slow, WebhookReceiver() as fast:
        add_endpoint(settings, engine, org, slow.url)
        fast_id, _ = add_endpoint(settings, engine, org, fast.url)
        for _ in range(3):
            finish_job(engine, storage, org)
        await slow.until(1)  # the slow receiver holds its first request open
        started = time.monotonic()
        await fast.until(3, timeout_s=5)
        assert time.monotonic() - started < 3
        await wait_until(
            lambda: all(d.status == webhooks.DELIVERED for d in deliveries(engine, fast_id)),
            timeout_s=2,
            what="the fast endpoint's deliveries",
        )
        assert len(slow.received) == 1  # one at a time per endpoint
        hold.set()
        await slow.until(3)


async def test_retry_after_from_a_429_is_honoured(
    engine: Engine, settings: Settings, storage: Storage, running: WebhookDispatcher
) -> None:
    org, _key = make_org_with_key(settings, engine)
    with WebhookReceiver([429, 200], extra_headers={"retry-after": "2"}) as receiver:
        add_endpoint(settings, engine, org, receiver.url)
        finish_job(engine, storage, org)
        got = await receiver.until(2)
    assert got[1].at - got[0].at >= 1.9  # not the 0.2 s backoff


async def test_an_event_past_the_retry_window_is_marked_failed(
    engine: Engine, storage: Storage, tmp_path: Path, redis_url: str
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        webhook_allow_private=True,
        **{**FAST_RETRIES, "webhook_retry_window_s": 1.0},
    )
    org, _key = make_org_with_key(settings, engine)
    with WebhookReceiver([503]) as receiver:
        add_endpoint(settings, engine, org, receiver.url)
        finish_job(engine, storage, org)
        dispatcher = WebhookDispatcher(engine, settings)
        deadline = time.monotonic() + 15
        while deliveries(engine)[0].status == webhooks.PENDING and time.monotonic() < deadline:
            await dispatcher.deliver_due()
            await asyncio.sleep(0.05)
        await dispatcher.close()
    row = deliveries(engine)[0]
    assert row.status == webhooks.FAILED and "no more retries" in (row.last_error or "")
    # Retried while inside the window (at least once unless this machine is very slow), then given up.
    assert 1 <= row.attempts == len(receiver.received) <= 8


async def test_after_a_rotation_deliveries_verify_with_the_old_and_the_new_secret(
    engine: Engine, settings: Settings, storage: Storage, receiver: WebhookReceiver
) -> None:
    org, _key = make_org_with_key(settings, engine)
    endpoint_id, first = add_endpoint(settings, engine, org, receiver.url)
    with Session(engine, expire_on_commit=False) as session:
        second = endpoint_service.rotate_secret(
            session=session, settings=settings, org=org, endpoint_id=endpoint_id, keep_old=True
        ).signing_secret
    dispatcher = WebhookDispatcher(engine, settings)
    finish_job(engine, storage, org)
    await dispatcher.deliver_due()
    overlap = receiver.received[-1]
    for secret in (first, second):
        openai.OpenAI(api_key="x", webhook_secret=secret).webhooks.verify_signature(
            overlap.body, overlap.headers
        )

    with Session(engine, expire_on_commit=False) as session:  # rotate again, dropping the old one at once
        third = endpoint_service.rotate_secret(
            session=session, settings=settings, org=org, endpoint_id=endpoint_id, keep_old=False
        ).signing_secret
    finish_job(engine, storage, org)
    await dispatcher.deliver_due()
    await dispatcher.close()
    after = receiver.received[-1]
    openai.OpenAI(api_key="x", webhook_secret=third).webhooks.verify_signature(after.body, after.headers)
    for stale in (first, second):
        with pytest.raises(openai.InvalidWebhookSignatureError):
            openai.OpenAI(api_key="x", webhook_secret=stale).webhooks.verify_signature(
                after.body, after.headers
            )


async def test_placing_a_job_records_fine_tuning_job_running(
    engine: Engine, settings: Settings, storage: Storage
) -> None:
    from core.queue import WorkerInfo
    from scheduler.dispatch import claim
    from tests.scheduler.factories import get_job

    org, _key = make_org_with_key(settings, engine)
    add_endpoint(settings, engine, org, "http://127.0.0.1:9/hooks", [webhooks.JOB_RUNNING])
    job_id = make_job(engine, org.id, make_file(engine, storage, org.id, chat_rows(12)), status=jobs.QUEUED)
    assert claim(engine, get_job(engine, job_id), WorkerInfo(id="w1", max_jobs=1)) == 1
    with Session(engine) as session:
        (event,) = session.exec(select(WebhookEvent)).all()
    assert event.type == webhooks.JOB_RUNNING and json.loads(event.payload)["data"] == {"id": job_id}
    assert len(deliveries(engine)) == 1


async def test_finished_deliveries_are_pruned_after_the_retention_and_pending_ones_kept(
    engine: Engine, settings: Settings, storage: Storage, receiver: WebhookReceiver
) -> None:
    org, _key = make_org_with_key(settings, engine)
    add_endpoint(settings, engine, org, receiver.url)
    finish_job(engine, storage, org)
    dispatcher = WebhookDispatcher(engine, settings)
    await dispatcher.deliver_due()
    finish_job(engine, storage, org, jobs.FAILED)  # not sent yet: pending
    assert dispatcher.prune() == 0  # nothing is old yet
    assert dispatcher.prune(now=time.time() + 31 * 86400) == 1
    await dispatcher.close()
    (left,) = deliveries(engine)
    assert left.status == webhooks.PENDING
    with Session(engine) as session:
        assert session.exec(select(WebhookDeliveryAttempt)).all() == []
        assert [e.id for e in session.exec(select(WebhookEvent)).all()] == [left.event_id]


# -- leases ----------------------------------------------------------------------------------------------------


async def test_two_dispatchers_send_each_event_once(
    any_db: tuple[Settings, Engine], storage: Storage
) -> None:
    settings, engine = any_db
    org, _key = make_org_with_key(settings, engine)
    with WebhookReceiver(delay_s=0.05) as receiver:
        add_endpoint(settings, engine, org, receiver.url)
        add_endpoint(settings, engine, org, receiver.url.replace("/hooks", "/second"))
        for _ in range(10):
            finish_job(engine, storage, org)
        first = WebhookDispatcher(engine, settings, owner="one")
        second = WebhookDispatcher(engine, settings, owner="two")
        while any(d.status == webhooks.PENDING for d in deliveries(engine)):
            await asyncio.gather(first.deliver_due(), second.deliver_due())
        await first.close()
        await second.close()
        sent = [(r.path, r.headers["webhook-id"]) for r in receiver.received]
    assert len(sent) == 20 and len(set(sent)) == 20  # 10 events × 2 endpoints, no duplicate


async def test_a_lapsed_lease_is_sent_again_with_the_same_id(
    engine: Engine, settings: Settings, storage: Storage, receiver: WebhookReceiver
) -> None:
    org, _key = make_org_with_key(settings, engine)
    endpoint_id, _ = add_endpoint(settings, engine, org, receiver.url)
    finish_job(engine, storage, org)
    crashed = WebhookDispatcher(engine, settings, owner="crashed")
    claimed = crashed._claim_next(endpoint_id)  # claimed, then the process "dies" before sending
    assert claimed is not None
    survivor = WebhookDispatcher(engine, settings, owner="survivor")
    await survivor.deliver_due()
    assert receiver.received == []  # still leased: nobody else sends it
    with session_scope(engine) as session:  # time passes: the lease lapses
        row = session.exec(select(WebhookDelivery)).one()
        row.lease_expires_at = time.time() - 1
        session.add(row)
    await survivor.deliver_due()
    assert [r.headers["webhook-id"] for r in receiver.received] == [claimed.event_id]
    # The dead dispatcher's late write cannot undo the delivery: its lease token no longer matches.
    from core.webhook_sender import SendResult

    crashed._record(claimed, SendResult(500, 1, "HTTP 500"))
    assert deliveries(engine)[0].status == webhooks.DELIVERED
    await crashed.close()
    await survivor.close()


# -- SSRF at delivery time -------------------------------------------------------------------------------------


@pytest.mark.parametrize("rebound_to", ["127.0.0.1", "10.1.2.3", "169.254.169.254", "::1"])
async def test_dns_rebinding_is_refused_at_delivery(
    engine: Engine, storage: Storage, tmp_path: Path, rebound_to: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name resolved to a public address when the endpoint was created, and to an internal one when the
    event is sent: refused before connecting. A canary listener on loopback sees no connection."""
    settings = Settings(data_dir=tmp_path / "data", webhook_allow_http=True, **FAST_RETRIES)
    dns = {"hooks.example.com": ["93.184.216.34"]}

    def resolver(host: str, port: int) -> list[str]:
        return dns[host]  # no DNS, no network: names resolve from this map only

    monkeypatch.setattr(netguard, "default_resolver", resolver)
    org, _key = make_org_with_key(settings, engine)
    with WebhookReceiver() as canary:
        endpoint_id, _ = add_endpoint(settings, engine, org, f"http://hooks.example.com:{canary.port}/hooks")
        dns["hooks.example.com"] = [rebound_to]
        finish_job(engine, storage, org)
        dispatcher = WebhookDispatcher(engine, settings)
        await dispatcher.deliver_due()
        await dispatcher.close()
        assert canary.connections == 0
    with Session(engine) as session:
        attempt = session.exec(select(WebhookDeliveryAttempt)).one()
    assert attempt.status == "failed" and attempt.response_status_code is None
    assert attempt.error and attempt.error.startswith("Refused") and rebound_to in attempt.error
    assert deliveries(engine, endpoint_id)[0].status == webhooks.PENDING  # retried later, re-resolved then


def _tls_for(name: str, tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A throwaway CA and a certificate for `name`: (server context, client context trusting that CA)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(2).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (tmp_path / "leaf.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    client = ssl.create_default_context(cadata=ca.public_bytes(pem).decode())
    return server, client


async def test_https_connects_to_the_checked_address_with_the_hosts_name_and_certificate(
    engine: Engine, storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name resolves (from a map: no DNS) to loopback; ftserve connects to that address but sends the
    name as Host and TLS SNI and checks the certificate against it. A certificate for another name fails."""
    settings = Settings(data_dir=tmp_path / "data", webhook_allow_private=True, **FAST_RETRIES)
    monkeypatch.setattr(netguard, "default_resolver", lambda host, port: ["127.0.0.1"])
    server_tls, client_tls = _tls_for("hooks.example.com", tmp_path)
    org, _key = make_org_with_key(settings, engine)
    with WebhookReceiver(tls=server_tls) as receiver:
        good_id, secret = add_endpoint(settings, engine, org, f"https://hooks.example.com:{receiver.port}/in")
        bad_id, _ = add_endpoint(settings, engine, org, f"https://other.example.com:{receiver.port}/in")
        finish_job(engine, storage, org)
        dispatcher = WebhookDispatcher(
            engine, settings, transport=httpx.AsyncHTTPTransport(verify=client_tls)
        )
        await dispatcher.deliver_due()
        await dispatcher.close()
        (got,) = receiver.received
    assert got.headers["host"] == f"hooks.example.com:{receiver.port}"
    assert "hooks.example.com" in receiver.sni
    openai.OpenAI(api_key="x", webhook_secret=secret).webhooks.verify_signature(got.body, got.headers)
    assert deliveries(engine, good_id)[0].status == webhooks.DELIVERED
    with Session(engine) as session:
        failed = session.exec(
            select(WebhookDeliveryAttempt).where(WebhookDeliveryAttempt.endpoint_id == bad_id)
        ).one()
    assert failed.status == "failed" and "certificate" in (failed.error or "").lower()


# -- a scheduler killed while an event is pending ----------------------------------------------------------------


def _scheduler(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "FTSERVE_DATA_DIR": str(settings.data_dir),
        "FTSERVE_REDIS_URL": str(settings.redis_url),
        "FTSERVE_WEBHOOK_ALLOW_PRIVATE": "1",
        "FTSERVE_WEBHOOK_LEASE_S": "2",
        "FTSERVE_WEBHOOK_TIMEOUT_S": "1.5",
        "FTSERVE_WEBHOOK_POLL_INTERVAL_S": "0.1",
        "FTSERVE_WEBHOOK_RETRY_BASE_S": "0.2",
    }
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cli.main", "scheduler"], cwd=REPO_ROOT, env=env, stdout=out, stderr=out
        )


@pytest.mark.slow
async def test_scheduler_killed_while_an_event_is_pending_delivers_it_after_restart(
    engine: Engine, settings: Settings, storage: Storage, tmp_path: Path
) -> None:
    org, _key = make_org_with_key(settings, engine)
    hold = threading.Event()
    log = tmp_path / "scheduler.log"
    with WebhookReceiver(hold=hold) as receiver:
        add_endpoint(settings, engine, org, receiver.url)
        first_job = finish_job(engine, storage, org)
        scheduler = _scheduler(settings, log)
        try:
            in_flight = (await receiver.until(1, timeout_s=60))[0]  # the scheduler is mid-request...
            scheduler.send_signal(signal.SIGKILL)  # ...when it dies
            scheduler.wait(10)
            second_job = finish_job(engine, storage, org)  # an event recorded while no scheduler runs
            hold.set()  # the receiver works again
            assert deliveries(engine)[0].status == webhooks.PENDING
            scheduler = _scheduler(settings, log)
            await wait_until(
                lambda: all(d.status == webhooks.DELIVERED for d in deliveries(engine)),
                timeout_s=60,
                what="both events delivered after the restart",
            )
        finally:
            if scheduler.poll() is None:
                scheduler.send_signal(signal.SIGTERM)
                scheduler.wait(30)
        got = receiver.received
    by_job: dict[str, set[str]] = {}
    for request in got:
        by_job.setdefault(json.loads(request.body)["data"]["id"], set()).add(request.headers["webhook-id"])
    assert set(by_job) == {first_job, second_job}  # nothing lost
    assert in_flight.headers["webhook-id"] in by_job[first_job]
    assert all(len(ids) == 1 for ids in by_job.values())  # a redelivery reuses its webhook-id
    assert len(got) >= 3  # the interrupted attempt, its redelivery, and the second event
