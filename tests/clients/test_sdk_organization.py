"""The SDK's `client.organization` (usage, API keys, audit log) and job caps, against the API over real HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import jobs
from core.db import make_engine, session_scope
from core.model_registry import register_model
from core.settings import Settings
from core.usage import record_training_usage
from ftserve_client import AsyncClient, BadRequestError, Client, PermissionDeniedError
from ftserve_client.types import FineTuningUsageResult
from tests.support.datasets import chat_jsonl
from tests.support.http_server import api_server
from tests.support.keys import make_key


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", min_examples=10, price_per_million_trained_tokens=1.0)
    register_model(settings, "demo-tiny", tmp_path / "demo-tiny")
    return settings


@pytest.fixture
def base_url(settings: Settings) -> Iterator[str]:
    with api_server(settings) as url:
        yield url


def test_usage_keys_audit_logs_and_caps_through_the_sdk(settings: Settings, base_url: str) -> None:
    admin = Client(api_key=make_key(settings, "sdk-org"), base_url=base_url, max_retries=0)
    created = admin.organization.api_keys.create(name="bot", scopes=["inference"], inference_token_quota=50)
    assert created.value and created.value.startswith("ftsk-") and created.scopes == ["inference"]
    listed = list(admin.organization.api_keys.list())
    assert [k.name for k in listed] == [None, "bot"] and all(k.value is None for k in listed)
    bot = Client(api_key=created.value, base_url=base_url, max_retries=0)
    with pytest.raises(PermissionDeniedError):
        bot.organization.usage(start_time=0)

    upload = admin.files.create(file=("t.jsonl", chat_jsonl(12)), purpose="fine-tune")
    job = admin.fine_tuning.jobs.create(model="demo-tiny", training_file=upload.id, max_trained_tokens=100)
    assert job.max_trained_tokens == 100 and job.max_cost is None
    engine = make_engine(settings.resolved_database_url)
    with session_scope(engine) as session:  # as the worker leaves a job paused at its cap
        assert jobs.transition(session, job_id=job.id, from_status=[jobs.VALIDATING], to_status=jobs.PAUSED)
        record_training_usage(
            session, settings, organization_id=job.organization_id, job_id=job.id, attempt=1, model="demo-tiny",
            gpu_class="cpu", trained_tokens=120, gpu_seconds=3.0,
        )  # fmt: skip
    engine.dispose()
    with pytest.raises(BadRequestError) as refused:
        admin.fine_tuning.jobs.resume(job.id)
    assert refused.value.param == "max_trained_tokens" and refused.value.code == "cap_reached"
    resumed = admin.fine_tuning.jobs.resume(job.id, max_trained_tokens=500, max_cost=None)
    assert (resumed.status, resumed.max_trained_tokens, resumed.max_cost) == ("queued", 500, None)

    today = int(time.time()) // 86400 * 86400
    page = admin.organization.usage(start_time=today, group_by=["job_id"], kind="fine_tuning")
    [result] = page.results
    assert isinstance(result, FineTuningUsageResult)
    assert (result.job_id, result.trained_tokens, result.gpu_class, result.num_attempts) == (
        job.id,
        120,
        "cpu",
        1,
    )
    assert result.cost.value == pytest.approx(120 / 1e6) and result.cost.currency == "USD"
    assert admin.organization.usage(start_time=today, kind="completions").results == []

    assert admin.organization.api_keys.delete(created.id).deleted
    types = [entry.type for entry in admin.organization.audit_logs.list()]
    assert types == ["api_key.deleted", "fine_tuning.job.resumed", "fine_tuning.job.created", "file.created",
                     "api_key.created"]  # fmt: skip
    [deleted] = admin.organization.audit_logs.list(event_types=["api_key.deleted"]).data
    assert deleted.details == {"id": created.id}

    async def async_side() -> None:
        async with AsyncClient(api_key=admin.api_key, base_url=base_url, max_retries=0) as client:
            keys = [k.id async for k in client.organization.api_keys.list()]
            assert created.id not in keys and len(keys) == 1
            page = await client.organization.usage(start_time=today)
            assert sum(r.trained_tokens for r in page.results if isinstance(r, FineTuningUsageResult)) == 120

    asyncio.run(async_side())
