"""`ftserve scheduler`: every `scheduler_interval_s`, validate waiting jobs, re-queue the jobs of lost
workers (expired leases), place queued ones by VRAM fit, hand queued exports to workers, and refresh queued
jobs' start-time forecasts.

One tick is `Scheduler.tick()`; tests call it directly. A failing tick (DB or Redis briefly down) is logged
and retried on the next one: the loop itself never dies of it. With FTSERVE_HEALTH_PORT set, /healthz (the
loop ticks), /readyz (DB and Redis answer) and /metrics are served on that port (core.observability).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field

from arq.connections import ArqRedis, RedisSettings, create_pool
from sqlalchemy.engine import Engine

from core.db import make_engine, migrate
from core.observability import HealthServer, Liveness, database_check, redis_check
from core.queue import deserialize, live_workers, serialize
from core.settings import Settings
from scheduler.adapters import AdapterPlacer
from scheduler.dispatch import (
    FleetMemory,
    Placement,
    QueueClock,
    place_queued,
    update_forecasts,
    validate_pending,
)
from scheduler.exports import dispatch_exports
from scheduler.leases import reap_expired_leases
from scheduler.stats import refresh_gauges
from scheduler.webhooks import WebhookDispatcher

log = logging.getLogger("ftserve.scheduler")


async def connect_redis(url: str) -> ArqRedis:
    return await create_pool(
        RedisSettings.from_dsn(url), job_serializer=serialize, job_deserializer=deserialize
    )


FORECAST_EVERY_S = 5.0  # start-time forecasts replay the queue: cheap, but not needed every tick
GAUGES_EVERY_S = 5.0  # jobs by status, device memory, webhook backlog: counted from the DB, not every tick


@dataclass
class TickResult:
    validated: int = 0
    placed: list[Placement] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)  # jobs of lost workers (expired leases)
    exports: list[str] = field(default_factory=list)  # exports handed to workers


class Scheduler:
    def __init__(self, engine: Engine, redis: ArqRedis, settings: Settings | None = None) -> None:
        self.engine = engine
        self.redis = redis
        self.settings = settings or Settings()
        self._forecast_at = 0.0
        self._gauges_at = 0.0
        self.memory = FleetMemory(self.settings.fleet_memory_s)
        self.queue_clock = QueueClock()
        # /healthz: the loop below beats after every tick, failed ones too (a DB outage is for /readyz).
        self.liveness = Liveness(
            "scheduler loop", stale_after_s=max(60.0, 20 * self.settings.scheduler_interval_s)
        )

    async def tick(self) -> TickResult:
        settings = self.settings
        result = TickResult(validated=validate_pending(self.engine, settings))
        result.requeued = reap_expired_leases(
            self.engine, max_lost_attempts=settings.max_lost_attempts, lease_ttl_s=settings.lease_ttl_s
        )
        workers = await live_workers(self.redis)
        result.placed = await place_queued(
            self.engine, self.redis, workers, settings=settings, memory=self.memory, clock=self.queue_clock
        )
        result.exports = await dispatch_exports(self.engine, self.redis, workers, settings)
        if time.monotonic() - self._forecast_at >= FORECAST_EVERY_S:
            self._forecast_at = time.monotonic()
            update_forecasts(self.engine, workers, settings)
        if time.monotonic() - self._gauges_at >= GAUGES_EVERY_S:
            self._gauges_at = time.monotonic()
            refresh_gauges(self.engine, workers)
        return result

    async def run(self, stop: asyncio.Event, interval_s: float) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:
                log.exception("scheduler tick failed; retrying in %.1fs", interval_s)
            self.liveness.beat()
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
            except TimeoutError:
                pass


async def serve(settings: Settings) -> None:
    if not settings.redis_url:
        raise SystemExit("ftserve scheduler needs FTSERVE_REDIS_URL (`ftserve up` starts an embedded Redis)")
    url = settings.resolved_database_url
    migrate(url)
    engine = make_engine(url)
    redis = await connect_redis(settings.redis_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("scheduler started (every %gs)", settings.scheduler_interval_s)
    # Webhook delivery runs beside the tick, so a slow receiver never delays placement.
    webhook_task = asyncio.create_task(WebhookDispatcher(engine, settings).run(stop))
    # Adapter hot-loading and replica health checks likewise run on their own, faster loop (0.25 s).
    adapter_task = asyncio.create_task(AdapterPlacer(engine, settings).run(stop))
    scheduler = Scheduler(engine, redis, settings)
    health = None
    try:
        if settings.health_port > 0:
            health = HealthServer(
                host=settings.host,
                port=settings.health_port,
                liveness=scheduler.liveness,
                checks={"database": database_check(engine), "redis": redis_check(redis)},
            )
            await health.start()
        await scheduler.run(stop, settings.scheduler_interval_s)
    finally:
        stop.set()
        if health is not None:
            await health.close()
        await webhook_task
        await adapter_task
        await redis.close(close_connection_pool=True)
        engine.dispose()
        log.info("scheduler stopped")


def main(settings: Settings) -> None:
    asyncio.run(serve(settings))
