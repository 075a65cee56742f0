"""Fixtures for inference tests: a DB and storage of their own, and finished models made from synthetic
adapters (no training)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from core import ids, jobs
from core.db import session_scope
from core.keys import create_key
from core.model_registry import register_model
from core.models import FineTunedModel, FineTuningJob
from core.settings import Settings
from core.storage import Storage


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", model_registry=tmp_path / "models.json")


@pytest.fixture
def make_key_for(engine: Engine) -> Callable[[str], tuple[str, str]]:
    """org name → (API key, org id)."""

    def make(org: str) -> tuple[str, str]:
        with session_scope(engine) as session:
            row, key = create_key(session, org_name=org)
            return key, row.organization_id

    return make


@pytest.fixture
def make_model(engine: Engine, storage: Storage, settings: Settings) -> Callable[..., tuple[str, str]]:
    """A succeeded job and its fine-tuned model whose adapter is `adapter_dir`: returns (model id, job id)."""

    def make(
        org_id: str, adapter_dir: Path, *, base_model: str = "demo-tiny", base_dir: Path | None = None
    ) -> tuple[str, str]:
        if base_dir is not None:
            register_model(settings, base_model, base_dir)
        job_id = ids.job_id()
        model_id = jobs.fine_tuned_model_name(base_model=base_model, org_name="o", suffix="t", job_id=job_id)
        prefix = f"jobs/{job_id}/adapter"
        storage.upload_dir(adapter_dir, prefix)
        with session_scope(engine) as session:
            session.add(
                FineTuningJob(
                    id=job_id, organization_id=org_id, model=base_model, training_file="file-x",
                    status=jobs.SUCCEEDED, fine_tuned_model=model_id,
                )
            )  # fmt: skip
            session.add(
                FineTunedModel(
                    id=model_id, organization_id=org_id, job_id=job_id, base_model=base_model,
                    adapter_prefix=prefix + "/",
                )
            )  # fmt: skip
        return model_id, job_id

    return make
