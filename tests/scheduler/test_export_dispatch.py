"""Handing exports to workers (scheduler/exports.py) on a real Redis and SQLite: idle workers first and one export
per worker, the arq `export` task on that worker's queue, and a lost worker's export queued again (a new attempt,
which fences the old one out) until it has lost too many."""

from __future__ import annotations

from arq.connections import ArqRedis
from arq.jobs import Job
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from core import exports, ids, jobs
from core.db import session_scope
from core.models import FineTuningJob, JobEvent, JobExport, Organization
from core.queue import EXPORT_TASK, WorkerInfo, deserialize, queue_name
from core.settings import Settings
from scheduler.exports import dispatch_exports


def _seed(engine: Engine, n: int) -> tuple[str, list[str]]:
    with session_scope(engine) as session:
        org = Organization(id=ids.org_id(), name="org-exports")
        job = FineTuningJob(
            id=ids.job_id(),
            organization_id=org.id,
            model="demo-tiny",
            training_file="file-x",
            status=jobs.SUCCEEDED,
        )
        rows = [
            JobExport(
                id=ids.new_id("ftexp-"),
                organization_id=org.id,
                job_id=job.id,
                format="gguf",
                source_model="ft:x",
            )
            for _ in range(n)
        ]
        session.add_all([org, job, *rows])
    return job.id, [r.id for r in rows]


def _rows(engine: Engine) -> dict[str, JobExport]:
    with Session(engine) as session:
        return {r.id: r for r in session.exec(select(JobExport)).all()}


def _expire(engine: Engine, export_id: str) -> None:
    with session_scope(engine) as session:
        row = session.exec(select(JobExport).where(JobExport.id == export_id)).one()
        row.lease_expires_at = 0.0
        session.add(row)


async def test_exports_go_to_idle_workers_one_each(
    engine: Engine, arq_redis: ArqRedis, settings: Settings
) -> None:
    settings.max_lost_attempts = 2
    job_id, (first, second, third) = _seed(engine, 3)
    workers = [WorkerInfo(id="w-busy", running_jobs=["ftjob-training"]), WorkerInfo(id="w-idle")]

    assert await dispatch_exports(engine, arq_redis, workers, settings) == [first, second]
    rows = _rows(engine)
    assert (rows[first].worker_id, rows[first].attempt) == ("w-idle", 1)
    assert (rows[second].worker_id, rows[second].attempt) == ("w-busy", 1)
    assert rows[third].worker_id is None and rows[third].status == exports.QUEUED  # both workers hold one
    task = await Job(
        f"{first}:1", arq_redis, _queue_name=queue_name("w-idle"), _deserializer=deserialize
    ).info()
    assert task is not None and task.function == EXPORT_TASK
    assert task.kwargs == {"export_id": first, "attempt": 1}
    assert (
        await dispatch_exports(engine, arq_redis, workers, settings) == []
    )  # nothing moves while leases hold

    # w-idle is lost: its export is queued again and, the oldest waiting, handed out first as attempt 2.
    _expire(engine, first)
    assert await dispatch_exports(engine, arq_redis, workers, settings) == [first]
    rows = _rows(engine)
    assert (rows[first].worker_id, rows[first].attempt, rows[first].status) == ("w-idle", 2, exports.QUEUED)
    with session_scope(engine) as session:  # the lost attempt can no longer start or renew it
        assert not exports.renew_lease(session, first, 1, worker_id="w-idle", lease_ttl_s=30)
        assert exports.renew_lease(session, first, 2, worker_id="w-idle", lease_ttl_s=30)

    # Lost again: max_lost_attempts (2) reached, so it fails with the reason; the third export takes the worker.
    _expire(engine, first)
    assert await dispatch_exports(engine, arq_redis, workers, settings) == [third]
    rows = _rows(engine)
    assert rows[first].status == exports.FAILED and rows[first].error is not None
    assert rows[first].error["code"] == "worker_lost" and rows[first].worker_id is None
    with Session(engine) as session:
        messages = [e.message for e in session.exec(select(JobEvent).where(JobEvent.job_id == job_id)).all()]
    assert any("stopped renewing its lease; export re-queued" in m for m in messages), messages
    assert any(m.startswith(f"Export gguf ({first}) failed: it lost its worker 2 times") for m in messages)
