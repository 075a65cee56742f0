"""Leases: the reaper re-queues a lost worker's job (and fails it after too many losses), the worker's
renewals keep it, and the lost attempt can write nothing afterwards: not events, not progress, not a
checkpoint, not the final success, not a release of the new attempt's hold. SQLite and PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core import jobs
from core.db import make_engine, migrate, session_scope
from core.leases import renew_leases
from core.models import FineTuningJob, JobCheckpoint
from core.queue import Device, WorkerInfo
from core.settings import Settings
from core.storage import Storage
from gpu_worker.db_reporter import DbReporter, checkpoint_is_complete, checkpoint_prefix
from gpu_worker.job_runner import release
from scheduler.dispatch import claim
from scheduler.leases import reap_expired_leases
from scheduler.placement import Device as PlacedDevice
from scheduler.placement import WorkerView
from tests.scheduler.factories import chat_rows, get_job, make_file, make_job, make_org, messages

GPU = Device(index=0, name="A10-24GB", total_mb=24576, free_mb=24576)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, settings: Settings) -> Engine:
    url = (
        request.getfixturevalue("postgres_url")
        if request.param == "postgres"
        else settings.resolved_database_url
    )
    migrate(url)
    return make_engine(url)


def _place(engine: Engine, job_id: str, worker_id: str) -> int:
    info = WorkerInfo(id=worker_id, gpus=[GPU])
    device = PlacedDevice(
        WorkerView(worker_id, info.queue, 1, 0), 0, GPU.name, GPU.total_mb, GPU.free_mb, "gpu"
    )
    attempt = claim(engine, get_job(engine, job_id), info, device=device, reserve_mb=2000, capacity_mb=24576)
    assert attempt is not None
    return attempt


def _expire(engine: Engine, job_id: str) -> None:
    with session_scope(engine) as session:
        session.execute(
            update(FineTuningJob)
            .where(col(FineTuningJob.id) == job_id)
            .values(lease_expires_at=time.time() - 5)
        )


def _checkpoint_row(engine: Engine, job_id: str, org: str, step: int) -> None:
    with session_scope(engine) as session:
        session.add(
            JobCheckpoint(
                id=f"ftckpt-{job_id[-6:]}-{step}", job_id=job_id, organization_id=org, step_number=step,
                attempt=1, fine_tuned_model_checkpoint=f"ft:x:ckpt-step-{step}",
                storage_prefix=checkpoint_prefix(job_id, step, 1),
            )
        )  # fmt: skip


def test_a_lost_workers_job_is_requeued_and_its_attempt_can_write_nothing(
    db: Engine, storage: Storage, tmp_path: Path
) -> None:
    org = make_org(db)
    job_id = make_job(db, org, make_file(db, storage, org, chat_rows(12)), status=jobs.QUEUED)
    assert _place(db, job_id, "w-lost") == 1
    _checkpoint_row(db, job_id, org, 4)
    zombie = DbReporter(
        engine=db, storage=storage, job_id=job_id, attempt=1, organization_id=org,
        model_name="ft:demo-tiny:org:x:" + job_id, owner="w-lost",
    )  # fmt: skip
    zombie.metrics({"step": 5, "total_steps": 20, "train_loss": 1.0})
    zombie.flush(force=True)
    assert get_job(db, job_id).step == 5

    # A renewed lease is not reaped; an expired one is.
    assert renew_leases(db, "w-lost", [(job_id, 1)], ttl_s=30) == []
    assert reap_expired_leases(db) == []
    _expire(db, job_id)
    assert reap_expired_leases(db) == [job_id]
    job = get_job(db, job_id)
    assert (job.status, job.worker_id, job.attempt, job.lost_count, job.lease_expires_at) == (
        jobs.QUEUED, None, 1, 1, None,
    )  # fmt: skip
    assert messages(db, job_id)[-1].startswith("Worker w-lost stopped renewing the lease of attempt 1")
    assert messages(db, job_id)[-1].endswith("the next attempt resumes from its checkpoint at step 4.")
    assert reap_expired_leases(db) == []  # once

    # The lost attempt, still running somewhere, is fenced out of everything.
    before = messages(db, job_id)
    assert renew_leases(db, "w-lost", [(job_id, 1)], ttl_s=30) == [job_id]
    assert zombie.should_stop() == "cancel"
    assert not zombie.write_events([{"message": "late"}], step=9)
    local = tmp_path / "ckpt"
    local.mkdir()
    (local / "adapter_model.safetensors").write_bytes(b"x" * 10)
    zombie.checkpoint(8, local, {"step": 8})
    with session_scope(db) as session:
        assert not jobs.transition(
            session, job_id=job_id, from_status=[jobs.RUNNING, jobs.PAUSED, jobs.QUEUED],
            to_status=jobs.SUCCEEDED, attempt=1, owner="w-lost",
        )  # fmt: skip
    assert messages(db, job_id) == before and get_job(db, job_id).step == 5
    assert not checkpoint_is_complete(storage, checkpoint_prefix(job_id, 8, 1))

    # The next placement is attempt 2; the old attempt's release cannot free the new hold.
    assert _place(db, job_id, "w-next") == 2
    assert "Resumed on worker w-next (attempt 2)" in messages(db, job_id)
    release(db, job_id, 1, "w-lost")
    assert get_job(db, job_id).worker_id == "w-next"
    assert zombie.should_stop() == "cancel"
    db.dispose()


def test_after_too_many_losses_the_job_fails(db: Engine, storage: Storage) -> None:
    org = make_org(db)
    job_id = make_job(db, org, make_file(db, storage, org, chat_rows(12)), status=jobs.QUEUED)
    for n in range(1, 4):
        _place(db, job_id, f"w{n}")
        _expire(db, job_id)
        assert reap_expired_leases(db, max_lost_attempts=3) == [job_id]
    job = get_job(db, job_id)
    assert job.status == jobs.FAILED and job.error and job.error["code"] == "worker_lost"
    assert job.lost_count == 3 and job.worker_id is None
    db.dispose()


def test_a_stopped_job_whose_runner_died_just_gets_its_hold_back(db: Engine, storage: Storage) -> None:
    org = make_org(db)
    job_id = make_job(db, org, make_file(db, storage, org, chat_rows(12)), status=jobs.QUEUED)
    _place(db, job_id, "w1")
    with session_scope(db) as session:  # paused by the user; the runner dies before it releases
        jobs.transition(session, job_id=job_id, from_status=[jobs.RUNNING], to_status=jobs.PAUSED)
    _expire(db, job_id)
    assert reap_expired_leases(db) == []
    job = get_job(db, job_id)
    assert (job.status, job.worker_id, job.lost_count) == (jobs.PAUSED, None, 0)
    with Session(db) as session:  # nothing else changed
        assert session.exec(select(FineTuningJob.attempt).where(FineTuningJob.id == job_id)).one() == 1
    db.dispose()


def test_a_job_held_without_a_lease_gets_one_and_loses_it_only_if_not_renewed(
    db: Engine, storage: Storage
) -> None:
    org = make_org(db)
    job_id = make_job(db, org, make_file(db, storage, org, chat_rows(12)), status=jobs.QUEUED)
    _place(db, job_id, "w-old")
    with session_scope(db) as session:  # placed before leases existed
        session.execute(
            update(FineTuningJob).where(col(FineTuningJob.id) == job_id).values(lease_expires_at=None)
        )
    assert reap_expired_leases(db, lease_ttl_s=30) == []
    assert get_job(db, job_id).lease_expires_at is not None and get_job(db, job_id).status == jobs.RUNNING
    _expire(db, job_id)
    assert reap_expired_leases(db, lease_ttl_s=30) == [job_id]
    db.dispose()
