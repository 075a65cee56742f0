"""Continue training through the jobs API (no training here): an ft: model or checkpoint of the organization as
`model`, resolved to its base model and LoRA shape; the refusals; and `n_checkpoints`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from core import jobs
from core.continuation import CONTINUED_FROM
from core.db import session_scope
from core.model_registry import register_model
from core.models import FineTunedModel, FineTuningJob, JobCheckpoint, Organization, now_s
from core.settings import Settings
from tests.scheduler.factories import make_job
from tests.support.datasets import chat_jsonl, preference_jsonl
from tests.support.model_configs import DEMO_TINY, write_config

LORA = {"lora_rank": 8, "lora_alpha": 16, "target_modules": "all-linear"}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _upload(client: TestClient, key: str, data: bytes) -> str:
    resp = client.post(
        "/v1/files", headers=_auth(key), data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", data)}
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def _org_id(engine: Engine, name: str) -> str:
    with Session(engine) as session:
        return session.exec(select(Organization).where(Organization.name == name)).one().id


def _trained_job(
    engine: Engine,
    org_id: str,
    training_file: str,
    *,
    status: str = jobs.SUCCEEDED,
    lora: dict[str, Any] = LORA,
) -> tuple[str, str]:
    """A job as the worker leaves it (its model and a checkpoint at step 4). Returns (model, checkpoint model)."""
    job_id = make_job(engine, org_id, training_file, status=status, suffix="sft")
    model = jobs.fine_tuned_model_name(base_model="demo-tiny", org_name="org-a", suffix="sft", job_id=job_id)
    checkpoint = jobs.checkpoint_model_name(model, 4)
    with session_scope(engine) as session:
        job = session.exec(select(FineTuningJob).where(FineTuningJob.id == job_id)).one()
        job.resolved_hyperparameters = {"method": "supervised", **lora}
        if status == jobs.SUCCEEDED:
            job.fine_tuned_model = model
            session.add(
                FineTunedModel(
                    id=model, organization_id=org_id, job_id=job_id, base_model="demo-tiny",
                    adapter_prefix=f"jobs/{job_id}/attempt-1/adapter/",
                )
            )  # fmt: skip
        session.add(job)
        session.add(
            JobCheckpoint(
                id=f"ftckpt-{job_id}", job_id=job_id, organization_id=org_id, step_number=4,
                fine_tuned_model_checkpoint=checkpoint, storage_prefix=f"jobs/{job_id}/checkpoints/step-4/attempt-1",
            )
        )  # fmt: skip
    return model, checkpoint


@pytest.fixture
def setup(
    client: TestClient, org_a_key: str, settings: Settings, engine: Engine, tmp_path: Path
) -> dict[str, Any]:
    # The API needs the registry entry and, for estimates, a config.json; no weights.
    register_model(
        settings, "demo-tiny", tmp_path / "demo-tiny", config=write_config(tmp_path / "cfg", DEMO_TINY)
    )
    chat = _upload(client, org_a_key, chat_jsonl(12))
    preference = _upload(client, org_a_key, preference_jsonl(12))
    model, checkpoint = _trained_job(engine, _org_id(engine, "org-a"), chat)
    return {"chat": chat, "preference": preference, "model": model, "checkpoint": checkpoint}


def _create(client: TestClient, key: str, **body: Any) -> Any:
    return client.post("/v1/fine_tuning/jobs", headers=_auth(key), json=body)


def _dpo(hyperparameters: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "dpo", "dpo": {"hyperparameters": hyperparameters or {}}}


def _error(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    return dict(resp.json()["error"])


def test_a_job_continues_a_fine_tuned_model_or_checkpoint_on_its_base_with_its_lora_shape(
    client: TestClient, org_a_key: str, engine: Engine, setup: dict[str, Any]
) -> None:
    resp = _create(client, org_a_key, model=setup["model"], training_file=setup["preference"], method=_dpo())
    assert resp.status_code == 200, resp.text
    job = resp.json()
    assert (job["model"], job["base_model"]) == (
        setup["model"],
        "demo-tiny",
    )  # what was sent, as OpenAI shows
    shown = job["method"]["dpo"]["hyperparameters"]
    assert {k: shown[k] for k in LORA} == LORA and CONTINUED_FROM not in shown
    assert shown["n_checkpoints"] == "auto"

    resp = _create(client, org_a_key, model=setup["checkpoint"], training_file=setup["chat"])
    assert resp.status_code == 200, resp.text
    with Session(engine) as session:
        row = session.exec(select(FineTuningJob).where(FineTuningJob.id == resp.json()["id"])).one()
    record = row.hyperparameters[CONTINUED_FROM]
    assert record["adapter_prefix"].endswith("/checkpoints/step-4/attempt-1")
    assert (record["checkpoint_step"], record["base_model"], record["served_lora_rank"]) == (
        4,
        "demo-tiny",
        8,
    )

    # the estimate of such a job sizes the base model with the parent's LoRA shape
    resp = client.post(
        "/v1/fine_tuning/estimates", headers=_auth(org_a_key),
        json={"model": setup["model"], "n_examples": 12, "method": _dpo()},
    )  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert (resp.json()["hyperparameters"]["lora_rank"], resp.json()["hyperparameters"]["lora_alpha"]) == (
        8,
        16,
    )

    # n_checkpoints (extension): 1..20, shown on the job
    for value, status in ((0, 400), (21, 400), ("two", 400), (2, 200), (20, 200)):
        method = {"type": "supervised", "supervised": {"hyperparameters": {"n_checkpoints": value}}}
        resp = _create(client, org_a_key, model="demo-tiny", training_file=setup["chat"], method=method)
        if status == 400:
            assert _error(resp, 400)["param"] == "method.supervised.hyperparameters.n_checkpoints", value
        else:
            assert resp.status_code == 200, resp.text
            assert resp.json()["hyperparameters"]["n_checkpoints"] == value


def test_unknown_foreign_unfinished_and_deleted_models_and_conflicting_lora_shapes_are_refused(
    client: TestClient,
    org_a_key: str,
    org_b_key: str,
    engine: Engine,
    settings: Settings,
    setup: dict[str, Any],
) -> None:
    other = _create(
        client, org_b_key, model=setup["model"], training_file=_upload(client, org_b_key, chat_jsonl(12))
    )
    error = _error(other, 404)  # another organization's model is indistinguishable from a missing one
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    for name in (setup["model"] + "x", "ft:demo-tiny:org-a::ftjob-nope", setup["model"] + ":ckpt-step-99"):
        error = _error(_create(client, org_a_key, model=name, training_file=setup["chat"]), 404)
        assert (error["code"], error["param"]) == ("model_not_found", "model"), name

    _, running_checkpoint = _trained_job(engine, _org_id(engine, "org-a"), setup["chat"], status=jobs.RUNNING)
    error = _error(_create(client, org_a_key, model=running_checkpoint, training_file=setup["chat"]), 400)
    assert (error["code"], error["param"]) == ("model_not_ready", "model") and "running" in error["message"]

    for hyperparameters, field in (
        ({"lora_rank": 4}, "lora_rank"),
        ({"lora_alpha": 8}, "lora_alpha"),
        ({"target_modules": ["q_proj"]}, "target_modules"),
        ({"quantization": "4bit"}, "quantization"),
    ):
        resp = _create(
            client,
            org_a_key,
            model=setup["model"],
            training_file=setup["preference"],
            method=_dpo(hyperparameters),
        )
        error = _error(resp, 400)
        assert (error["code"], error["param"]) == (
            "invalid_hyperparameter",
            f"method.dpo.hyperparameters.{field}",
        )
    # the same values as the parent's are no conflict
    resp = _create(
        client, org_a_key, model=setup["model"], training_file=setup["preference"], method=_dpo(LORA)
    )
    assert resp.status_code == 200, resp.text

    # rank 40 + a new 40 = 80 > vLLM's max_lora_rank 64: the stored adapter could not be served
    wide, _ = _trained_job(engine, _org_id(engine, "org-a"), setup["chat"], lora={**LORA, "lora_rank": 40})
    error = _error(_create(client, org_a_key, model=wide, training_file=setup["chat"]), 400)
    assert error["param"] == "model" and "max_lora_rank 64" in error["message"]

    with session_scope(engine) as session:
        model = session.exec(select(FineTunedModel).where(FineTunedModel.id == setup["model"])).one()
        model.deleted_at = now_s()
        session.add(model)
    for name in (setup["model"], setup["checkpoint"]):
        error = _error(_create(client, org_a_key, model=name, training_file=setup["chat"]), 404)
        assert (error["code"], error["param"]) == ("model_not_found", "model")
