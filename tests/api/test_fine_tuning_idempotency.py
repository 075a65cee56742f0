"""Idempotency-Key on POST /v1/fine_tuning/jobs, through the ASGI app on SQLite and PostgreSQL: a retry gets the
first job back and creates nothing, another body under the key is refused, keys are per organization, two
concurrent creates with one key make one job, and a key is free again after 24 h."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, update
from sqlmodel import Session, col, select

from api.services import fine_tuning as service
from api.services.idempotency import IDEMPOTENCY_KEY_TTL_S
from core.db import make_engine
from core.model_registry import register_model
from core.models import FineTuningJob, JobEvent
from core.settings import Settings
from tests.support.datasets import chat_jsonl

KEY_HEADER = "Idempotency-Key"


def _headers(api_key: str, idempotency_key: str | bytes | None = None) -> dict[str, Any]:
    headers: dict[str, Any] = {"Authorization": f"Bearer {api_key}"}
    if idempotency_key is not None:
        headers[KEY_HEADER] = idempotency_key
    return headers


def _create(
    client: TestClient, api_key: str, body: dict[str, Any], idempotency_key: str | bytes | None = None
) -> httpx.Response:
    return client.post("/v1/fine_tuning/jobs", headers=_headers(api_key, idempotency_key), json=body)


def _upload(client: TestClient, api_key: str) -> str:
    resp = client.post(
        "/v1/files",
        headers=_headers(api_key),
        data={"purpose": "fine-tune"},
        files={"file": ("t.jsonl", chat_jsonl(12))},
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def _jobs(settings: Settings) -> list[FineTuningJob]:
    engine = make_engine(settings.resolved_database_url)
    try:
        with Session(engine) as session:
            return list(session.exec(select(FineTuningJob).order_by(col(FineTuningJob.seq))).all())
    finally:
        engine.dispose()


def _event_count(settings: Settings, job_id: str) -> int:
    engine = make_engine(settings.resolved_database_url)
    try:
        with Session(engine) as session:
            return session.exec(select(func.count()).where(JobEvent.job_id == job_id)).one()
    finally:
        engine.dispose()


@pytest.fixture
def body(settings: Settings, tmp_path: Path, client: TestClient, org_a_key: str) -> dict[str, Any]:
    register_model(settings, "demo-tiny", tmp_path / "demo-tiny")  # the API needs the registry entry only
    return {"model": "demo-tiny", "training_file": _upload(client, org_a_key), "suffix": "retry"}


def test_a_replay_returns_the_same_job_and_creates_nothing(
    client: TestClient, settings: Settings, org_a_key: str, body: dict[str, Any]
) -> None:
    first = _create(client, org_a_key, body, "key-1")
    assert first.status_code == 200, first.text
    assert "idempotent-replayed" not in first.headers
    job = first.json()

    # The same request again, written differently (key order, an explicit null): the same job, nothing new.
    again = _create(client, org_a_key, {"validation_file": None, **dict(reversed(body.items()))}, "key-1")
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == job  # the generated seed too
    assert [j.id for j in _jobs(settings)] == [job["id"]]
    assert _event_count(settings, job["id"]) == 1  # one "Created fine-tuning job" event

    # A replay shows the job as it is now, not as it was created.
    cancelled = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=_headers(org_a_key))
    assert cancelled.status_code == 200, cancelled.text
    later = _create(client, org_a_key, body, "key-1")
    assert later.status_code == 200 and later.json()["id"] == job["id"]
    assert later.json()["status"] == "cancelled"
    assert len(_jobs(settings)) == 1


def test_without_a_key_every_create_is_a_new_job(
    client: TestClient, settings: Settings, org_a_key: str, body: dict[str, Any]
) -> None:
    ids = {_create(client, org_a_key, body).json()["id"] for _ in range(2)}
    assert len(ids) == 2 and len(_jobs(settings)) == 2
    # A key of one create says nothing about a keyless create with the same body.
    keyed = _create(client, org_a_key, body, "key-1")
    assert keyed.status_code == 200 and "idempotent-replayed" not in keyed.headers
    assert keyed.json()["id"] not in ids


def test_the_same_key_with_another_body_is_refused(
    client: TestClient, settings: Settings, org_a_key: str, body: dict[str, Any]
) -> None:
    job = _create(client, org_a_key, body, "key-1").json()
    resp = _create(client, org_a_key, {**body, "suffix": "other"}, "key-1")
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "idempotency_key_reused" and error["param"] == KEY_HEADER
    assert error["type"] == "invalid_request_error" and job["id"] in error["message"]
    assert resp.headers["x-should-retry"] == "false"
    assert [j.id for j in _jobs(settings)] == [job["id"]]


def test_a_refused_create_does_not_use_up_its_key(
    client: TestClient, settings: Settings, org_a_key: str, body: dict[str, Any]
) -> None:
    bad = _create(client, org_a_key, {**body, "model": "no-such-model"}, "key-1")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "model"
    fixed = _create(client, org_a_key, body, "key-1")
    assert fixed.status_code == 200 and "idempotent-replayed" not in fixed.headers
    assert len(_jobs(settings)) == 1


def test_a_replay_is_answered_even_when_the_quota_is_full(
    client: TestClient, settings: Settings, org_a_key: str, body: dict[str, Any]
) -> None:
    # The job itself fills the quota: its retry must still get it back, not a 429.
    settings.org_max_active_jobs = 1
    job = _create(client, org_a_key, body, "key-1").json()
    assert _create(client, org_a_key, body, "key-2").status_code == 429
    again = _create(client, org_a_key, body, "key-1")
    assert again.status_code == 200 and again.json()["id"] == job["id"]


def test_keys_are_per_organization(
    client: TestClient, settings: Settings, org_a_key: str, org_b_key: str, body: dict[str, Any]
) -> None:
    job_a = _create(client, org_a_key, body, "shared-key").json()
    # Org B sends org A's exact request and key: it does not get org A's job (A's file is not B's).
    stolen = _create(client, org_b_key, body, "shared-key")
    assert stolen.status_code == 400, stolen.text
    assert stolen.json()["error"]["param"] == "training_file" and job_a["id"] not in stolen.text
    # With its own file the same key makes org B its own job, and neither key disturbs the other.
    body_b = {**body, "training_file": _upload(client, org_b_key)}
    job_b = _create(client, org_b_key, body_b, "shared-key")
    assert job_b.status_code == 200 and "idempotent-replayed" not in job_b.headers
    assert job_b.json()["id"] != job_a["id"]
    assert _create(client, org_a_key, body, "shared-key").json()["id"] == job_a["id"]
    assert _create(client, org_b_key, body_b, "shared-key").json()["id"] == job_b.json()["id"]
    assert len(_jobs(settings)) == 2


@pytest.mark.parametrize(
    "bad_key",
    ["", "k" * 256, "tab\tkey", "del\x7fkey", "ключ".encode()],
    ids=["empty", "too-long", "control", "del", "non-ascii"],
)
def test_an_invalid_key_is_a_400_naming_the_header(
    client: TestClient, settings: Settings, org_a_key: str, body: dict[str, Any], bad_key: str | bytes
) -> None:
    resp = _create(client, org_a_key, body, bad_key)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == KEY_HEADER and error["code"] == "invalid_idempotency_key"
    assert _jobs(settings) == []
    # The longest allowed key, every printable character included, works.
    longest = ("".join(chr(c) for c in range(0x20, 0x7F)) * 3)[:255]
    assert _create(client, org_a_key, body, longest).status_code == 200


def test_concurrent_creates_with_one_key_make_one_job(
    client: TestClient,
    settings: Settings,
    org_a_key: str,
    body: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Hold both requests after their key lookup (both found nothing) until both got there, so both insert:
    # the unique index must let one win and turn the other into a replay of the winner.
    barrier = threading.Barrier(2, timeout=30)
    check_quota = service._check_active_jobs_quota

    def both_past_the_lookup(*args: Any, **kwargs: Any) -> None:
        barrier.wait()
        check_quota(*args, **kwargs)

    monkeypatch.setattr(service, "_check_active_jobs_quota", both_past_the_lookup)
    with ThreadPoolExecutor(max_workers=2) as pool:
        responses = list(pool.map(lambda _: _create(client, org_a_key, body, "race"), range(2)))
    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    assert responses[0].json()["id"] == responses[1].json()["id"]
    assert sorted(r.headers.get("idempotent-replayed", "") for r in responses) == ["", "true"]
    jobs = _jobs(settings)
    assert [j.id for j in jobs] == [responses[0].json()["id"]]
    assert _event_count(settings, jobs[0].id) == 1  # the loser's event was rolled back with its row


def test_a_key_is_free_again_after_24_hours(
    client: TestClient, settings: Settings, org_a_key: str, body: dict[str, Any]
) -> None:
    old = _create(client, org_a_key, body, "daily").json()
    engine = make_engine(settings.resolved_database_url)
    try:
        with Session(engine) as session:
            session.execute(
                update(FineTuningJob)
                .where(col(FineTuningJob.id) == old["id"])
                .values(created_at=FineTuningJob.created_at - IDEMPOTENCY_KEY_TTL_S - 1)
            )
            session.commit()
    finally:
        engine.dispose()
    # Past its 24 h the key makes a new job, even with another body; the old job keeps its id and gives the
    # key up, and the key now names the new job.
    new = _create(client, org_a_key, {**body, "suffix": "tomorrow"}, "daily")
    assert new.status_code == 200 and "idempotent-replayed" not in new.headers
    assert new.json()["id"] != old["id"]
    keys = {j.id: j.idempotency_key for j in _jobs(settings)}
    assert keys == {old["id"]: None, new.json()["id"]: "daily"}
    again = _create(client, org_a_key, {**body, "suffix": "tomorrow"}, "daily")
    assert again.headers["idempotent-replayed"] == "true" and again.json()["id"] == new.json()["id"]
    assert _create(client, org_a_key, body, "daily").status_code == 422
