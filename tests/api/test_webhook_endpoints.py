"""Webhook endpoints API through the ASGI app, on SQLite and PostgreSQL: the secret shown once and stored
encrypted, subscriptions, field-named 400s, the SSRF guard at creation, update/disable/rotate/delete, other
organizations, paging. Names resolve from a map in this file: no DNS, no network."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import Session, select

from core import jobs, netguard, webhooks
from core.db import make_engine, session_scope
from core.models import FineTuningJob, Organization, WebhookDelivery
from core.settings import Settings
from tests.support.webhook_receiver import WebhookReceiver

DNS = {
    "hooks.example.com": ["93.184.216.34"],
    "other.example.com": ["2606:2800:220:1:248:1893:25c8:1946"],
    "internal.example.com": ["10.1.2.3"],
    "mixed.example.com": ["93.184.216.34", "192.168.1.10"],
    "metadata.example.com": ["169.254.169.254"],
    "six.example.com": ["::1"],
    "cgnat.example.com": ["100.64.1.1"],
    "localhost": ["127.0.0.1"],
}
URL = "https://hooks.example.com/ftserve"


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    def resolve(host: str, port: int) -> list[str]:
        if host not in DNS:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return DNS[host]

    monkeypatch.setattr(netguard, "default_resolver", resolve)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _create(client: TestClient, key: str, **body: object):  # type: ignore[no-untyped-def]
    return client.post("/v1/webhook_endpoints", headers=_auth(key), json={"url": URL, **body})


def _ok(resp):  # type: ignore[no-untyped-def]
    assert resp.status_code == 200, resp.text
    return resp.json()


def _error(resp, status: int = 400) -> dict[str, object]:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, resp.text
    error: dict[str, object] = resp.json()["error"]
    return error


def test_create_returns_the_secret_once_and_stores_it_encrypted(
    client: TestClient, org_a_key: str, settings: Settings
) -> None:
    created = _ok(_create(client, org_a_key, events=["fine_tuning.job.succeeded"], description="CI"))
    secret = created["signing_secret"]
    assert created["object"] == "webhook_endpoint" and created["id"].startswith("whep_")
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert created["signing_secret_hint"] == f"whsec_...{secret[-4:]}"
    assert created["url"] == URL and created["description"] == "CI" and created["enabled"] is True
    assert created["event_types"] == created["events"] == ["fine_tuning.job.succeeded"]
    assert created["name"] == "hooks.example.com"

    again = _ok(client.get(f"/v1/webhook_endpoints/{created['id']}", headers=_auth(org_a_key)))
    listed = _ok(client.get("/v1/webhook_endpoints", headers=_auth(org_a_key)))
    assert "signing_secret" not in again and "signing_secret" not in listed["data"][0]
    assert again["id"] == listed["data"][0]["id"] == created["id"]

    # Nothing in the database reads as the secret or its key bytes.
    engine = make_engine(settings.resolved_database_url)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(text("SELECT * FROM webhook_endpoints"))]
    engine.dispose()
    dump = json.dumps(rows, default=str)
    assert secret not in dump and secret[6:] not in dump and secret[6:26] not in dump
    assert rows[0]["secret_ciphertext"].startswith("v1:")


def test_subscriptions_default_to_all_and_accept_the_sdks_field_name(
    client: TestClient, org_a_key: str
) -> None:
    everything = _ok(_create(client, org_a_key))
    assert everything["events"] == "all" and everything["event_types"] == list(webhooks.EVENT_TYPES)
    explicit_all = _ok(_create(client, org_a_key, events="all"))
    assert explicit_all["events"] == "all"
    sdk_style = _ok(
        _create(
            client,
            org_a_key,
            event_types=["fine_tuning.job.failed", "fine_tuning.job.model.ready", "fine_tuning.job.failed"],
            name="ops",
        )
    )
    assert sdk_style["events"] == ["fine_tuning.job.failed", "fine_tuning.job.model.ready"]
    assert sdk_style["name"] == "ops"
    types = _ok(client.get("/v1/webhook_event_types", headers=_auth(org_a_key)))
    assert types == {"object": "list", "data": list(webhooks.EVENT_TYPES)}


BAD_REQUESTS: list[tuple[dict[str, object], str]] = [
    ({"url": None}, "url"),
    ({"url": ""}, "url"),
    ({"url": "x" * 3000}, "url"),
    ({"url": "ftp://hooks.example.com/x"}, "url"),
    ({"url": "not a url"}, "url"),
    ({"url": "https:///nohost"}, "url"),
    ({"url": "https://hooks.example.com:99999/"}, "url"),
    ({"url": "https://user:pw@hooks.example.com/"}, "url"),
    ({"url": "https://nowhere.example.com/"}, "url"),
    ({"events": "some"}, "events"),
    ({"events": []}, "events"),
    ({"events": ["fine_tuning.job.succeeded", "fine_tuning.job.canceled"]}, "events[1]"),
    ({"event_types": ["batch.completed"]}, "event_types[0]"),
    ({"events": ["fine_tuning.job.failed"], "event_types": ["fine_tuning.job.failed"]}, "events"),
    ({"events": [3]}, "events"),
    ({"name": "n" * 200}, "name"),
    ({"description": "d" * 600}, "description"),
]


def test_bad_requests_are_400s_naming_the_field(client: TestClient, org_a_key: str) -> None:
    for body, param in BAD_REQUESTS:
        error = _error(_create(client, org_a_key, **body))
        assert error["param"] == param or str(error["param"]).startswith(param), (body, error)
        assert error["type"] == "invalid_request_error"
    assert _ok(client.get("/v1/webhook_endpoints", headers=_auth(org_a_key)))["data"] == []


REFUSED_URLS = [
    "https://127.0.0.1/hook",
    "https://127.0.0.1:8443/hook",
    "https://10.0.0.5/hook",
    "https://172.16.3.4/hook",
    "https://192.168.1.1/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://[::1]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://[fd00::1]/hook",
    "https://[fe80::1]/hook",
    "https://0.0.0.0/hook",
    "https://2130706433/hook",
    "https://0x7f.1/hook",
    "https://127.1/hook",
    "https://224.0.0.1/hook",
    "https://localhost/hook",
    "https://api.localhost/hook",
    "https://internal.example.com/hook",
    "https://mixed.example.com/hook",
    "https://metadata.example.com/hook",
    "https://six.example.com/hook",
    "https://cgnat.example.com/hook",
    "http://hooks.example.com/hook",  # plain http needs a dev flag
]


def test_ssrf_guard_refuses_internal_addresses_at_creation(client: TestClient, org_a_key: str) -> None:
    for url in REFUSED_URLS:
        error = _error(_create(client, org_a_key, url=url))
        assert error["param"] == "url" and error["code"] == "invalid_url", (url, error)
    assert _ok(client.get("/v1/webhook_endpoints", headers=_auth(org_a_key)))["data"] == []


def test_public_ipv6_and_ip_literals_are_accepted(client: TestClient, org_a_key: str) -> None:
    _ok(_create(client, org_a_key, url="https://other.example.com/x"))
    _ok(_create(client, org_a_key, url="https://93.184.216.34:8443/x"))


def test_the_dev_flag_allows_loopback_and_http(
    client: TestClient, org_a_key: str, settings: Settings
) -> None:
    settings.webhook_allow_private = True  # the app reads the same settings object
    _ok(_create(client, org_a_key, url="http://127.0.0.1:9999/hook"))
    _ok(_create(client, org_a_key, url="http://localhost:9999/hook"))


def test_update_rechecks_the_url_and_disable_cancels_pending_deliveries(
    client: TestClient, org_a_key: str, settings: Settings
) -> None:
    created = _ok(_create(client, org_a_key, events=["fine_tuning.job.cancelled"]))
    path = f"/v1/webhook_endpoints/{created['id']}"
    error = _error(client.post(path, headers=_auth(org_a_key), json={"url": "https://10.9.9.9/x"}))
    assert error["param"] == "url"
    assert _ok(client.get(path, headers=_auth(org_a_key)))["url"] == URL

    # The official SDK updates with POST; PATCH works too.
    updated = _ok(
        client.post(
            path,
            headers=_auth(org_a_key),
            json={
                "url": "https://other.example.com/new",
                "event_types": ["fine_tuning.job.failed"],
                "name": "n",
            },
        )
    )
    assert updated["url"] == "https://other.example.com/new" and updated["events"] == [
        "fine_tuning.job.failed"
    ]
    assert updated["name"] == "n"
    patched = _ok(client.patch(path, headers=_auth(org_a_key), json={"events": "all", "description": "d"}))
    assert patched["events"] == "all" and patched["description"] == "d"
    assert _error(client.patch(path, headers=_auth(org_a_key), json={"enabled": None}))["param"] == "enabled"

    # A pending delivery, then disable: it is cancelled and nothing new is queued.
    engine = make_engine(settings.resolved_database_url)
    org_id = _record_failure(engine, org_name="org-a")
    disabled = _ok(client.patch(path, headers=_auth(org_a_key), json={"enabled": False}))
    assert disabled["enabled"] is False and disabled["disabled_reason"] == "Disabled by user."
    with Session(engine) as session:
        assert [d.status for d in session.exec(select(WebhookDelivery)).all()] == [webhooks.CANCELLED]
    _record_failure(engine, org_name="org-a")
    with Session(engine) as session:
        assert len(session.exec(select(WebhookDelivery)).all()) == 1
    enabled = _ok(client.patch(path, headers=_auth(org_a_key), json={"enabled": True}))
    assert enabled["enabled"] is True and enabled["disabled_reason"] is None
    _record_failure(engine, org_name="org-a")
    with Session(engine) as session:
        statuses = sorted(d.status for d in session.exec(select(WebhookDelivery)).all())
    assert statuses == [webhooks.CANCELLED, webhooks.PENDING]
    assert org_id
    engine.dispose()


def _record_failure(engine, *, org_name: str) -> str:  # type: ignore[no-untyped-def]
    """A job of `org_name` fails through core.jobs.transition (which writes the outbox)."""
    from core import ids

    with session_scope(engine) as session:
        org = session.exec(select(Organization).where(Organization.name == org_name)).one()
        job = FineTuningJob(
            id=ids.job_id(),
            organization_id=org.id,
            model="demo-tiny",
            training_file="file-x",
            status="running",
        )
        session.add(job)
    with session_scope(engine) as session:
        assert jobs.transition(session, job_id=job.id, from_status=[jobs.RUNNING], to_status=jobs.FAILED)
    return org.id


def test_rotate_keeps_the_old_secret_for_24_hours_unless_told_not_to(
    client: TestClient, org_a_key: str
) -> None:
    created = _ok(_create(client, org_a_key))
    path = f"/v1/webhook_endpoints/{created['id']}/rotate_secret"
    rotated = _ok(client.post(path, headers=_auth(org_a_key)))
    assert rotated["signing_secret"] != created["signing_secret"]
    assert rotated["signing_secret_hint"] == f"whsec_...{rotated['signing_secret'][-4:]}"
    assert abs(rotated["previous_secret_expires_at"] - (time.time() + 86400)) < 60
    hard = _ok(
        client.post(path, headers=_auth(org_a_key), json={"keep_old_secret_active_for_24_hours": False})
    )
    assert hard["previous_secret_expires_at"] is None
    assert hard["signing_secret"] not in (created["signing_secret"], rotated["signing_secret"])


def test_delete_removes_the_endpoint_and_its_pending_deliveries(
    client: TestClient, org_a_key: str, settings: Settings
) -> None:
    created = _ok(_create(client, org_a_key))
    engine = make_engine(settings.resolved_database_url)
    _record_failure(engine, org_name="org-a")
    deleted = _ok(client.delete(f"/v1/webhook_endpoints/{created['id']}", headers=_auth(org_a_key)))
    assert deleted == {"id": created["id"], "object": "webhook_endpoint.deleted", "deleted": True}
    with Session(engine) as session:
        assert session.exec(select(WebhookDelivery)).all() == []
    engine.dispose()
    assert _error(client.get(f"/v1/webhook_endpoints/{created['id']}", headers=_auth(org_a_key)), 404)


def test_other_organizations_get_404_and_see_nothing(
    client: TestClient, org_a_key: str, org_b_key: str
) -> None:
    created = _ok(_create(client, org_a_key))
    path = f"/v1/webhook_endpoints/{created['id']}"
    b = _auth(org_b_key)
    for resp in (
        client.get(path, headers=b),
        client.post(path, headers=b, json={"url": URL}),
        client.patch(path, headers=b, json={"enabled": False}),
        client.delete(path, headers=b),
        client.post(f"{path}/rotate_secret", headers=b),
        client.post(f"{path}/test", headers=b, json={"event_type": "fine_tuning.job.succeeded"}),
        client.get(f"{path}/deliveries", headers=b),
    ):
        assert _error(resp, 404)["param"] == "webhook_endpoint_id"
    assert _ok(client.get("/v1/webhook_endpoints", headers=b))["data"] == []
    assert _ok(client.get(path, headers=_auth(org_a_key)))["enabled"] is True  # untouched
    assert _error(client.get("/v1/webhook_endpoints"), 401)


def test_list_pages_newest_first_and_the_per_org_limit(
    client: TestClient, org_a_key: str, settings: Settings
) -> None:
    settings.webhook_max_endpoints_per_org = 3
    ids = [_ok(_create(client, org_a_key))["id"] for _ in range(3)]
    error = _error(_create(client, org_a_key))
    assert error["code"] == "limit_reached"
    first = _ok(client.get("/v1/webhook_endpoints?limit=2", headers=_auth(org_a_key)))
    assert [e["id"] for e in first["data"]] == ids[::-1][:2] and first["has_more"] is True
    assert first["first_id"] == ids[2] and first["last_id"] == ids[1]
    rest = _ok(client.get(f"/v1/webhook_endpoints?limit=2&after={ids[1]}", headers=_auth(org_a_key)))
    assert [e["id"] for e in rest["data"]] == [ids[0]] and rest["has_more"] is False
    assert _error(client.get("/v1/webhook_endpoints?limit=0", headers=_auth(org_a_key)))["param"] == "limit"
    assert (
        _error(client.get("/v1/webhook_endpoints?after=whep_nope", headers=_auth(org_a_key)))["param"]
        == "after"
    )


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver([204]) as r:
        yield r


def test_test_event_is_signed_and_reports_the_receivers_answer(
    client: TestClient, org_a_key: str, settings: Settings, receiver: WebhookReceiver
) -> None:
    import openai

    settings.webhook_allow_private = True
    created = _ok(_create(client, org_a_key, url=receiver.url))
    path = f"/v1/webhook_endpoints/{created['id']}/test"
    result = _ok(client.post(path, headers=_auth(org_a_key), json={"event_type": "fine_tuning.job.failed"}))
    assert result["object"] == "webhook_endpoint.test" and result["success"] is True
    assert result["status_code"] == 204 and result["webhook_endpoint_id"] == created["id"]
    (got,) = receiver.received
    event = openai.OpenAI(api_key="x", webhook_secret=created["signing_secret"]).webhooks.unwrap(
        got.body, got.headers
    )
    assert event.type == "fine_tuning.job.failed" and event.data.id.startswith("ftjob-test")
    bad = _error(client.post(path, headers=_auth(org_a_key), json={"event_type": "fine_tuning.job.done"}))
    assert bad["param"] == "event_type"
    receiver.stop()
    down = _error(client.post(path, headers=_auth(org_a_key), json={"event_type": "fine_tuning.job.failed"}))
    assert down["code"] == "webhook_unreachable"
