"""Every response body of the files, fine-tuning jobs (events, checkpoints) and models APIs, and the error
envelope, validates against OpenAI's published OpenAPI schemas (the subset vendored as
tests/support/openai_openapi_subset.yaml) and parses with the official `openai` SDK's types.

"To the letter": a field the spec has as optional and not nullable is omitted when there is no value (never
`null`), a required field is always sent, enum values are the spec's. Our extensions are extra fields, which
the spec allows (none of these schemas says `additionalProperties: false`). Two departures, both OpenAI's own,
are checked as such: a `paused` job (OpenAI's pause endpoint returns a status that its spec and SDK do not
list), and the `first_id` / `last_id` of an empty file list (`null`, as OpenAI sends them; the spec has
required strings).

Jobs are moved through their states in the database (core/jobs.py), as the scheduler and the worker move them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai.types as sdk
import openai.types.fine_tuning as sdk_ft
import openai.types.fine_tuning.jobs as sdk_ft_jobs
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlalchemy import Engine
from sqlmodel import Session, select

from core import ids, jobs
from core.db import make_engine
from core.model_registry import register_model
from core.models import File, FineTunedModel, JobCheckpoint, JobEvent, Organization, now_s
from core.settings import Settings
from tests.support.datasets import chat_jsonl, preference_jsonl
from tests.support.openai_schema import assert_valid

BASE_MODEL = "demo-tiny"
ORG = "org-a"  # the org_a_key fixture's


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _check(schema: str, body: Any, sdk_type: type[BaseModel] | None = None) -> Any:
    """The body validates against the spec's `schema` and, where the SDK has a type for it, parses with it."""
    assert_valid(schema, body)
    if sdk_type is not None:
        sdk_type.model_validate(body)
    return body


def _check_list(schema: str, body: Any, item_type: type[BaseModel]) -> Any:
    _check(schema, body)
    for item in body["data"]:
        item_type.model_validate(item)
    return body


def _ok(resp: httpx.Response) -> Any:
    assert resp.status_code == 200, resp.text
    return resp.json()


def _error(resp: httpx.Response, status: int) -> Any:
    assert resp.status_code == status, resp.text
    return _check("ErrorResponse", resp.json())


@pytest.fixture
def engine(settings: Settings, client: TestClient) -> Iterator[Engine]:
    engine = make_engine(settings.resolved_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def base_model(settings: Settings, tmp_path: Path) -> str:
    # The API only needs the registry entry; no weights are loaded here.
    register_model(settings, BASE_MODEL, tmp_path / BASE_MODEL)
    return BASE_MODEL


def _org_id(engine: Engine) -> str:
    with Session(engine) as session:
        return session.exec(select(Organization).where(Organization.name == ORG)).one().id


def _upload(client: TestClient, key: str, data: bytes, **fields: str) -> httpx.Response:
    return client.post(
        "/v1/files",
        headers=_auth(key),
        data={"purpose": "fine-tune", **fields},
        files={"file": ("train.jsonl", data)},
    )


def _create_job(client: TestClient, key: str, **body: Any) -> Any:
    return _ok(client.post("/v1/fine_tuning/jobs", headers=_auth(key), json=body))


def _job(client: TestClient, key: str, job_id: str) -> Any:
    body = _ok(client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=_auth(key)))
    return _check("FineTuningJob", body, sdk_ft.FineTuningJob)


def _move(engine: Engine, job_id: str, to_status: str, **fields: Any) -> None:
    with Session(engine) as session:
        moved = jobs.transition(
            session, job_id=job_id, from_status=jobs.ACTIVE, to_status=to_status, **fields
        )
        assert moved, (job_id, to_status)
        session.commit()


# What a worker writes once it has resolved a supervised job's "auto" hyperparameters.
RESOLVED = {
    "method": "supervised",
    "batch_size": 4,
    "learning_rate_multiplier": 1.0,
    "learning_rate": 0.005,
    "n_epochs": 2,
    "beta": None,
    "lora_rank": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "target_modules": "all-linear",
    "max_seq_length": 128,
    "warmup_ratio": 0.03,
    "eval_every_steps": 2,
    "checkpoint_every_steps": 2,
    "micro_batch_size": 2,
    "gradient_accumulation_steps": 2,
    "n_examples": 12,
    "steps_per_epoch": 3,
    "total_steps": 6,
}


def test_the_validator_refuses_what_the_spec_refuses() -> None:
    """The contract is only as strict as the validator: a null where the spec has no null, a missing required
    field, an unknown enum value and a number out of range are each caught."""
    file = {
        "id": "file-1",
        "object": "file",
        "bytes": 1,
        "created_at": 1,
        "filename": "t.jsonl",
        "purpose": "fine-tune",
        "status": "processed",
    }
    assert_valid("OpenAIFile", file)
    for bad in ({"expires_at": None}, {"status_details": None}, {"status": "ready"}, {"purpose": "evals"}):
        with pytest.raises(AssertionError):
            assert_valid("OpenAIFile", {**file, **bad})
    with pytest.raises(AssertionError):
        assert_valid("OpenAIFile", {k: v for k, v in file.items() if k != "status"})
    event = {"id": "e", "object": "fine_tuning.job.event", "created_at": 1, "level": "info", "message": "m"}
    for bad in ({"data": None}, {"level": "warning"}, {"type": "log"}):
        with pytest.raises(AssertionError):
            assert_valid("FineTuningJobEvent", {**event, **bad})
    # OpenAPI 3.0's `minimum: 0, exclusiveMinimum: true`: above 0 (a 3.1 reading would say above 1).
    assert_valid("FineTuneDPOHyperparameters", {"beta": 0.2, "learning_rate_multiplier": 0.5})
    for bad in ({"beta": 0}, {"beta": 2.5}, {"learning_rate_multiplier": 0}, {"n_epochs": 51}):
        with pytest.raises(AssertionError):
            assert_valid("FineTuneDPOHyperparameters", bad)


def test_file_bodies(client: TestClient, org_a_key: str, engine: Engine) -> None:
    empty = _ok(client.get("/v1/files", headers=_auth(org_a_key)))
    # OpenAI's departure from its spec, kept: null cursors on an empty page.
    assert empty == {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}

    plain = _check("OpenAIFile", _ok(_upload(client, org_a_key, chat_jsonl(12))), sdk.FileObject)
    assert plain["status"] == "processed" and plain["purpose"] == "fine-tune"
    # No expiry, nothing wrong: both fields omitted, not null (the spec has neither as nullable).
    assert "expires_at" not in plain and "status_details" not in plain
    assert plain["data_format"] == "chat" and plain["example_count"] == 12  # extensions

    expiry = {"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}
    expiring = _check("OpenAIFile", _ok(_upload(client, org_a_key, chat_jsonl(12), **expiry)), sdk.FileObject)
    assert isinstance(expiring["expires_at"], int)

    rejected = _error(_upload(client, org_a_key, b'{"messages": []}\n' * 12), 400)
    file_id = rejected["error"]["file_id"]  # an extension of the envelope
    failed = _check(
        "OpenAIFile", _ok(client.get(f"/v1/files/{file_id}", headers=_auth(org_a_key))), sdk.FileObject
    )
    assert failed["status"] == "error" and isinstance(failed["status_details"], str)

    # A job's results file, as the worker stores it.
    results_id = ids.file_id()
    with Session(engine) as session:
        session.add(
            File(
                id=results_id,
                organization_id=_org_id(engine),
                filename="results.csv",
                purpose="fine-tune-results",
                bytes=120,
                status="processed",
                storage_key=f"files/{results_id}",
            )
        )
        session.commit()
    results = _ok(client.get(f"/v1/files/{results_id}", headers=_auth(org_a_key)))
    _check("OpenAIFile", results, sdk.FileObject)
    assert results["purpose"] == "fine-tune-results"

    listing = _check_list(
        "ListFilesResponse", _ok(client.get("/v1/files", headers=_auth(org_a_key))), sdk.FileObject
    )
    assert len(listing["data"]) == 4
    assert (listing["first_id"], listing["last_id"]) == (listing["data"][0]["id"], listing["data"][-1]["id"])
    page = _ok(client.get("/v1/files", params={"limit": 1, "purpose": "fine-tune"}, headers=_auth(org_a_key)))
    assert _check_list("ListFilesResponse", page, sdk.FileObject)["has_more"] is True

    deleted = _ok(client.delete(f"/v1/files/{plain['id']}", headers=_auth(org_a_key)))
    _check("DeleteFileResponse", deleted, sdk.FileDeleted)
    assert deleted == {"id": plain["id"], "object": "file", "deleted": True}
    _error(client.get(f"/v1/files/{plain['id']}", headers=_auth(org_a_key)), 404)


def test_job_bodies_in_every_state(
    client: TestClient, org_a_key: str, base_model: str, engine: Engine
) -> None:
    chat = _ok(_upload(client, org_a_key, chat_jsonl(12)))["id"]
    preference = _ok(_upload(client, org_a_key, preference_jsonl(12)))["id"]

    created = _create_job(
        client,
        org_a_key,
        model=base_model,
        training_file=chat,
        validation_file=chat,
        suffix="mine",
        seed=7,
        metadata={"team": "search"},
        integrations=[],
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "lora_rank": 8}}},
    )
    _check("FineTuningJob", created, sdk_ft.FineTuningJob)
    assert created["status"] == "validating_files" and created["user_provided_suffix"] == "mine"
    for field in ("error", "fine_tuned_model", "finished_at", "trained_tokens", "estimated_finish"):
        assert created[field] is None  # required (or documented) and nullable: sent as null
    assert created["integrations"] == [] and created["result_files"] == []

    # The spec requires the top-level `hyperparameters` object of every job, a DPO one's too.
    dpo = _create_job(
        client,
        org_a_key,
        model=base_model,
        training_file=preference,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}},
    )
    _check("FineTuningJob", dpo, sdk_ft.FineTuningJob)
    assert dpo["hyperparameters"] == dpo["method"]["dpo"]["hyperparameters"]
    assert dpo["hyperparameters"]["beta"] == 0.2 and dpo["hyperparameters"]["n_epochs"] == "auto"

    # Queued, with the scheduler's extensions; then running, with a forecast finish and resolved values.
    queue = {"queue_position": 1, "estimated_start_at": now_s() + 60, "wait_reason": "Needs ~1.0 GB."}
    _move(engine, created["id"], jobs.QUEUED, estimated_vram_mb=1024, **queue)
    queued = _job(client, org_a_key, created["id"])
    assert queued["queue_position"] == 1 and queued["queue_reason"] == "Needs ~1.0 GB."
    progress = {"step": 3, "total_steps": 6, "estimated_finish": now_s() + 90, "gpu_name": "NVIDIA H100"}
    _move(engine, created["id"], jobs.RUNNING, resolved_hyperparameters=RESOLVED, **progress)
    running = _job(client, org_a_key, created["id"])
    assert isinstance(running["estimated_finish"], int) and running["hyperparameters"]["batch_size"] == 4

    # Succeeded, with everything a finished job has.
    model = jobs.fine_tuned_model_name(
        base_model=base_model, org_name=ORG, suffix="mine", job_id=created["id"]
    )
    done = {
        "finished_at": now_s(),
        "fine_tuned_model": model,
        "result_files": ["file-r"],
        "trained_tokens": 5768,
    }
    _move(engine, created["id"], jobs.SUCCEEDED, estimated_finish=None, **done)
    succeeded = _job(client, org_a_key, created["id"])
    assert {k: succeeded[k] for k in done} == done
    assert succeeded["estimated_finish"] is None and succeeded["error"] is None

    # Failed, with an error that names a param, and one that does not (`param` is required: null).
    for error in (
        {"code": "examples_too_long", "message": "Lines 3, 7 are too long.", "param": "training_file"},
        {"code": "internal_error", "message": "boom"},
    ):
        failed_id = _create_job(client, org_a_key, model=base_model, training_file=chat)["id"]
        _move(engine, failed_id, jobs.FAILED, finished_at=now_s(), error=error)
        assert _job(client, org_a_key, failed_id)["error"] == {"param": None, **error}

    # Cancelled, through the API.
    cancel_id = _create_job(client, org_a_key, model=base_model, training_file=chat)["id"]
    cancelled = _ok(client.post(f"/v1/fine_tuning/jobs/{cancel_id}/cancel", headers=_auth(org_a_key)))
    _check("FineTuningJob", cancelled, sdk_ft.FineTuningJob)
    assert cancelled["status"] == "cancelled" and isinstance(cancelled["finished_at"], int)

    # Paused: a status OpenAI's pause endpoint returns and its spec does not list; all else is the spec's.
    pause_id = _create_job(client, org_a_key, model=base_model, training_file=chat)["id"]
    _move(engine, pause_id, jobs.QUEUED)
    paused = _ok(client.post(f"/v1/fine_tuning/jobs/{pause_id}/pause", headers=_auth(org_a_key)))
    assert paused["status"] == "paused"
    _check("FineTuningJob", {**paused, "status": "queued"}, sdk_ft.FineTuningJob)

    listing = _ok(client.get("/v1/fine_tuning/jobs", params={"after": pause_id}, headers=_auth(org_a_key)))
    assert len(listing["data"]) == 5 and listing["has_more"] is False  # every job but the paused one
    _check_list("ListPaginatedFineTuningJobsResponse", listing, sdk_ft.FineTuningJob)
    page = _ok(
        client.get("/v1/fine_tuning/jobs", params={"limit": 1, "after": pause_id}, headers=_auth(org_a_key))
    )
    assert _check_list("ListPaginatedFineTuningJobsResponse", page, sdk_ft.FineTuningJob)["has_more"] is True


def test_event_and_checkpoint_bodies(
    client: TestClient, org_a_key: str, base_model: str, engine: Engine
) -> None:
    chat = _ok(_upload(client, org_a_key, chat_jsonl(12)))["id"]
    job_id = _create_job(client, org_a_key, model=base_model, training_file=chat)["id"]
    checkpoints_url, events_url = (
        f"/v1/fine_tuning/jobs/{job_id}/checkpoints",
        f"/v1/fine_tuning/jobs/{job_id}/events",
    )

    empty = _ok(client.get(checkpoints_url, headers=_auth(org_a_key)))
    _check("ListFineTuningJobCheckpointsResponse", empty)
    assert empty["data"] == [] and empty["first_id"] is None  # nullable in this list's schema

    org_id = _org_id(engine)
    with Session(engine) as session:
        jobs.append_event(session, job_id=job_id, message="Fine-tuning job started", data={"attempt": 1})
        jobs.append_event(session, job_id=job_id, message="The worker's disk is nearly full", level="warn")
        step = {"step": 2, "total_steps": 6, "train_loss": 1.234, "train_mean_token_accuracy": 0.5}
        jobs.append_event(
            session, job_id=job_id, type="metrics", message="Step 2/6: training loss=1.234", data=step
        )
        jobs.append_event(session, job_id=job_id, message="Job failed", level="error")
        # A row whose data is null (the column is nullable): the spec's `data` is an object.
        session.add(JobEvent(id=ids.event_id(), job_id=job_id, message="Validating training file", data=None))
        for step_number, metrics in [
            (2, {"step": 2, "train_loss": 1.2, "train_mean_token_accuracy": 0.5}),
            # A metric stored as null: the spec's metrics are numbers.
            (4, {"step": 4, "train_loss": 0.9, "valid_loss": None, "full_valid_loss": 0.95, "epoch": 1.0}),
        ]:
            session.add(
                JobCheckpoint(
                    id=ids.checkpoint_id(),
                    job_id=job_id,
                    organization_id=org_id,
                    step_number=step_number,
                    metrics=metrics,
                    fine_tuned_model_checkpoint=f"ft:{base_model}:{ORG}::{job_id}:ckpt-step-{step_number}",
                    storage_prefix=f"jobs/{job_id}/checkpoints/step-{step_number}",
                )
            )
        session.commit()

    events = _ok(client.get(events_url, params={"limit": 100}, headers=_auth(org_a_key)))
    _check_list("ListFineTuningJobEventsResponse", events, sdk_ft.FineTuningJobEvent)
    assert {e["level"] for e in events["data"]} == {"info", "warn", "error"}
    assert {e["type"] for e in events["data"]} == {"message", "metrics"}
    assert all(isinstance(e["data"], dict) for e in events["data"])
    assert next(e for e in events["data"] if e["type"] == "metrics")["data"] == step
    page = _ok(client.get(events_url, params={"limit": 2}, headers=_auth(org_a_key)))
    assert _check_list("ListFineTuningJobEventsResponse", page, sdk_ft.FineTuningJobEvent)["has_more"] is True

    checkpoints = _ok(client.get(checkpoints_url, headers=_auth(org_a_key)))
    _check_list("ListFineTuningJobCheckpointsResponse", checkpoints, sdk_ft_jobs.FineTuningJobCheckpoint)
    assert [c["step_number"] for c in checkpoints["data"]] == [4, 2]
    assert checkpoints["data"][0]["metrics"] == {
        "step": 4,
        "train_loss": 0.9,
        "full_valid_loss": 0.95,
        "epoch": 1.0,
    }
    assert checkpoints["first_id"] == checkpoints["data"][0]["id"]


def test_model_bodies(client: TestClient, org_a_key: str, base_model: str, engine: Engine) -> None:
    name = f"ft:{base_model}:{ORG}:s:ftjob-abc"
    org_id = _org_id(engine)
    with Session(engine) as session:
        adapter = "jobs/ftjob-abc/adapter"
        session.add(
            FineTunedModel(
                id=name,
                organization_id=org_id,
                job_id="ftjob-abc",
                base_model=base_model,
                adapter_prefix=adapter,
            )
        )
        session.commit()

    listing = _check_list(
        "ListModelsResponse", _ok(client.get("/v1/models", headers=_auth(org_a_key))), sdk.Model
    )
    assert {m["id"] for m in listing["data"]} == {base_model, name}
    for model_id in (base_model, name):
        _check("Model", _ok(client.get(f"/v1/models/{model_id}", headers=_auth(org_a_key))), sdk.Model)
    deleted = _ok(client.delete(f"/v1/models/{name}", headers=_auth(org_a_key)))
    _check("DeleteModelResponse", deleted, sdk.ModelDeleted)
    assert deleted == {"id": name, "object": "model", "deleted": True}
    missing = _error(client.get(f"/v1/models/{name}", headers=_auth(org_a_key)), 404)
    assert missing["error"]["code"] == "model_not_found"


def test_error_bodies(client: TestClient, org_a_key: str) -> None:
    """Domain errors, framework errors (a bad body, a bad query parameter, an unknown route) and the
    authentication middleware's answer: one envelope, with `param` and `code` always sent (null allowed)."""
    headers = _auth(org_a_key)
    bodies = [
        _error(client.get("/v1/files"), 401),
        _error(client.get("/v1/files/file-missing", headers=headers), 404),
        _error(client.get("/v1/no-such-route", headers=headers), 404),
        _error(client.post("/v1/fine_tuning/jobs", headers=headers, json={"model": 3}), 400),
        _error(client.get("/v1/fine_tuning/jobs", params={"limit": 0}, headers=headers), 400),
        _error(_upload(client, org_a_key, chat_jsonl(12), purpose="batch"), 400),
    ]
    for body in bodies:
        assert {"message", "type", "param", "code"} <= set(body["error"])
