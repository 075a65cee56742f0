"""Scheduler tests: a real redis-server (EmbeddedRedis) per session, emptied before each test; SQLite per
test, and PostgreSQL where a test asks for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from arq.connections import ArqRedis

from core.model_registry import register_model
from core.settings import Settings
from scheduler.main import connect_redis
from tests.support.model_configs import DEMO_TINY, write_config


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", redis_url=redis_url, scheduler_interval_s=0.05)
    # demo-tiny's shape, for memory estimates; these tests never load weights.
    config = write_config(tmp_path / "demo-tiny-config", DEMO_TINY)
    register_model(settings, "demo-tiny", tmp_path / "demo-tiny", config=config)
    return settings


@pytest_asyncio.fixture(loop_scope="function")
async def arq_redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    pool = await connect_redis(redis_url)
    yield pool
    await pool.close(close_connection_pool=True)
