"""The job state machine. Every status change is a compare-and-set that appends an event in the same
transaction, so running one twice is harmless and every change leaves a trace.

    validating_files → queued → running → succeeded | failed | cancelled
                                running ⇄ paused (resume goes back to queued)

Workers fence every write with the attempt number they were placed with: a worker that lost its job
(cancelled, reaped, re-placed) can no longer change it.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import CursorResult, update
from sqlmodel import Session, col

from core import ids, webhooks
from core.models import FineTuningJob, JobEvent, ServedAdapter, now_s

VALIDATING, QUEUED, RUNNING, PAUSED = "validating_files", "queued", "running", "paused"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE = frozenset({VALIDATING, QUEUED, RUNNING, PAUSED})


def _rowcount(session: Session, statement: Any) -> int:
    result: CursorResult[Any] = session.execute(statement)  # type: ignore[assignment]
    return int(result.rowcount)


def append_event(
    session: Session,
    *,
    job_id: str,
    message: str,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> JobEvent:
    event = JobEvent(
        id=ids.event_id(), job_id=job_id, message=message, level=level, type=type, data=data or {}
    )
    session.add(event)
    return event


def transition(
    session: Session,
    *,
    job_id: str,
    from_status: Collection[str],
    to_status: str,
    attempt: int | None = None,
    owner: str | None = None,
    message: str | None = None,
    level: str = "info",
    event_data: dict[str, Any] | None = None,
    **fields: Any,
) -> bool:
    """CAS `status` from any of `from_status` to `to_status` (and set `fields`). Returns False, changing
    nothing, when the job is not in an expected state or (with `attempt`) belongs to another attempt, or
    (with `owner`) is no longer held by that worker: the reaper releases a lost worker's job before it is
    placed again, and from then on the lost attempt can write nothing. The caller commits."""
    statement = (
        update(FineTuningJob)
        .where(col(FineTuningJob.id) == job_id, col(FineTuningJob.status).in_(list(from_status)))
        .values(status=to_status, updated_at=now_s(), **fields)
    )
    if attempt is not None:
        statement = statement.where(col(FineTuningJob.attempt) == attempt)
    if owner is not None:
        statement = statement.where(col(FineTuningJob.worker_id) == owner)
    changed = _rowcount(session, statement) == 1
    if changed and message:
        append_event(session, job_id=job_id, message=message, level=level, data=event_data)
    if changed and to_status in webhooks.EVENT_FOR_STATUS:
        # The webhook outbox row commits with the status change, or not at all.
        webhooks.record_job_event(session, job_id=job_id, type=webhooks.EVENT_FOR_STATUS[to_status])
    return changed


def update_fenced(
    session: Session,
    *,
    job_id: str,
    attempt: int,
    statuses: Collection[str] = (RUNNING,),
    owner: str | None = None,
    **fields: Any,
) -> bool:
    """Set `fields` only while the job is still this attempt's (and, with `owner`, still held by that
    worker) and in one of `statuses`."""
    statement = (
        update(FineTuningJob)
        .where(
            col(FineTuningJob.id) == job_id,
            col(FineTuningJob.attempt) == attempt,
            col(FineTuningJob.status).in_(list(statuses)),
        )
        .values(updated_at=now_s(), **fields)
    )
    if owner is not None:
        statement = statement.where(col(FineTuningJob.worker_id) == owner)
    return _rowcount(session, statement) == 1


def fine_tuned_model_name(*, base_model: str, org_name: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's naming: `ft:{base}:{org}:{suffix}:{id}`, with an empty suffix field when there is none."""
    return f"ft:{base_model}:{org_name}:{suffix or ''}:{job_id}"


def checkpoint_model_name(model_name: str, step: int) -> str:
    return f"{model_name}:ckpt-step-{step}"


def mark_model_ready(session: Session, *, job_id: str, model_id: str, replicas: list[str]) -> bool:
    """The fine-tuned model `model_id` is served by `replicas` (ids): record it once and append the job's
    `model.ready` event. A CAS on the served adapter's `ready_at`, so calling it again (another replica,
    another scheduler, a reload after a vLLM restart) changes nothing and returns False. The caller commits."""
    statement = (
        update(ServedAdapter)
        .where(col(ServedAdapter.id) == model_id, col(ServedAdapter.ready_at).is_(None))
        .values(status="ready", ready_at=now_s(), error=None)
    )
    if _rowcount(session, statement) != 1:
        return False
    append_event(
        session,
        job_id=job_id,
        message=f"Model ready: {model_id} is served by {len(replicas)} replica(s)",
        data={"replicas": list(replicas), "event": "model.ready", "model": model_id},
    )
    webhooks.record_job_event(session, job_id=job_id, type=webhooks.MODEL_READY, data={"model": model_id})
    return True
