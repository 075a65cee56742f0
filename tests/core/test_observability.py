"""The health server of the scheduler and worker, over real sockets: liveness from the loop's beat,
readiness from real DB and Redis checks (a stopped redis-server makes it 503), Prometheus text, and a
prompt close even with a client that never sends its request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from core.db import make_engine, migrate
from core.observability import HealthServer, Liveness, database_check, redis_check
from core.redis_embedded import EmbeddedRedis
from tests.support.prometheus import names


@pytest_asyncio.fixture(loop_scope="function")
async def redis_server(tmp_path: Path) -> AsyncIterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path / "redis", appendonly=False) as server:
        yield server


async def test_probes_and_metrics_answer_and_readiness_fails_with_redis_gone(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    engine = make_engine(url)
    redis = Redis.from_url(redis_server.url, socket_connect_timeout=1)
    liveness = Liveness("test loop", stale_after_s=60)
    checks = {"database": database_check(engine), "redis": redis_check(redis)}
    try:
        async with HealthServer(host="127.0.0.1", port=0, liveness=liveness, checks=checks) as server:
            base = f"http://127.0.0.1:{server.port}"
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                healthz = await client.get("/healthz")
                assert (healthz.status_code, healthz.json()) == (200, {"status": "ok"})
                readyz = await client.get("/readyz")
                assert (readyz.status_code, readyz.json()) == (200, {"status": "ready"})
                scrape = await client.get("/metrics")
                assert scrape.headers["content-type"].startswith("text/plain")
                assert {"ftserve_queue_depth", "ftserve_trained_tokens", "process_cpu_seconds"} <= names(
                    scrape.text
                )

                redis_server.stop()
                readyz = await client.get("/readyz")
                assert readyz.status_code == 503
                assert readyz.json() == {"status": "not ready", "failed": ["redis"]}
                assert (await client.get("/healthz")).status_code == 200  # alive: a restart won't bring Redis
    finally:
        await redis.aclose()
        engine.dispose()


async def test_a_stalled_loop_fails_liveness_and_a_hung_check_fails_readiness() -> None:
    liveness = Liveness("scheduler loop", stale_after_s=0.2)

    async def hangs() -> None:
        await asyncio.sleep(30)

    async def answers() -> None:
        return None

    checks = {"database": answers, "redis": hangs}
    server = HealthServer(host="127.0.0.1", port=0, liveness=liveness, checks=checks, check_timeout_s=0.3)
    async with server, httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
        await asyncio.sleep(0.3)
        stalled = await client.get("/healthz")
        assert stalled.status_code == 503
        assert stalled.json()["status"] == "stalled" and "scheduler loop" in stalled.json()["reason"]
        liveness.beat()
        assert (await client.get("/healthz")).status_code == 200

        started = time.monotonic()
        readyz = await client.get("/readyz")
        assert readyz.json() == {"status": "not ready", "failed": ["redis"]}
        assert time.monotonic() - started < 5


async def test_http_edges_and_a_prompt_close_with_an_idle_client() -> None:
    server = HealthServer(host="127.0.0.1", port=0, liveness=Liveness("loop", stale_after_s=60), checks={})
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
            assert (await client.get("/readyz?verbose=1")).json() == {"status": "ready"}  # no checks: ready
            assert (await client.get("/nope")).status_code == 404
            assert (await client.post("/healthz")).status_code == 405
            head = await client.head("/metrics")
            assert head.status_code == 200 and head.content == b""
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"garbage\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
        writer.close()

        # A client that connects and says nothing must not hold up shutdown.
        _idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", server.port)
        await asyncio.sleep(0.1)
    finally:
        started = time.monotonic()
        await server.close()
        assert time.monotonic() - started < 3
    idle_writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)
