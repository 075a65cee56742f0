"""The job runner refuses to publish an adapter vLLM would refuse: the job fails with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from core import jobs
from core.model_registry import register_model
from core.models import FineTunedModel
from core.queue import WorkerInfo
from core.settings import Settings
from core.storage import Storage
from gpu_worker.job_runner import run_attempt
from scheduler.dispatch import claim
from tests.scheduler.factories import chat_rows, get_job, make_file, make_job, make_org, messages

pytestmark = pytest.mark.slow


def test_an_adapter_above_max_lora_rank_fails_the_job(
    settings: Settings, engine: Engine, storage: Storage, demo_model_dir: Path
) -> None:
    register_model(settings, "demo-tiny", demo_model_dir)
    # The deployment's vLLM takes rank 8; the job was created (with rank auto = 16) before that changed.
    settings = settings.model_copy(update={"vllm_max_lora_rank": 8})
    org = make_org(engine, "org-check")
    job_id = make_job(
        engine, org, make_file(engine, storage, org, chat_rows(12)), status=jobs.QUEUED,
        hyperparameters={"n_epochs": 1, "batch_size": 4},
    )  # fmt: skip
    attempt = claim(engine, get_job(engine, job_id), WorkerInfo(id="w-test"))
    assert attempt is not None

    run_attempt(settings, job_id, attempt)

    job = get_job(engine, job_id)
    assert job.status == jobs.FAILED and job.error is not None and job.fine_tuned_model is None
    assert job.error["code"] == "adapter_not_servable"
    assert "LoRA rank 16 is greater than the servers' max_lora_rank 8" in job.error["message"]
    assert messages(engine, job_id)[-1] == job.error["message"]
    with Session(engine) as session:
        assert session.exec(select(FineTunedModel)).all() == []
