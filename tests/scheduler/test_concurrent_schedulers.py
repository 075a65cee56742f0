"""Two `ftserve scheduler` processes on one database and one Redis: every job is placed exactly once."""

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
from core.queue import WorkerInfo, publish_worker, queue_name
from core.settings import Settings
from core.storage import Storage
from tests.scheduler.factories import chat_rows, make_file, make_job, make_org, messages

REPO_ROOT = Path(__file__).resolve().parents[2]
N_JOBS = 30


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
    # Two workers with room for everything, so both schedulers find work on every tick.
    for worker_id in ("w1", "w2"):
        await publish_worker(arq_redis, WorkerInfo(id=worker_id, max_jobs=N_JOBS), ttl_s=120)

    env = {
        **os.environ,
        "FTSERVE_DATA_DIR": str(settings.data_dir),
        "FTSERVE_DATABASE_URL": url,
        "FTSERVE_REDIS_URL": str(settings.redis_url),
        "FTSERVE_SCHEDULER_INTERVAL_S": "0.02",
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
            if len(running) == N_JOBS or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        assert [proc.wait(timeout=20) for proc in procs] == [0, 0]

    assert {j.id for j in running} == set(job_ids)
    assert all(j.attempt == 1 for j in running)
    for job_id in job_ids:
        log = messages(engine, job_id)
        assert log.count("Job queued") == 1 and log.count("Fine-tuning job started") == 1, log
    queued = await arq_redis.zrange(queue_name("w1"), 0, -1) + await arq_redis.zrange(queue_name("w2"), 0, -1)
    assert sorted(queued) == sorted(f"{job_id}:1".encode() for job_id in job_ids)
    engine.dispose()
