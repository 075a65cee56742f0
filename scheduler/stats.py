"""The scheduler's Prometheus gauges.

Gauges are counted from the DB and the worker registry every few seconds (`Scheduler.tick` calls
`refresh_gauges`), not on every 0.5 s tick: a GROUP BY over all jobs is cheap but not free. Every scheduler
reports the same DB counts, so sum them in PromQL only for counters and histograms, never for these gauges.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import Gauge
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core import jobs, metrics, webhooks
from core.models import FineTuningJob, WebhookDelivery
from core.queue import WorkerInfo
from scheduler.dispatch import holdings

ALL_STATUSES = (jobs.VALIDATING, jobs.QUEUED, jobs.RUNNING, jobs.PAUSED, *sorted(jobs.TERMINAL))


def _set_all(gauge: Gauge, values: dict[tuple[str, str], float], previous: set[tuple[str, str]]) -> None:
    for labels in (
        previous - values.keys()
    ):  # a worker that left: its series goes, not stays at its last value
        gauge.remove(*labels)
    for labels, value in values.items():
        gauge.labels(*labels).set(value)


_device_labels: set[tuple[str, str]] = set()  # the (worker, gpu) series set by the last refresh


def refresh_gauges(engine: Engine, workers: Sequence[WorkerInfo]) -> None:
    """Jobs by status, queue depth, device memory (reported, free, reserved) and the webhook backlog."""
    with Session(engine) as session:
        counts = dict(
            session.exec(select(FineTuningJob.status, func.count()).group_by(col(FineTuningJob.status))).all()
        )
        oldest = session.exec(
            select(func.min(WebhookDelivery.created_at)).where(
                col(WebhookDelivery.status) == webhooks.PENDING
            )
        ).one()
    for status in {*ALL_STATUSES, *counts}:
        metrics.JOBS.labels(status=status).set(counts.get(status, 0))
    metrics.QUEUE_DEPTH.set(counts.get(jobs.QUEUED, 0))
    metrics.WEBHOOK_OLDEST_PENDING.set(max(0.0, time.time() - oldest) if oldest is not None else 0.0)

    reserved = holdings(engine).reserved_mb
    total: dict[tuple[str, str], float] = {}
    free: dict[tuple[str, str], float] = {}
    allocated: dict[tuple[str, str], float] = {}
    for worker in workers:
        for device in worker.gpus:
            labels = (worker.id, str(device.index))
            total[labels], free[labels] = device.total_mb, device.free_mb
            allocated[labels] = reserved.get((worker.id, device.index), 0)
    previous = set(_device_labels)
    _device_labels.clear()
    _device_labels.update(total)
    _set_all(metrics.GPU_MEMORY_TOTAL, total, previous)
    _set_all(metrics.GPU_MEMORY_FREE, free, previous)
    _set_all(metrics.VRAM_ALLOCATED, allocated, previous)
