"""`estimated_cost` of POST /v1/fine_tuning/estimates: trained tokens x their price, and GPU time from the measured
throughput of the class the job would run on x its hourly price (docs/usage.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from core.model_registry import register_model
from core.pricing import MEASURED_THROUGHPUT
from core.queue import Device, WorkerInfo, publish_worker
from core.redis_embedded import EmbeddedRedis
from core.settings import Settings
from scheduler.main import connect_redis
from tests.support.datasets import chat_jsonl
from tests.support.tenants import auth


@pytest.fixture
def settings(tmp_path: Path, redis_server: EmbeddedRedis, demo_model_dir: Path) -> Settings:
    redis.Redis.from_url(redis_server.url).flushall()
    settings = Settings(
        data_dir=tmp_path / "data", min_examples=10, redis_url=redis_server.url,
        price_per_million_trained_tokens=2.0, price_per_gpu_hour={"cpu": 0.36, "H200": 3.6},
    )  # fmt: skip
    register_model(settings, "demo-tiny", demo_model_dir)
    return settings


def _publish(settings: Settings, *workers: WorkerInfo) -> None:
    async def go() -> None:
        pool = await connect_redis(str(settings.redis_url))
        await pool.flushall()
        for worker in workers:
            await publish_worker(pool, worker, ttl_s=60)
        await pool.close(close_connection_pool=True)

    asyncio.run(go())


def _estimate(client: TestClient, key: str, **body: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/fine_tuning/estimates", headers=auth(key), json={"model": "demo-tiny", **body}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_the_estimate_prices_trained_tokens_and_gpu_time(
    client: TestClient, settings: Settings, org_a_key: str
) -> None:
    upload = client.post(
        "/v1/files",
        headers=auth(org_a_key),
        data={"purpose": "fine-tune"},
        files={"file": ("t.jsonl", chat_jsonl(40))},
    )
    training = upload.json()["id"]
    _publish(
        settings, WorkerInfo(id="cpu-box", gpus=[Device(index=0, name="cpu", total_mb=16384, free_mb=16384)])
    )
    est = _estimate(client, org_a_key, training_file=training)
    cost, hp = est["estimated_cost"], est["hyperparameters"]
    assert cost["currency"] == "USD" and cost["trained_tokens"] == est["trained_tokens"] > 0
    assert cost["trained_tokens_cost"] == pytest.approx(est["trained_tokens"] * 2.0 / 1e6, abs=1e-6)
    # Every token processed (the held-out examples' share taken off), x epochs, x parameters / the CPU's rate.
    processed = round(
        est["tokens"]["total_tokens"] * hp["n_examples"] / (hp["n_examples"] + hp["holdout_examples"])
    )
    seconds = processed * hp["n_epochs"] * est["parameters"] / MEASURED_THROUGHPUT["cpu"]
    assert cost["gpu_class"] == "cpu" and cost["gpu_seconds"] == pytest.approx(seconds, abs=0.06)
    assert cost["gpu_cost"] == pytest.approx(seconds * 0.36 / 3600, rel=1e-3)  # gpu_seconds is shown rounded
    assert cost["value"] == pytest.approx(cost["trained_tokens_cost"] + cost["gpu_cost"], abs=2e-6)
    assert cost["throughput"] == {"gpu_class": "cpu", "param_tokens_per_second": MEASURED_THROUGHPUT["cpu"]}

    # A GPU class with no measured throughput: the time is left out, until the operator gives one.
    _publish(
        settings,
        WorkerInfo(id="gpu-box", gpus=[Device(index=0, name="A100-80GB", total_mb=81920, free_mb=81920)]),
    )
    unmeasured = _estimate(client, org_a_key, training_file=training)["estimated_cost"]
    assert unmeasured["gpu_class"] == "A100-80GB" and unmeasured["gpu_seconds"] is None
    assert unmeasured["value"] == cost["trained_tokens_cost"]
    assert any("FTSERVE_TRAINING_THROUGHPUT" in note for note in unmeasured["notes"])
    settings.training_throughput = {"a100": 2.0e12}
    measured = _estimate(client, org_a_key, training_file=training)["estimated_cost"]
    assert measured["throughput"] == {"gpu_class": "a100", "param_tokens_per_second": 2.0e12}
    assert measured["gpu_cost"] == 0  # A100 has no price: its time is free here

    # No file: no token count, so only what can be known, with notes saying why.
    blind = _estimate(client, org_a_key, n_examples=100)["estimated_cost"]
    assert blind["trained_tokens"] is None and blind["value"] is None
    assert any("Trained tokens unknown" in note for note in blind["notes"])
    settings.price_per_million_trained_tokens, settings.price_per_gpu_hour = 0.0, {}
    free = _estimate(client, org_a_key, training_file=training)["estimated_cost"]
    assert free["value"] == 0 and any("No prices are set" in note for note in free["notes"])
