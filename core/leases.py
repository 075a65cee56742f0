"""Job leases, the worker's side: its heartbeat extends the lease of every attempt it runs (the scheduler's
reaper, scheduler/leases.py, re-queues jobs whose lease ran out)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col

from core.db import session_scope
from core.models import FineTuningJob


def renew_leases(
    engine: Engine, worker_id: str, attempts: Iterable[tuple[str, int]], ttl_s: float
) -> list[str]:
    """The worker's side: extend the leases of the attempts it runs. Returns the job ids it no longer holds
    (re-placed or reaped), whose runners should stop."""
    lost = []
    until = time.time() + ttl_s
    with session_scope(engine) as session:
        for job_id, attempt in attempts:
            result = session.execute(
                update(FineTuningJob)
                .where(
                    col(FineTuningJob.id) == job_id,
                    col(FineTuningJob.attempt) == attempt,
                    col(FineTuningJob.worker_id) == worker_id,
                )
                .values(lease_expires_at=until)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                lost.append(job_id)
    return lost
