"""Two `ftserve scheduler` processes on one database and one Redis: every job is placed exactly once, and
no GPU is ever given more than it holds, though both schedulers plan onto the same GPUs at once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from arq.connections import ArqRedis
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from core import jobs
from core.db import make_engine, migrate
from core.models import FineTuningJob
from core.queue import Device, WorkerInfo, publish_worker, queue_name
from core.settings import Settings
from core.storage import Storage
from core.vram import estimate_request
from tests.scheduler.factories import chat_rows, make_file, make_job, make_org, messages

REPO_ROOT = Path(__file__).resolve().parents[2]
N_JOBS = 30
PER_GPU = 12  # each worker's GPU holds this many of the jobs: 24 run, 6 wait


@pytest.fixture(params=["sqlite", "postgres"])
def db_engine(request: pytest.FixtureRequest, settings: Settings) -> tuple[Engine, str]:
    url = (
        request.getfixturevalue("postgres_url")
        if request.param == "postgres"
        else settings.resolved_database_url
    )
    migrate(url)
    return make_engine(url), url


@pytest.mark.slow
async def test_two_schedulers_place_each_job_exactly_once(
    db_engine: tuple[Engine, str], settings: Settings, storage: Storage, arq_redis: ArqRedis
) -> None:
    engine, url = db_engine
    org = make_org(engine)
    training = make_file(engine, storage, org, chat_rows(12))
    need = estimate_request(
        settings, model="demo-tiny", method_type="supervised", hyperparameters={}, n_examples=12
    ).gpu.reservation_mb
    capacity = PER_GPU * need + need // 2
    # Two workers with slots for everything: only GPU memory limits how many jobs run.
    for worker_id in ("w1", "w2"):
        gpu = Device(index=0, name="GPU", total_mb=capacity, free_mb=capacity)
        await publish_worker(arq_redis, WorkerInfo(id=worker_id, max_jobs=N_JOBS, gpus=[gpu]), ttl_s=120)

    env = {
        **os.environ,
        "FTSERVE_DATA_DIR": str(settings.data_dir),
        "FTSERVE_DATABASE_URL": url,
        "FTSERVE_REDIS_URL": str(settings.redis_url),
        "FTSERVE_SCHEDULER_INTERVAL_S": "0.02",
        "FTSERVE_ORG_MAX_RUNNING_JOBS": "0",
    }
    procs = [
        subprocess.Popen([sys.executable, "-m", "cli.main", "scheduler"], cwd=REPO_ROOT, env=env)
        for _ in range(2)
    ]
    try:
        # Make both schedulers busy first, so that they are already polling when the jobs arrive together.
        warmup = make_job(engine, org, training)
        while messages(engine, warmup)[-1] != "Fine-tuning job started":
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        job_ids = [warmup] + [make_job(engine, org, training) for _ in range(N_JOBS - 1)]
        deadline = time.monotonic() + 60
        while True:
            with Session(engine) as session:
                running = session.exec(
                    select(FineTuningJob).where(FineTuningJob.status == jobs.RUNNING)
                ).all()
            if len(running) == 2 * PER_GPU or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # both schedulers keep ticking: nothing more may fit
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        assert [proc.wait(timeout=20) for proc in procs] == [0, 0]

    with Session(engine) as session:
        rows = session.exec(select(FineTuningJob)).all()
    running = [j for j in rows if j.status == jobs.RUNNING]
    waiting = [j for j in rows if j.status == jobs.QUEUED]
    assert len(running) == 2 * PER_GPU and len(waiting) == N_JOBS - 2 * PER_GPU
    for worker_id in ("w1", "w2"):
        on_gpu = [j for j in running if j.worker_id == worker_id]
        assert len(on_gpu) == PER_GPU and sum(j.reserved_mb or 0 for j in on_gpu) <= capacity
    assert all(j.attempt == 1 for j in running) and all(j.attempt == 0 for j in waiting)
    for job_id in job_ids:
        log = messages(engine, job_id)
        assert log.count("Job queued") == 1 and log.count("Fine-tuning job started") <= 1, log
    for job in waiting:  # told why, once
        reasons = [m for m in messages(engine, job.id) if m.startswith("Needs ~")]
        assert reasons and job.queue_position is not None, messages(engine, job.id)
    queued = await arq_redis.zrange(queue_name("w1"), 0, -1) + await arq_redis.zrange(queue_name("w2"), 0, -1)
    assert sorted(queued) == sorted(f"{job.id}:1".encode() for job in running)
    engine.dispose()
