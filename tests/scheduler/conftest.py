"""Scheduler tests: a real redis-server (EmbeddedRedis) per session, emptied before each test; SQLite per
test, and PostgreSQL where a test asks for it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis
from arq.connections import ArqRedis
from sqlalchemy.engine import Engine

from core.db import make_engine, migrate
from core.model_registry import register_model
from core.redis_embedded import EmbeddedRedis
from core.settings import Settings
from core.storage import LocalStorage, Storage
from scheduler.main import connect_redis
from tests.support.model_configs import DEMO_TINY, write_config


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", redis_url=redis_url, scheduler_interval_s=0.05)
    # demo-tiny's shape, for memory estimates; these tests never load weights.
    config = write_config(tmp_path / "demo-tiny-config", DEMO_TINY)
    register_model(settings, "demo-tiny", tmp_path / "demo-tiny", config=config)
    return settings


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    migrate(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def storage(settings: Settings) -> Storage:
    return LocalStorage(settings.data_dir / "storage")


@pytest_asyncio.fixture(loop_scope="function")
async def arq_redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    pool = await connect_redis(redis_url)
    yield pool
    await pool.close(close_connection_pool=True)
