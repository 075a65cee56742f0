"""Handing exports (core.exports) to workers: every tick, re-queue the exports of lost workers, then give each
queued export to a live worker and enqueue arq's `export` task on that worker's queue.

A worker makes one export at a time, beside its training (its arq worker has a slot more than its training
jobs), on its CPU: an export never takes GPU memory that placement reserved for training. Idle workers first.
The claim is a compare-and-set, so any number of schedulers can run this at once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core import exports
from core.db import session_scope
from core.models import JobExport
from core.queue import EXPORT_TASK, ExportTask, WorkerInfo, queue_name
from core.settings import Settings

log = logging.getLogger("ftserve.scheduler")


async def dispatch_exports(
    engine: Engine, redis: Any, workers: Sequence[WorkerInfo], settings: Settings, *, limit: int = 50
) -> list[str]:
    """Returns the ids of the exports handed out this tick."""
    with session_scope(engine) as session:
        lost = exports.reap_expired(session, max_lost_attempts=settings.max_lost_attempts)
    for export_id in lost:
        log.warning("export %s lost its worker", export_id)
    if not workers:
        return []
    with Session(engine) as session:
        waiting = list(
            session.exec(
                select(JobExport.id)
                .where(JobExport.status == exports.QUEUED, col(JobExport.worker_id).is_(None))
                .order_by(col(JobExport.seq))
                .limit(limit)
            ).all()
        )
        if not waiting:
            return []
        busy = set(
            session.exec(
                select(JobExport.worker_id).where(
                    col(JobExport.worker_id).is_not(None), col(JobExport.status).in_(list(exports.ACTIVE))
                )
            ).all()
        )
    free = sorted((w for w in workers if w.id not in busy), key=lambda w: (len(w.running_jobs), w.id))
    handed: list[str] = []
    for export_id, worker in zip(waiting, free, strict=False):
        with session_scope(engine) as session:
            attempt = exports.claim(session, export_id, worker_id=worker.id, lease_ttl_s=settings.lease_ttl_s)
        if attempt is None:
            continue
        task = ExportTask(export_id=export_id, attempt=attempt)
        try:
            await redis.enqueue_job(
                EXPORT_TASK, **task.model_dump(), _job_id=task.arq_job_id, _queue_name=queue_name(worker.id)
            )
        except Exception as exc:  # noqa: BLE001 (any Redis failure: give it back and retry next tick)
            log.warning("enqueue of export %s on %s failed: %s", export_id, worker.id, exc)
            with session_scope(engine) as session:
                exports.release(session, export_id, attempt, worker_id=worker.id)
            break
        log.info("export %s (attempt %d) handed to %s", export_id, attempt, worker.id)
        handed.append(export_id)
    return handed
