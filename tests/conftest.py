"""Shared fixtures. Expensive things (the `ftserve up` process, PostgreSQL databases) start once per run."""

from __future__ import annotations

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
def ftserve_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtserveProcess]:
    """One real `ftserve up` process for the whole run (API, embedded Redis, and what later issues add)."""
    proc = FtserveProcess(tmp_path_factory.mktemp("ftserve-up"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
