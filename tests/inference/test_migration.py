"""Migration 0004 creates exactly the inference tables the models declare, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import core.models  # noqa: F401  (registers the tables)
from core.db import make_engine, migrate

TABLES = {"inference_replicas", "served_adapters", "adapter_placements"}


def _diffs(url: str) -> list[object]:
    migrate(url)
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            diffs = compare_metadata(context, SQLModel.metadata)
    finally:
        engine.dispose()

    def table_of(diff: object) -> str | None:
        item = diff[0] if isinstance(diff, list) else diff
        for part in item[1:] if isinstance(item, tuple) else ():
            name = getattr(part, "name", None)
            table = getattr(part, "table", None)
            if table is not None and getattr(table, "name", None) in TABLES:
                return str(table.name)
            if name in TABLES:
                return str(name)
            if isinstance(part, str) and part in TABLES:
                return part
        return None

    return [d for d in diffs if table_of(d) is not None]


def test_sqlite_schema_matches_models(tmp_path: Path) -> None:
    assert _diffs(f"sqlite:///{tmp_path / 'm.db'}") == []


@pytest.mark.postgres
def test_postgres_schema_matches_models(postgres_url: str) -> None:
    assert _diffs(postgres_url) == []
