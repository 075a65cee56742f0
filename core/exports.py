"""Exports of a job's adapter (issue #18): statuses, the compare-and-set moves the API, the scheduler and the
worker share, and the per-organization storage they use.

    queued ──(scheduler: claim on a live worker, a lease)──▶ queued+worker ──(worker starts)──▶ running
    running ──▶ succeeded (file_id set, a File published) | failed (error, and what the checks found)
    queued+worker | running, lease expired (worker lost, or Redis lost the task) ──▶ queued again, or failed
                                                                                  after max_lost_attempts

Every worker write is fenced by attempt and worker, as for jobs (core.jobs), and each move appends an event to the
job ("Export gguf started", "Export gguf succeeded: file-..."), in the same transaction.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import CursorResult, func, update
from sqlmodel import Session, col, select

from core import jobs
from core.models import File, JobExport, now_s

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
ACTIVE = frozenset({QUEUED, RUNNING})
FORMATS = ("adapter", "merged", "gguf")
# OpenAI's purpose for files a fine-tuning job produces (results.csv has it too), so the official SDK reads them.
FILE_PURPOSE = "fine-tune-results"


def filename_stem(job_id: str, checkpoint_step: int | None) -> str:
    return job_id if checkpoint_step is None else f"{job_id}-step-{checkpoint_step}"


def used_bytes(session: Session, organization_id: str) -> int:
    """Bytes of the organization's export files that are not deleted."""
    total = session.exec(
        select(func.coalesce(func.sum(File.bytes), 0))
        .join(JobExport, col(JobExport.file_id) == col(File.id))
        .where(JobExport.organization_id == organization_id, col(File.deleted_at).is_(None))
    ).one()
    return int(total)


def active_count(session: Session, organization_id: str) -> int:
    return int(
        session.exec(
            select(func.count()).where(
                JobExport.organization_id == organization_id, col(JobExport.status).in_(list(ACTIVE))
            )
        ).one()
    )


def _rowcount(session: Session, statement: Any) -> int:
    result: CursorResult[Any] = session.execute(statement)  # type: ignore[assignment]
    return int(result.rowcount)


def transition(
    session: Session,
    export: JobExport,
    *,
    from_status: str,
    to_status: str,
    attempt: int | None = None,
    owner: str | None = None,
    message: str | None = None,
    level: str = "info",
    event_data: dict[str, Any] | None = None,
    **fields: Any,
) -> bool:
    """CAS the export's status (fenced by attempt and worker when given) and append `message` to its job's events.
    The caller commits."""
    statement = (
        update(JobExport)
        .where(col(JobExport.id) == export.id, col(JobExport.status) == from_status)
        .values(status=to_status, updated_at=now_s(), **fields)
    )
    if attempt is not None:
        statement = statement.where(col(JobExport.attempt) == attempt)
    if owner is not None:
        statement = statement.where(col(JobExport.worker_id) == owner)
    changed = _rowcount(session, statement) == 1
    if changed and message:
        data = {"export_id": export.id, "format": export.format, "status": to_status, **(event_data or {})}
        jobs.append_event(session, job_id=export.job_id, message=message, level=level, data=data)
    return changed


def claim(session: Session, export_id: str, *, worker_id: str, lease_ttl_s: float) -> int | None:
    """Hand a queued, unheld export to `worker_id` with a new attempt and a lease; returns the attempt, or None
    when someone else took it first. The caller commits."""
    row = session.exec(select(JobExport).where(JobExport.id == export_id)).first()
    if row is None or row.status != QUEUED or row.worker_id is not None:
        return None
    attempt = row.attempt + 1
    statement = (
        update(JobExport)
        .where(
            col(JobExport.id) == export_id,
            col(JobExport.status) == QUEUED,
            col(JobExport.worker_id).is_(None),
            col(JobExport.attempt) == row.attempt,
        )
        .values(
            worker_id=worker_id,
            attempt=attempt,
            lease_expires_at=time.time() + lease_ttl_s,
            updated_at=now_s(),
        )
    )
    return attempt if _rowcount(session, statement) == 1 else None


def release(session: Session, export_id: str, attempt: int, *, worker_id: str) -> bool:
    """Give a claimed export back unstarted (its task could not be enqueued). The caller commits."""
    statement = (
        update(JobExport)
        .where(
            col(JobExport.id) == export_id,
            col(JobExport.status) == QUEUED,
            col(JobExport.attempt) == attempt,
            col(JobExport.worker_id) == worker_id,
        )
        .values(worker_id=None, lease_expires_at=None, updated_at=now_s())
    )
    return _rowcount(session, statement) == 1


def renew_lease(
    session: Session, export_id: str, attempt: int, *, worker_id: str, lease_ttl_s: float
) -> bool:
    """Extend the lease while the worker makes the export; False once it is no longer this attempt's."""
    statement = (
        update(JobExport)
        .where(
            col(JobExport.id) == export_id,
            col(JobExport.attempt) == attempt,
            col(JobExport.worker_id) == worker_id,
            col(JobExport.status).in_(list(ACTIVE)),
        )
        .values(lease_expires_at=time.time() + lease_ttl_s)
    )
    return _rowcount(session, statement) == 1


def reap_expired(session: Session, *, max_lost_attempts: int, now: float | None = None) -> list[str]:
    """Exports whose worker stopped renewing their lease: queued again (a new attempt elsewhere), or failed once
    they have lost `max_lost_attempts` workers. Returns their ids. The caller commits."""
    now = time.time() if now is None else now
    expired = session.exec(
        select(JobExport).where(
            col(JobExport.worker_id).is_not(None),
            col(JobExport.status).in_(list(ACTIVE)),
            col(JobExport.lease_expires_at) < now,
        )
    ).all()
    moved = []
    for export in expired:
        fence: dict[str, Any] = {"attempt": export.attempt, "owner": export.worker_id}
        released: dict[str, Any] = {"worker_id": None, "lease_expires_at": None}
        what = f"Export {export.format} ({export.id})"
        if export.attempt >= max_lost_attempts:
            message = f"{what} failed: it lost its worker {export.attempt} times (last: {export.worker_id})."
            done = transition(
                session, export, from_status=export.status, to_status=FAILED, message=message, level="error",
                error={"code": "worker_lost", "message": message}, finished_at=now_s(), **fence, **released,
            )  # fmt: skip
        else:
            message = f"{what}: worker {export.worker_id} stopped renewing its lease; export re-queued."
            done = transition(
                session, export, from_status=export.status, to_status=QUEUED, message=message, level="warn",
                **fence, **released,
            )  # fmt: skip
        if done:
            moved.append(export.id)
    return moved
