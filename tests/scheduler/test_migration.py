"""Migration 0003 adds exactly the scheduling columns the job model declares, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import core.models  # noqa: F401  (registers the tables)
from core.db import make_engine, migrate

COLUMNS = {
    "priority", "estimated_vram_mb", "vram_estimate", "gpu_index", "gpu_name", "reserved_mb",
    "lease_expires_at", "lost_count", "wait_reason", "queue_position", "estimated_start_at",
}  # fmt: skip


def _job_diffs(url: str) -> list[object]:
    migrate(url)
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            diffs = compare_metadata(context, SQLModel.metadata)
            columns = {c["name"] for c in context.dialect.get_columns(connection, "fine_tuning_jobs")}
    finally:
        engine.dispose()
    assert COLUMNS <= columns

    def about_jobs(diff: object) -> bool:
        item = diff[0] if isinstance(diff, list) else diff
        return isinstance(item, tuple) and any(
            part == "fine_tuning_jobs"
            or getattr(getattr(part, "table", None), "name", None) == "fine_tuning_jobs"
            for part in item[1:]
        )

    return [d for d in diffs if about_jobs(d)]


def test_sqlite_schema_matches_the_job_model(tmp_path: Path) -> None:
    assert _job_diffs(f"sqlite:///{tmp_path / 'm.db'}") == []


@pytest.mark.postgres
def test_postgres_schema_matches_the_job_model(postgres_url: str) -> None:
    assert _job_diffs(postgres_url) == []
