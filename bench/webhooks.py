"""Webhook outbox and delivery: what an event costs the job transaction, and how fast the dispatcher sends.

Prints one JSON line:
- `transition_ms`: mean time of a job status change (core.jobs.transition, committed) on SQLite with 0 and
  with 5 subscribed endpoints: the outbox's cost on the hot path;
- `delivery`: N events to 10 endpoints on loopback, while an 11th endpoint holds every request open for 5 s:
  events/s sent, and the latency from commit to receipt (p50/p95) at the 10 healthy endpoints.

    python bench/webhooks.py --events 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlmodel import Session, select  # noqa: E402

from api.protocol import CreateWebhookEndpointRequest  # noqa: E402
from api.services import webhooks as endpoint_service  # noqa: E402
from core import ids, jobs, webhooks  # noqa: E402
from core.db import make_engine, migrate, session_scope  # noqa: E402
from core.keys import get_or_create_org  # noqa: E402
from core.models import FineTuningJob, Organization, WebhookDelivery, WebhookEndpoint  # noqa: E402
from core.settings import Settings  # noqa: E402
from scheduler.webhooks import WebhookDispatcher  # noqa: E402
from tests.support.webhook_receiver import WebhookReceiver  # noqa: E402


def _org(engine, name: str) -> Organization:  # type: ignore[no-untyped-def]
    with Session(engine, expire_on_commit=False) as session:
        org = get_or_create_org(session, name=name)
        session.commit()
        return org


def _jobs(engine, org_id: str, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    out = []
    with session_scope(engine) as session:
        for _ in range(n):
            job = FineTuningJob(
                id=ids.job_id(), organization_id=org_id, model="m", training_file="f", status="running"
            )
            session.add(job)
            out.append(job.id)
    return out


def _transition_ms(engine, job_ids: list[str]) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    for job_id in job_ids:
        with session_scope(engine) as session:
            jobs.transition(session, job_id=job_id, from_status=[jobs.RUNNING], to_status=jobs.SUCCEEDED)
    return (time.perf_counter() - started) * 1000 / len(job_ids)


def _endpoint(settings: Settings, engine, org: Organization, url: str) -> None:  # type: ignore[no-untyped-def]
    with Session(engine, expire_on_commit=False) as session:
        endpoint_service.create_endpoint(
            session=session, settings=settings, org=org, request=CreateWebhookEndpointRequest(url=url)
        )


async def _deliver(settings: Settings, engine, org: Organization, n: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    hold = threading.Event()
    healthy = [WebhookReceiver().start() for _ in range(10)]
    stuck = WebhookReceiver(hold=hold).start()
    for receiver in [*healthy, stuck]:
        _endpoint(settings, engine, org, receiver.url)
    dispatcher = WebhookDispatcher(engine, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    job_ids = _jobs(engine, org.id, n)
    committed: dict[str, float] = {}
    started = time.time()
    for job_id in job_ids:
        with session_scope(engine) as session:
            jobs.transition(session, job_id=job_id, from_status=[jobs.RUNNING], to_status=jobs.SUCCEEDED)
        committed[job_id] = time.time()
    while sum(len(r.received) for r in healthy) < n * len(healthy):
        await asyncio.sleep(0.05)
    elapsed = time.time() - started
    latencies = [
        r.at - committed[json.loads(r.body)["data"]["id"]] for receiver in healthy for r in receiver.received
    ]
    hold.set()
    stop.set()
    await task
    for receiver in [*healthy, stuck]:
        receiver.stop()
    with Session(engine) as session:
        pending = len(
            session.exec(
                select(WebhookDelivery.id).where(
                    WebhookDelivery.status == "pending", WebhookDelivery.organization_id == org.id
                )
            ).all()
        )
    q = statistics.quantiles(latencies, n=20)
    return {
        "events": n,
        "healthy_endpoints": len(healthy),
        "deliveries": len(latencies),
        "deliveries_per_s": round(len(latencies) / elapsed, 1),
        "latency_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "latency_p95_ms": round(q[18] * 1000, 1),
        "stuck_endpoint_requests_seen": len(stuck.received),
        "left_pending_for_stuck_endpoint": pending,
    }


async def _idle_latency(settings: Settings, engine, org: Organization, n: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """One event at a time, with the default poll interval: what a user waits for on a quiet server."""
    receiver = WebhookReceiver().start()
    _endpoint(settings, engine, org, receiver.url)
    dispatcher = WebhookDispatcher(engine, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    latencies = []
    rng = random.Random(0)
    for job_id in _jobs(engine, org.id, n):
        await asyncio.sleep(rng.uniform(0.3, 1.0))  # quiet in between: the sender task has finished
        with session_scope(engine) as session:
            jobs.transition(session, job_id=job_id, from_status=[jobs.RUNNING], to_status=jobs.SUCCEEDED)
        committed = time.time()
        count = len(receiver.received)
        while len(receiver.received) == count:
            await asyncio.sleep(0.01)
        latencies.append(receiver.received[-1].at - committed)
    stop.set()
    await task
    receiver.stop()
    return {
        "events": n,
        "poll_interval_s": settings.webhook_poll_interval_s,
        "latency_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "latency_max_ms": round(max(latencies) * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--transitions", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            webhook_allow_private=True,
            webhook_poll_interval_s=0.05,
            webhook_timeout_s=5.0,
        )
        migrate(settings.resolved_database_url)
        engine = make_engine(settings.resolved_database_url)
        plain = _org(engine, "no-endpoints")
        subscribed = _org(engine, "five-endpoints")
        for i in range(5):
            _endpoint(settings, engine, subscribed, f"http://127.0.0.1:9/{i}")
        without = _transition_ms(engine, _jobs(engine, plain.id, args.transitions))
        with_five = _transition_ms(engine, _jobs(engine, subscribed.id, args.transitions))
        with session_scope(engine) as session:  # the five endpoints above do not exist: stop them
            for endpoint in session.exec(select(WebhookEndpoint.id)).all():
                webhooks.disable_endpoint(session, endpoint_id=endpoint, reason="bench")
        delivery = asyncio.run(_deliver(settings, engine, _org(engine, "delivery"), args.events))
        idle_settings = settings.model_copy(update={"webhook_poll_interval_s": 0.5})
        idle = asyncio.run(_idle_latency(idle_settings, engine, _org(engine, "idle"), 20))
        engine.dispose()
    print(
        json.dumps(
            {
                "bench": "webhooks",
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                "database": "sqlite",
                "transition_ms": {"no_endpoints": round(without, 2), "five_endpoints": round(with_five, 2)},
                "delivery_burst": delivery,
                "delivery_one_at_a_time": idle,
            }
        )
    )


if __name__ == "__main__":
    main()
