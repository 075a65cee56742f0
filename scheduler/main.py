"""`ftserve scheduler`: every `scheduler_interval_s`, validate waiting jobs and place queued ones.

One tick is `Scheduler.tick()`; tests call it directly. A failing tick (DB or Redis briefly down) is logged
and retried on the next one: the loop itself never dies of it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field

from arq.connections import ArqRedis, RedisSettings, create_pool
from sqlalchemy.engine import Engine

from core.db import make_engine, migrate
from core.queue import deserialize, live_workers, serialize
from core.settings import Settings
from scheduler.adapters import AdapterPlacer
from scheduler.dispatch import ChooseWorker, Placement, place_queued, validate_pending
from scheduler.placement import choose_worker
from scheduler.webhooks import WebhookDispatcher

log = logging.getLogger("ftserve.scheduler")


async def connect_redis(url: str) -> ArqRedis:
    return await create_pool(
        RedisSettings.from_dsn(url), job_serializer=serialize, job_deserializer=deserialize
    )


@dataclass
class TickResult:
    validated: int = 0
    placed: list[Placement] = field(default_factory=list)


class Scheduler:
    def __init__(self, engine: Engine, redis: ArqRedis, *, choose: ChooseWorker = choose_worker) -> None:
        self.engine = engine
        self.redis = redis
        self.choose = choose

    async def tick(self) -> TickResult:
        result = TickResult(validated=validate_pending(self.engine))
        workers = await live_workers(self.redis)
        result.placed = await place_queued(self.engine, self.redis, workers, choose=self.choose)
        return result

    async def run(self, stop: asyncio.Event, interval_s: float) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:
                log.exception("scheduler tick failed; retrying in %.1fs", interval_s)
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
    try:
        await Scheduler(engine, redis).run(stop, settings.scheduler_interval_s)
    finally:
        stop.set()
        await webhook_task
        await adapter_task
        await redis.close(close_connection_pool=True)
        engine.dispose()
        log.info("scheduler stopped")


def main(settings: Settings) -> None:
    asyncio.run(serve(settings))
