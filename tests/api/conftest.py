"""API tests run twice: on SQLite and on PostgreSQL (skipped, with the reason, where it is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import Settings


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    database_url = None
    if request.param == "postgres":
        database_url = request.getfixturevalue("postgres_url")
    return Settings(data_dir=tmp_path / "data", database_url=database_url, min_examples=10)
