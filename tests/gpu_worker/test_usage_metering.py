"""The worker meters what it trains and stops at a job's caps (issue #21), on demo-tiny in this process.

Two organizations' jobs train for real; one of them is capped, pauses at its cap with an event that says which
cap and how to go on, and finishes once resumed with a higher one. The usage API's buckets then add up exactly to
each job's trained tokens."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from api.protocol import ResumeFineTuningJobRequest
from api.services.fine_tuning import resume_job
from core import jobs
from core.db import session_scope
from core.keys import create_key
from core.model_registry import register_model
from core.models import Organization, TrainingUsage
from core.queue import WorkerInfo
from core.settings import Settings
from core.storage import Storage
from gpu_worker.job_runner import run_attempt
from scheduler.dispatch import claim
from tests.scheduler.factories import chat_rows, events, get_job, make_file, make_job, messages
from tests.support.tenants import auth

pytestmark = pytest.mark.slow
HP = {"n_epochs": 2, "batch_size": 4}  # 12 examples: 3 steps per epoch, 6 in all


@pytest.fixture
def settings(tmp_path: Path, demo_model_dir: Path) -> Settings:
    # One trained token costs 1 (and GPU time nothing), so a cost cap reads like a token cap.
    settings = Settings(
        data_dir=tmp_path / "data",
        model_registry=tmp_path / "models.json",
        price_per_million_trained_tokens=1e6,
    )
    register_model(settings, "demo-tiny", demo_model_dir)
    return settings


@pytest.fixture
def client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    from api.main import create_app

    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _org_key(engine: Engine, name: str) -> tuple[str, str]:
    with session_scope(engine) as session:
        row, key = create_key(session, org_name=name)
        return row.organization_id, key


def _run(engine: Engine, settings: Settings, job_id: str) -> None:
    """Place the queued job as the scheduler does, and run the attempt as the worker does."""
    attempt = claim(engine, get_job(engine, job_id), WorkerInfo(id="w-test"))
    assert attempt is not None
    run_attempt(settings, job_id, attempt)


def _usage_rows(engine: Engine, job_id: str) -> list[TrainingUsage]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(TrainingUsage)
                .where(TrainingUsage.job_id == job_id)
                .order_by(col(TrainingUsage.attempt))
            ).all()
        )


def _resume(engine: Engine, settings: Settings, org_id: str, job_id: str, **caps: Any) -> None:
    with Session(engine, expire_on_commit=False) as session:
        org = session.exec(select(Organization).where(Organization.id == org_id)).one()
        resume_job(
            session=session, org=org, job_id=job_id, settings=settings,
            request=ResumeFineTuningJobRequest(**caps),
        )  # fmt: skip


def _fine_tuning(client: TestClient, key: str, **params: Any) -> list[dict[str, Any]]:
    day = int(time.time()) // 86400 * 86400
    page = client.get(
        "/v1/organization/usage/fine_tuning", headers=auth(key), params={"start_time": day, **params}
    )
    assert page.status_code == 200, page.text
    return [r for bucket in page.json()["data"] for r in bucket["results"]]


def test_two_orgs_train_a_capped_job_pauses_at_its_cap_and_usage_adds_up(
    settings: Settings, engine: Engine, storage: Storage, client: TestClient
) -> None:
    org_a, key_a = _org_key(engine, "meter-a")
    org_b, key_b = _org_key(engine, "meter-b")
    plain = make_job(engine, org_b, make_file(engine, storage, org_b, chat_rows(12)), status=jobs.QUEUED,
                     hyperparameters=HP)  # fmt: skip
    _run(engine, settings, plain)
    total = get_job(engine, plain).trained_tokens
    assert get_job(engine, plain).status == jobs.SUCCEEDED and total and total % 2 == 0

    # The same job for org A, capped at half its tokens: it pauses after step 3 of 6.
    capped = make_job(engine, org_a, make_file(engine, storage, org_a, chat_rows(12)), status=jobs.QUEUED,
                      hyperparameters=HP)  # fmt: skip
    with session_scope(engine) as session:
        jobs.update_fenced(
            session, job_id=capped, attempt=0, statuses=[jobs.QUEUED], max_trained_tokens=total // 2
        )
    _run(engine, settings, capped)
    job = get_job(engine, capped)
    assert job.status == jobs.PAUSED, messages(engine, capped)
    cap_event = next(e for e in events(engine, capped) if (e.data or {}).get("cap"))
    assert cap_event.level == "warn" and cap_event.data == {
        "cap": "max_trained_tokens", "limit": total // 2, "used": total // 2, "step": 3
    }  # fmt: skip
    assert (
        f"max_trained_tokens reached: {total // 2} tokens trained, the cap is {total // 2}"
        in cap_event.message
    )
    assert f"POST /v1/fine_tuning/jobs/{capped}/resume" in cap_event.message
    assert "Paused at step 3" in messages(engine, capped)
    assert [(r.attempt, r.trained_tokens, r.gpu_class) for r in _usage_rows(engine, capped)] == [
        (1, total // 2, "cpu")
    ]

    with pytest.raises(Exception, match="max_trained_tokens"):  # still at its cap: refused
        _resume(engine, settings, org_a, capped)
    _resume(engine, settings, org_a, capped, max_trained_tokens=total)
    _run(engine, settings, capped)
    job = get_job(engine, capped)
    assert job.status == jobs.SUCCEEDED and job.trained_tokens == total, messages(engine, capped)
    rows = _usage_rows(engine, capped)
    assert [r.attempt for r in rows] == [1, 2] and sum(r.trained_tokens for r in rows) == total
    assert all(r.gpu_seconds > 0 and r.cost == r.trained_tokens for r in rows)

    # The usage API: each org's buckets add up to its jobs' trained tokens, and group by job.
    for key, job_id in ((key_a, capped), (key_b, plain)):
        results = _fine_tuning(client, key)
        assert sum(r["trained_tokens"] for r in results) == total
        assert [(r["job_id"], r["trained_tokens"]) for r in _fine_tuning(client, key, group_by="job_id")] == [
            (job_id, total)
        ]
        assert sum(r["cost"]["value"] for r in results) == pytest.approx(total)


def test_a_cost_cap_pauses_the_job(settings: Settings, engine: Engine, storage: Storage) -> None:
    org, _key = _org_key(engine, "meter-cost")
    job_id = make_job(engine, org, make_file(engine, storage, org, chat_rows(12)), status=jobs.QUEUED,
                      hyperparameters=HP)  # fmt: skip
    with session_scope(engine) as session:
        jobs.update_fenced(session, job_id=job_id, attempt=0, statuses=[jobs.QUEUED], max_cost=1.0)
    _run(engine, settings, job_id)
    assert get_job(engine, job_id).status == jobs.PAUSED, messages(engine, job_id)
    cap_event = next(e for e in events(engine, job_id) if (e.data or {}).get("cap"))
    assert cap_event.data is not None and cap_event.data["cap"] == "max_cost" and cap_event.data["step"] == 1
    assert "max_cost reached" in cap_event.message and '{"max_cost": <a higher cap>}' in cap_event.message
    assert _usage_rows(engine, job_id)[0].cost >= 1.0
