"""Moving jobs along: `validating_files → queued` (re-check the files), then `queued → running` (place on a
live worker and enqueue arq's `train` task on that worker's queue).

The DB is the truth and every move is a compare-and-set, so any number of schedulers can run these at once:
a job is placed once per attempt whoever wins. Reads happen in their own short transactions and each CAS
starts a fresh one with its UPDATE, which on SQLite takes the write lock first (a read-then-write
transaction could fail with "database is locked" instead of waiting).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core import jobs, webhooks
from core.db import session_scope
from core.models import File, FineTuningJob, now_s
from core.queue import TRAIN_TASK, WorkerInfo, arq_job_id
from scheduler.placement import choose_worker

log = logging.getLogger("ftserve.scheduler")

ChooseWorker = Callable[[FineTuningJob, Sequence[WorkerInfo], dict[str, int]], WorkerInfo | None]


# -- validating_files → queued ---------------------------------------------------------------------------------


def _file_problem(
    session: Session, job: FineTuningJob, file_id: str, kind: str
) -> tuple[str | None, File | None]:
    """(why the file can't be trained on, or None; the row)."""
    row = session.exec(select(File).where(File.id == file_id)).first()
    if row is None or row.deleted_at is not None or row.organization_id != job.organization_id:
        return f"The {kind} file {file_id} no longer exists.", None
    if row.status != "processed":
        return f"The {kind} file {file_id} is not processed (status '{row.status}').", row
    return None, row


def validate_job(engine: Engine, job_id: str) -> str | None:
    """Re-check one `validating_files` job's files; queue it or fail it. Returns the new status, or None when
    another process moved the job first."""
    with Session(engine) as session:
        job = session.exec(select(FineTuningJob).where(FineTuningJob.id == job_id)).first()
        if job is None or job.status != jobs.VALIDATING:
            return None
        checked = [("training", job.training_file)]
        if job.validation_file:
            checked.append(("validation", job.validation_file))
        results = [(kind, file_id, *_file_problem(session, job, file_id, kind)) for kind, file_id in checked]

    with session_scope(engine) as session:
        for kind, _file_id, problem, _row in results:
            if problem:
                error = {"code": f"invalid_{kind}_file", "message": problem, "param": f"{kind}_file"}
                moved = jobs.transition(
                    session,
                    job_id=job_id,
                    from_status=[jobs.VALIDATING],
                    to_status=jobs.FAILED,
                    error=error,
                    finished_at=now_s(),
                    message=problem,
                    level="error",
                )
                return jobs.FAILED if moved else None
        if not jobs.transition(session, job_id=job_id, from_status=[jobs.VALIDATING], to_status=jobs.QUEUED):
            return None
        # Appended only by the process whose CAS won, in the same transaction: no duplicates.
        for kind, file_id, _problem, row in results:
            assert row is not None
            jobs.append_event(
                session,
                job_id=job_id,
                message=f"Validated {kind} file: {row.example_count} examples",
                data={"file_id": file_id, "examples": row.example_count},
            )
        jobs.append_event(session, job_id=job_id, message="Job queued")
    return jobs.QUEUED


def validate_pending(engine: Engine, *, limit: int = 100) -> int:
    """Validate up to `limit` waiting jobs, oldest first. Returns how many this call moved."""
    with Session(engine) as session:
        job_ids = session.exec(
            select(FineTuningJob.id)
            .where(FineTuningJob.status == jobs.VALIDATING)
            .order_by(col(FineTuningJob.created_at), col(FineTuningJob.seq))
            .limit(limit)
        ).all()
    return sum(validate_job(engine, job_id) is not None for job_id in job_ids)


# -- queued → running ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    job_id: str
    attempt: int
    worker_id: str


def worker_load(engine: Engine, worker_ids: Sequence[str]) -> dict[str, int]:
    """Jobs each worker holds: placed on it and not yet released by its job runner, whatever their status
    (a cancelled job still occupies its slot until the runner notices and exits)."""
    if not worker_ids:
        return {}
    with Session(engine) as session:
        rows = session.exec(
            select(FineTuningJob.worker_id, func.count())
            .where(col(FineTuningJob.worker_id).in_(list(worker_ids)))
            .group_by(col(FineTuningJob.worker_id))
        ).all()
    return {str(worker_id): int(count) for worker_id, count in rows}


def oldest_unplaced(engine: Engine, *, skip: set[str]) -> FineTuningJob | None:
    """The oldest queued job that no runner still holds (a job resumed while its runner is finishing up
    still has a worker_id, and waits for the release)."""
    with Session(engine, expire_on_commit=False) as session:
        statement = (
            select(FineTuningJob)
            .where(FineTuningJob.status == jobs.QUEUED, col(FineTuningJob.worker_id).is_(None))
            .order_by(col(FineTuningJob.created_at), col(FineTuningJob.seq))
        )
        if skip:
            statement = statement.where(col(FineTuningJob.id).not_in(list(skip)))
        return session.exec(statement.limit(1)).first()


def claim(engine: Engine, job: FineTuningJob, worker: WorkerInfo) -> int | None:
    """CAS queued→running with attempt+1 on `worker`. Returns the new attempt, or None if another scheduler
    (or a cancel) got there first."""
    attempt = job.attempt + 1
    now = now_s()
    with session_scope(engine) as session:
        statement = (
            update(FineTuningJob)
            .where(
                col(FineTuningJob.id) == job.id,
                col(FineTuningJob.status) == jobs.QUEUED,
                col(FineTuningJob.attempt) == job.attempt,
                col(FineTuningJob.worker_id).is_(None),
            )
            .values(
                status=jobs.RUNNING,
                attempt=attempt,
                worker_id=worker.id,
                started_at=func.coalesce(FineTuningJob.started_at, now),
                updated_at=now,
            )
        )
        if session.execute(statement).rowcount != 1:  # type: ignore[attr-defined]
            return None
        message = (
            "Fine-tuning job started"
            if attempt == 1
            else f"Resumed on worker {worker.id} (attempt {attempt})"
        )
        jobs.append_event(
            session, job_id=job.id, message=message, data={"worker_id": worker.id, "attempt": attempt}
        )
        webhooks.record_event(
            session, organization_id=job.organization_id, type=webhooks.JOB_RUNNING, job_id=job.id
        )
    return attempt


def unclaim(engine: Engine, job_id: str, attempt: int, reason: str) -> bool:
    """Undo a claim whose enqueue failed: back to queued, fenced so a later attempt is never touched."""
    with session_scope(engine) as session:
        return jobs.transition(
            session,
            job_id=job_id,
            from_status=[jobs.RUNNING],
            to_status=jobs.QUEUED,
            attempt=attempt,
            worker_id=None,
            message=f"Could not start on a worker ({reason}); job queued again",
            level="warn",
        )


async def place_queued(
    engine: Engine,
    redis: Any,
    workers: Sequence[WorkerInfo],
    *,
    choose: ChooseWorker = choose_worker,
    max_placements: int = 100,
) -> list[Placement]:
    """Place queued jobs, oldest first, until none fits. `redis` is an arq pool (ArqRedis)."""
    placed: list[Placement] = []
    if not workers:
        return placed
    load = worker_load(engine, [w.id for w in workers])
    skip: set[str] = set()
    while len(placed) < max_placements:
        job = oldest_unplaced(engine, skip=skip)
        if job is None:
            break
        worker = choose(job, workers, load)
        if worker is None:
            break  # first in, first out: nothing younger jumps a job that waits for room
        attempt = claim(engine, job, worker)
        if attempt is None:
            skip.add(job.id)  # moved by someone else; look at the next one
            continue
        try:
            await redis.enqueue_job(
                TRAIN_TASK,
                job_id=job.id,
                attempt=attempt,
                _job_id=arq_job_id(job.id, attempt),
                _queue_name=worker.queue,
            )
        except Exception as exc:  # noqa: BLE001 (any Redis failure: give the job back and retry next tick)
            log.warning("enqueue of %s attempt %d on %s failed: %s", job.id, attempt, worker.id, exc)
            unclaim(engine, job.id, attempt, type(exc).__name__)
            break  # Redis is likely down: try again next tick
        log.info("placed %s (attempt %d) on %s", job.id, attempt, worker.id)
        load[worker.id] = load.get(worker.id, 0) + 1
        placed.append(Placement(job.id, attempt, worker.id))
    return placed
