"""Fixtures for the security battery: one app on a real SQLite DB, two orgs with real keys, and objects of
every kind owned by org A (a file, a job with events and a checkpoint, its fine-tuned model, a webhook
endpoint with a delivery attempt)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.model_registry import register_model
from core.settings import Settings


@pytest.fixture(scope="module")
def battery_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data_dir = tmp_path_factory.mktemp("battery") / "data"
    # No rate limit here: `make fuzz` sends thousands of requests with one key (test_abuse_limits tests it).
    settings = Settings(
        data_dir=data_dir, min_examples=10, webhook_allow_private=True, rate_limit_requests_per_minute=0
    )
    register_model(settings, "demo-tiny", Path(data_dir.parent) / "demo-tiny")
    return settings


@pytest.fixture(scope="module")
def battery_client(battery_settings: Settings) -> Iterator[TestClient]:
    from api.main import create_app

    with TestClient(create_app(battery_settings)) as client:
        yield client
