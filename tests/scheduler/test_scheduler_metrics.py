"""`ftserve scheduler` as a real process with FTSERVE_HEALTH_PORT: its probes answer, its /metrics reflect
the DB (jobs by status, queue depth), the registry and the placements (device memory), and they move when it
places a job (placement latency) and delivers a webhook (delivery lag, oldest pending delivery)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from arq.connections import ArqRedis
from prometheus_client import REGISTRY
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col

from core import jobs, webhooks
from core.db import session_scope
from core.models import FineTuningJob, now_s
from core.queue import Device, WorkerInfo, publish_worker
from core.redis_embedded import free_port
from core.settings import Settings
from core.storage import Storage
from scheduler.main import Scheduler
from tests.scheduler.factories import chat_rows, get_job, make_file, make_job
from tests.support.prometheus import value
from tests.support.webhook_endpoints import add_endpoint, make_org_with_key
from tests.support.webhook_receiver import WebhookReceiver

REPO_ROOT = Path(__file__).resolve().parents[2]
GPU_24 = Device(index=0, name="A10-24GB", total_mb=24576, free_mb=20000)


def _start_scheduler(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "FTSERVE_DATA_DIR": str(settings.data_dir),
        "FTSERVE_REDIS_URL": str(settings.redis_url),
        "FTSERVE_HEALTH_PORT": str(port),
        "FTSERVE_SCHEDULER_INTERVAL_S": "0.1",
        "FTSERVE_WEBHOOK_ALLOW_PRIVATE": "1",
        "FTSERVE_WEBHOOK_POLL_INTERVAL_S": "0.1",
        "FTSERVE_WEBHOOK_RETRY_BASE_S": "60",  # the failing endpoint's delivery stays pending
    }
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cli.main", "scheduler"], cwd=REPO_ROOT, env=env, stdout=out, stderr=out
        )


async def test_scheduler_process_serves_probes_and_metrics_that_follow_the_db(
    settings: Settings, engine: Engine, storage: Storage, arq_redis: ArqRedis, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"webhook_allow_private": True})
    org, _key = make_org_with_key(settings, engine)
    training = make_file(engine, storage, org.id, chat_rows(12))
    waited = make_job(engine, org.id, training, created_at=now_s() - 30)  # submitted 30 s ago: placed first
    make_job(engine, org.id, training)  # the worker takes one job at a time: this one stays queued
    await publish_worker(arq_redis, WorkerInfo(id="w-metrics", gpus=[GPU_24], max_jobs=1), ttl_s=120)
    port = free_port()
    log = tmp_path / "scheduler.log"
    with WebhookReceiver() as receiver, WebhookReceiver([500]) as failing:
        add_endpoint(settings, engine, org, receiver.url, [webhooks.JOB_RUNNING])
        add_endpoint(settings, engine, org, failing.url, [webhooks.JOB_RUNNING])
        scheduler = _start_scheduler(settings, port, log)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                deadline = time.monotonic() + 60
                while True:
                    assert scheduler.poll() is None, log.read_text()
                    try:
                        if (await client.get("/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, "no /healthz from the scheduler"
                    await asyncio.sleep(0.2)
                readyz = await client.get("/readyz")
                assert (readyz.status_code, readyz.json()) == (200, {"status": "ready"})

                def settled(text: str) -> bool:
                    return (value(text, "ftserve_webhook_oldest_pending_seconds") or 0) > 0 and (
                        value(text, "ftserve_webhook_delivery_lag_seconds_count") or 0
                    ) >= 1

                deadline = time.monotonic() + 30
                while not settled(text := (await client.get("/metrics")).text):
                    assert time.monotonic() < deadline, f"metrics never settled:\n{text}"
                    await asyncio.sleep(0.3)
        finally:
            scheduler.send_signal(signal.SIGTERM)
            returncode = await asyncio.to_thread(scheduler.wait, 30)
    assert returncode == 0, log.read_text()

    job = get_job(engine, waited)
    assert (job.status, job.worker_id) == (jobs.RUNNING, "w-metrics")
    assert value(text, "ftserve_placement_latency_seconds_count") == 1
    assert 30 <= (value(text, "ftserve_placement_latency_seconds_sum") or 0) < 60
    assert value(text, "ftserve_queue_depth") == 1
    assert value(text, "ftserve_jobs", status="queued") == 1
    assert value(text, "ftserve_jobs", status="running") == 1
    assert value(text, "ftserve_jobs", status="succeeded") == 0
    device = {"worker": "w-metrics", "gpu": "0"}
    assert value(text, "ftserve_gpu_memory_total_mib", **device) == 24576
    assert value(text, "ftserve_gpu_memory_free_mib", **device) == 20000
    assert value(text, "ftserve_vram_allocated_mib", **device) == job.reserved_mb and job.reserved_mb
    assert len(receiver.received) == 1 and len(failing.received) == 1


async def test_a_requeued_job_waits_from_its_requeue_not_from_its_creation(
    settings: Settings, engine: Engine, storage: Storage, arq_redis: ArqRedis
) -> None:
    """A job created an hour ago and lost by its first worker: its second placement's latency is the time
    it waited in the queue again, not the hour."""
    org = "org-requeued"
    job_id = make_job(engine, org, make_file(engine, storage, org, chat_rows(12)), created_at=now_s() - 3600)
    scheduler = Scheduler(engine, arq_redis, settings)
    await scheduler.tick()  # validated and queued; no worker yet
    with session_scope(engine) as session:  # what the lease reaper leaves of a lost attempt 1
        session.execute(update(FineTuningJob).where(col(FineTuningJob.id) == job_id).values(attempt=1))

    def observed() -> tuple[float, float]:
        count = REGISTRY.get_sample_value("ftserve_placement_latency_seconds_count") or 0.0
        return count, REGISTRY.get_sample_value("ftserve_placement_latency_seconds_sum") or 0.0

    await scheduler.tick()  # sees attempt 1 queued: its wait starts now
    await asyncio.sleep(0.5)
    count_before, sum_before = observed()
    await publish_worker(arq_redis, WorkerInfo(id="w-requeue", gpus=[GPU_24]), ttl_s=60)
    placed = (await scheduler.tick()).placed
    assert [(p.job_id, p.attempt) for p in placed] == [(job_id, 2)]
    count_after, sum_after = observed()
    assert count_after == count_before + 1
    assert 0.5 <= sum_after - sum_before < 60
