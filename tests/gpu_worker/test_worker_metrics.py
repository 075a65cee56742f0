"""`ftserve worker` with FTSERVE_HEALTH_PORT, as a real process: /healthz and /readyz answer (503 naming Redis
while its Redis is down, 200 again once it is back), and /metrics counts the tokens its runner trained (the
job's own trained_tokens, reported by the child over its progress pipe), its running jobs and throughput."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core import jobs
from core.db import make_engine, migrate
from core.model_registry import register_model
from core.redis_embedded import EmbeddedRedis, free_port
from core.settings import Settings
from core.storage import make_storage_from_settings
from scheduler.main import Scheduler, connect_redis
from tests.scheduler.factories import chat_rows, get_job, make_file, make_job, make_org
from tests.support.prometheus import value

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = "w-metrics"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """Its own redis-server: the test stops and restarts it."""
    with EmbeddedRedis(tmp_path / "redis", appendonly=False) as server:
        yield server


@pytest.mark.slow
async def test_worker_probes_and_its_token_metrics_match_the_job(
    tmp_path: Path, redis_server: EmbeddedRedis, demo_model_dir: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        redis_url=redis_server.url,
        model_registry=tmp_path / "models.json",
        heartbeat_interval_s=0.3,
        heartbeat_ttl_s=2.0,
    )
    register_model(settings, "demo-tiny", demo_model_dir)
    migrate(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    org = make_org(engine, "org-metrics")
    storage = make_storage_from_settings(settings)
    job_id = make_job(
        engine, org, make_file(engine, storage, org, chat_rows(12)),
        hyperparameters={"n_epochs": 2, "batch_size": 1, "checkpoint_every_steps": 1000},
    )  # fmt: skip
    port = free_port()
    env = {
        **os.environ,
        "FTSERVE_DATA_DIR": str(settings.data_dir),
        "FTSERVE_REDIS_URL": redis_server.url,
        "FTSERVE_MODEL_REGISTRY": str(settings.model_registry),
        "FTSERVE_HEARTBEAT_INTERVAL_S": "0.3",
        "FTSERVE_HEARTBEAT_TTL_S": "2",
        "FTSERVE_HEALTH_PORT": str(port),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "worker", "--id", WORKER], cwd=REPO_ROOT, env=env
    )
    redis = await connect_redis(redis_server.url)
    stop = asyncio.Event()
    scheduler = asyncio.create_task(Scheduler(engine, redis, settings).run(stop, 0.1))
    labels = {"worker": WORKER}
    seen_running, seen_rate = 0.0, 0.0
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 180  # a busy 2-core CI box: the runner alone imports torch
            while True:  # until the worker is up and trained the job, scraping all along
                assert worker.poll() is None and time.monotonic() < deadline, "worker died or job too slow"
                try:
                    text = (await client.get("/metrics")).text
                except httpx.TransportError:
                    await asyncio.sleep(0.2)
                    continue
                seen_running = max(seen_running, value(text, "ftserve_worker_running_jobs", **labels) or 0)
                seen_rate = max(seen_rate, value(text, "ftserve_training_tokens_per_second", **labels) or 0)
                job = get_job(engine, job_id)
                if job.status in jobs.TERMINAL and value(text, "ftserve_worker_running_jobs", **labels) == 0:
                    break  # trained, and its runner has exited
                await asyncio.sleep(0.2)
            assert job.status == jobs.SUCCEEDED, job.error
            assert (
                job.trained_tokens
                and value(text, "ftserve_trained_tokens_total", **labels) == job.trained_tokens
            )
            assert seen_running == 1 and seen_rate > 0
            assert value(text, "ftserve_training_tokens_per_second", **labels) == 0  # idle

            assert (await client.get("/healthz")).json() == {"status": "ok"}
            assert (await client.get("/readyz")).json() == {"status": "ready"}
            redis_server.stop()
            readyz = await client.get("/readyz")
            assert (readyz.status_code, readyz.json()) == (503, {"status": "not ready", "failed": ["redis"]})
            await asyncio.sleep(1.0)  # heartbeats fail meanwhile; the loop, and so liveness, carries on
            assert (await client.get("/healthz")).status_code == 200
            redis_server.start()
            deadline = time.monotonic() + 15
            while (await client.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, "readiness did not come back with Redis"
                await asyncio.sleep(0.2)
    finally:
        stop.set()
        await scheduler
        await redis.close(close_connection_pool=True)
        worker.send_signal(signal.SIGTERM)
        try:
            returncode = await asyncio.to_thread(worker.wait, 30)
        except subprocess.TimeoutExpired:
            worker.kill()
            raise
        engine.dispose()
    assert returncode == 0
