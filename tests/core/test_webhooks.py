"""core.webhooks and core.netguard: signing that the official openai SDK verifies, secrets at rest, the
retry schedule, the outbox written inside the job's transaction, and the SSRF address rules."""

from __future__ import annotations

import base64
import ipaddress
import json
import random
import stat
import time
from pathlib import Path

import openai
import pytest
from sqlmodel import Session, select

from core import ids, jobs, netguard, webhooks
from core.db import make_engine, migrate, session_scope
from core.keys import get_or_create_org
from core.models import FineTuningJob, WebhookDelivery, WebhookEndpoint, WebhookEvent
from core.settings import Settings

# -- signing ---------------------------------------------------------------------------------------------------


def _verifier(secret: str) -> openai.OpenAI:
    return openai.OpenAI(api_key="unused", webhook_secret=secret)


def test_signatures_verify_with_the_openai_sdk_and_tampering_fails() -> None:
    secret = webhooks.new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == webhooks.SECRET_BYTES
    body = webhooks.event_payload(
        id="evt_1", type=webhooks.JOB_SUCCEEDED, created_at=int(time.time()), data={"id": "ftjob-1"}
    )
    headers = webhooks.webhook_headers([secret], msg_id="evt_1", body=body)
    assert headers["webhook-signature"].startswith("v1,") and " " not in headers["webhook-signature"]
    event = _verifier(secret).webhooks.unwrap(body, headers)
    assert event.type == "fine_tuning.job.succeeded" and event.data.id == "ftjob-1" and event.id == "evt_1"
    assert webhooks.verify(secret, body=body, headers=headers)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        _verifier(secret).webhooks.unwrap(body.replace("ftjob-1", "ftjob-2"), headers)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        _verifier(webhooks.new_secret()).webhooks.unwrap(body, headers)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        _verifier(secret).webhooks.unwrap(body, {**headers, "webhook-id": "evt_2"})
    old = webhooks.webhook_headers([secret], msg_id="evt_1", body=body, timestamp=int(time.time()) - 301)
    with pytest.raises(openai.InvalidWebhookSignatureError, match="too old"):
        _verifier(secret).webhooks.unwrap(body, old)
    assert not webhooks.verify(secret, body=body, headers=old)


def test_during_a_rotation_both_secrets_sign() -> None:
    new, old = webhooks.new_secret(), webhooks.new_secret()
    body = b'{"id":"evt_9"}'
    headers = webhooks.webhook_headers([new, old], msg_id="evt_9", body=body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (new, old):
        _verifier(secret).webhooks.verify_signature(body, headers)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        _verifier(webhooks.new_secret()).webhooks.verify_signature(body, headers)


def test_the_payload_is_openais_thin_event_minified() -> None:
    body = webhooks.event_payload(id="evt_a", type=webhooks.JOB_FAILED, created_at=17, data={"id": "ftjob-b"})
    assert (
        body
        == '{"id":"evt_a","object":"event","type":"fine_tuning.job.failed","created_at":17,"data":{"id":"ftjob-b"}}'
    )


# -- secrets at rest -------------------------------------------------------------------------------------------


def test_secret_box_round_trips_and_binds_the_endpoint(tmp_path: Path) -> None:
    key = webhooks.load_secret_key(configured=None, data_dir=tmp_path)
    assert webhooks.load_secret_key(configured=None, data_dir=tmp_path) == key  # created once, then reused
    assert stat.S_IMODE((tmp_path / "webhook_secret.key").stat().st_mode) == 0o600
    box = webhooks.SecretBox(key)
    secret = webhooks.new_secret()
    sealed = box.encrypt(secret, context="whep_a")
    assert secret not in sealed and sealed != box.encrypt(secret, context="whep_a")  # random nonce
    assert box.decrypt(sealed, context="whep_a") == secret
    with pytest.raises(ValueError):
        box.decrypt(sealed, context="whep_b")  # copied onto another endpoint's row
    other = webhooks.SecretBox(webhooks.load_secret_key(configured="another key", data_dir=tmp_path))
    with pytest.raises(ValueError, match="FTSERVE_WEBHOOK_SECRET_KEY"):
        other.decrypt(sealed, context="whep_a")


# -- retry schedule --------------------------------------------------------------------------------------------


def test_the_default_schedule_backs_off_exponentially_with_jitter_for_about_three_days() -> None:
    s = Settings()
    delays = [
        webhooks.retry_delay(
            n,
            base_s=s.webhook_retry_base_s,
            factor=s.webhook_retry_factor,
            max_interval_s=s.webhook_retry_max_interval_s,
            jitter=0,
        )
        for n in range(1, 20)
    ]
    assert delays[:4] == [5, 20, 80, 320] and max(delays) == 86400
    elapsed, attempts = 0.0, 1
    for delay in delays:
        if elapsed + delay > s.webhook_retry_window_s:
            break
        elapsed, attempts = elapsed + delay, attempts + 1
    assert 9 <= attempts <= 12 and elapsed > 2 * 86400  # ~10 tries spread over the 3 days
    rng = random.Random(1)
    jittered = {webhooks.retry_delay(3, base_s=5, factor=4, max_interval_s=1e9, rng=rng) for _ in range(50)}
    assert len(jittered) == 50 and all(64 <= d <= 96 for d in jittered)


# -- the outbox ------------------------------------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def _endpoint(session: Session, org_id: str, *, events: list[str] | None = None, enabled: bool = True) -> str:
    row = WebhookEndpoint(
        id=webhooks.endpoint_id(),
        organization_id=org_id,
        url="https://hooks.example.com/",
        events=events,
        enabled=enabled,
        secret_ciphertext="v1:unused",
        secret_hint="whsec_...x",
    )
    session.add(row)
    return row.id


def test_transitions_write_one_event_per_subscribed_enabled_endpoint_in_their_transaction(engine) -> None:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        org = get_or_create_org(session, name="a").id
        other = get_or_create_org(session, name="b").id
        everything = _endpoint(session, org)
        failures_only = _endpoint(session, org, events=[webhooks.JOB_FAILED])
        _endpoint(session, org, enabled=False)
        _endpoint(session, other)
        job = FineTuningJob(
            id=ids.job_id(), organization_id=org, model="m", training_file="f", status="running"
        )
        session.add(job)

    # A transition that rolls back leaves no outbox row.
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        assert jobs.transition(session, job_id=job.id, from_status=[jobs.RUNNING], to_status=jobs.SUCCEEDED)
        raise RuntimeError("the caller's transaction fails after the change")
    with Session(engine) as session:
        assert session.exec(select(WebhookDelivery)).all() == []

    with session_scope(engine) as session:
        assert jobs.transition(session, job_id=job.id, from_status=[jobs.RUNNING], to_status=jobs.SUCCEEDED)
    with session_scope(engine) as session:  # a repeated CAS changes nothing and records nothing
        assert not jobs.transition(
            session, job_id=job.id, from_status=[jobs.RUNNING], to_status=jobs.SUCCEEDED
        )
    with Session(engine) as session:
        (event,) = session.exec(select(WebhookEvent)).all()
        rows = session.exec(select(WebhookDelivery)).all()
    assert [r.endpoint_id for r in rows] == [everything]
    assert all(r.event_id == event.id and r.status == webhooks.PENDING for r in rows)
    payload = json.loads(event.payload)
    assert payload == {
        "id": event.id,
        "object": "event",
        "type": "fine_tuning.job.succeeded",
        "created_at": event.created_at,
        "data": {"id": job.id},
    }
    assert abs(event.created_at - time.time()) < 5

    # Queued → paused and back fire nothing; a failure reaches the failures-only endpoint too.
    with session_scope(engine) as session:
        job2 = FineTuningJob(
            id=ids.job_id(), organization_id=org, model="m", training_file="f", status="queued"
        )
        session.add(job2)
    with session_scope(engine) as session:
        jobs.transition(session, job_id=job2.id, from_status=[jobs.QUEUED], to_status=jobs.PAUSED)
        jobs.transition(session, job_id=job2.id, from_status=[jobs.PAUSED], to_status=jobs.QUEUED)
        jobs.transition(session, job_id=job2.id, from_status=[jobs.QUEUED], to_status=jobs.FAILED)
    with Session(engine) as session:
        types = [e.type for e in session.exec(select(WebhookEvent)).all()]
        assert types == [webhooks.JOB_SUCCEEDED, webhooks.JOB_FAILED]
        failed = session.exec(select(WebhookEvent).where(WebhookEvent.type == webhooks.JOB_FAILED)).one()
        targets = session.exec(
            select(WebhookDelivery.endpoint_id).where(WebhookDelivery.event_id == failed.id)
        )
        assert set(targets.all()) == {everything, failures_only}
    with pytest.raises(ValueError):
        webhooks.record_event(Session(engine), organization_id=org, type="fine_tuning.job.done", job_id="x")


# -- SSRF address rules ----------------------------------------------------------------------------------------

REFUSED = [
    "127.0.0.1", "127.255.0.9", "10.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.0.1", "169.254.169.254",
    "169.254.1.1", "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1",
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
    "64:ff9b::a00:1", "2002:7f00:1::", "2001:db8::1", "fd00:ec2::254", "2001::1",
]  # fmt: skip
ALLOWED = [
    "93.184.216.34",
    "8.8.8.8",
    "1.1.1.1",
    "2606:4700:4700::1111",
    "2a00:1450:4001::200e",
    "::ffff:8.8.8.8",
]


@pytest.mark.parametrize("address", REFUSED)
def test_internal_addresses_are_refused(address: str) -> None:
    assert netguard.refusal_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_pass(address: str) -> None:
    assert netguard.refusal_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "host", ["2130706433", "0x7f.1", "0x7f000001", "017700000001", "127.1", "0177.0.0.1"]
)
def test_numeric_ipv4_spellings_are_read_as_addresses(host: str) -> None:
    assert netguard.parse_ip(host) == ipaddress.ip_address("127.0.0.1")


def test_resolution_pins_a_checked_address_and_refuses_mixed_answers() -> None:
    dns = {
        "hooks.example.com": ["2606:4700::1", "93.184.216.34"],
        "mixed.example.com": ["93.184.216.34", "10.0.0.1"],
    }

    def resolver(host: str, port: int) -> list[str]:
        return dns[host]

    target = netguard.resolve_checked(
        "https://hooks.example.com:8443/x?y=1", allow_private=False, resolver=resolver
    )
    assert (target.address, target.host, target.port, target.host_is_ip) == (
        "93.184.216.34",
        "hooks.example.com",
        8443,
        False,
    )
    with pytest.raises(netguard.UnsafeURLError, match="10.0.0.1"):
        netguard.resolve_checked("https://mixed.example.com/", allow_private=False, resolver=resolver)
    # The dev flag allows internal addresses (and http), and still pins.
    dns["mixed.example.com"] = ["127.0.0.1"]
    dev = netguard.resolve_checked("http://mixed.example.com/", allow_private=True, resolver=resolver)
    assert dev.address == "127.0.0.1"


def test_model_ready_fires_once_per_model_with_its_name(engine) -> None:  # type: ignore[no-untyped-def]
    from core.models import ServedAdapter

    with session_scope(engine) as session:
        org = get_or_create_org(session, name="a").id
        _endpoint(session, org, events=[webhooks.MODEL_READY])
        job = FineTuningJob(
            id=ids.job_id(), organization_id=org, model="m", training_file="f", status="succeeded"
        )
        session.add(job)
        model = f"ft:m:a::{job.id}"
        session.add(
            ServedAdapter(id=model, organization_id=org, job_id=job.id, base_model="m", storage_prefix="p")
        )
    for _ in range(2):  # another replica reports the same model: no second event
        with session_scope(engine) as session:
            jobs.mark_model_ready(session, job_id=job.id, model_id=model, replicas=["r1"])
    with Session(engine) as session:
        (event,) = session.exec(select(WebhookEvent)).all()
        assert len(session.exec(select(WebhookDelivery)).all()) == 1
    assert event.type == "fine_tuning.job.model.ready"
    assert json.loads(event.payload)["data"] == {"id": job.id, "model": model}


def test_url_shape_checks() -> None:
    assert netguard.parse_url("https://Bücher.Example/x", allow_http=False).host == "xn--bcher-kva.example"
    assert netguard.parse_url("https://[2606:4700::1]:8443/", allow_http=False).port == 8443
    for bad in (
        "ftp://a.example/",
        "http://a.example/",
        "https://u:p@a.example/",
        "https://a.example/\nx",
        "https://",
    ):
        with pytest.raises(netguard.UnsafeURLError):
            netguard.parse_url(bad, allow_http=False)
    assert netguard.parse_url("http://a.example/", allow_http=True).port == 80
