"""The lease reaper: a job whose worker stopped renewing its lease goes back to the queue.

A claim gives the job a lease (`lease_expires_at`, FTSERVE_LEASE_TTL_S); the worker's heartbeat renews the
leases of the attempts it is running, in the DB, so a Redis outage does not expire them. A lease runs out
when the worker was killed, lost its machine or its network, or never received the task (Redis lost it).
The reaper then, in one fenced compare-and-set per job:

- `running` → `queued`, the worker's hold released, `lost_count` + 1, and an event naming the worker and
  the checkpoint the next attempt resumes from. The next placement bumps the attempt, and from the release
  on, the lost attempt can write nothing (every runner write is fenced by attempt and worker).
- after FTSERVE_MAX_LOST_ATTEMPTS such losses, `failed` instead (a job that keeps killing its workers).
- a job that is no longer running (paused, cancelled, or queued again while its runner wound down) just has
  its hold released, so the slot and the memory are free again.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from core import jobs
from core.db import session_scope
from core.models import FineTuningJob, JobCheckpoint, now_s

log = logging.getLogger("ftserve.scheduler")


def _last_checkpoint_step(engine: Engine, job_id: str) -> int | None:
    with Session(engine) as session:
        step = session.exec(
            select(func.max(JobCheckpoint.step_number)).where(
                JobCheckpoint.job_id == job_id, col(JobCheckpoint.deleted_at).is_(None)
            )
        ).first()
    return int(step) if step is not None else None


def reap_expired_leases(
    engine: Engine, *, max_lost_attempts: int = 3, now: float | None = None, lease_ttl_s: float = 30.0
) -> list[str]:
    """Handle every job whose lease has expired. Returns the ids of the jobs put back in the queue or failed."""
    now = time.time() if now is None else now
    with session_scope(engine) as session:
        # A job held with no lease at all was placed before leases existed (an upgrade): give it one, so a
        # worker that still runs it keeps it, and one that is gone loses it one lease later.
        session.execute(
            update(FineTuningJob)
            .where(col(FineTuningJob.worker_id).is_not(None), col(FineTuningJob.lease_expires_at).is_(None))
            .values(lease_expires_at=now + lease_ttl_s)
        )
    with Session(engine, expire_on_commit=False) as session:
        expired = session.exec(
            select(FineTuningJob).where(
                col(FineTuningJob.worker_id).is_not(None),
                col(FineTuningJob.lease_expires_at) < now,
            )
        ).all()
    moved: list[str] = []
    for job in expired:
        worker = str(job.worker_id)
        fence = [
            col(FineTuningJob.id) == job.id,
            col(FineTuningJob.attempt) == job.attempt,
            col(FineTuningJob.worker_id) == worker,
            col(FineTuningJob.lease_expires_at) < now,  # not renewed meanwhile
        ]
        released = {"worker_id": None, "lease_expires_at": None, "updated_at": now_s()}
        if job.status != jobs.RUNNING:
            with session_scope(engine) as session:
                session.execute(update(FineTuningJob).where(*fence).values(**released))
            continue
        lost = job.lost_count + 1
        step = _last_checkpoint_step(engine, job.id)
        silent_for = now - (job.lease_expires_at or now)
        data = {"worker_id": worker, "attempt": job.attempt, "lost_count": lost, "resume_step": step}
        with session_scope(engine) as session:
            if lost >= max_lost_attempts:
                message = (
                    f"Lost its worker {lost} times (last: {worker}, attempt {job.attempt}); giving up. "
                    "The job may be crashing its workers (e.g. running the machine out of host memory)."
                )
                statement = (
                    update(FineTuningJob)
                    .where(*fence, col(FineTuningJob.status) == jobs.RUNNING)
                    .values(
                        **released,
                        status=jobs.FAILED,
                        lost_count=lost,
                        finished_at=now_s(),
                        estimated_finish=None,
                        error={"code": "worker_lost", "message": message, "param": None},
                    )  # fmt: skip
                )
                level = "error"
            else:
                resume = f"from its checkpoint at step {step}" if step is not None else "from the start"
                message = (
                    f"Worker {worker} stopped renewing the lease of attempt {job.attempt} "
                    f"({silent_for:.0f}s past expiry): lost. Job re-queued; the next attempt resumes {resume}."
                )
                statement = (
                    update(FineTuningJob)
                    .where(*fence, col(FineTuningJob.status) == jobs.RUNNING)
                    .values(**released, status=jobs.QUEUED, lost_count=lost, estimated_finish=None)
                )
                level = "warn"
            if session.execute(statement).rowcount != 1:  # type: ignore[attr-defined]
                continue
            jobs.append_event(session, job_id=job.id, message=message, level=level, data=data)
        log.warning("job %s: %s", job.id, message)
        moved.append(job.id)
    return moved
