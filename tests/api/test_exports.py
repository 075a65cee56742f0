"""Exports API through the ASGI app (docs/export.md): the request, listing and retrieval, and every refusal: a job
that has not succeeded, an unknown format or checkpoint, another organization's job, the export quotas. Jobs,
models and checkpoints are written to the DB as the worker would; no weights are loaded here."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from core import ids, jobs
from core.db import session_scope
from core.models import File, FineTunedModel, FineTuningJob, JobCheckpoint, JobEvent, JobExport, Organization
from core.settings import Settings


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _seed_job(
    engine: Engine,
    org_name: str,
    *,
    status: str = jobs.SUCCEEDED,
    steps: tuple[int, ...] = (),
    model: bool = True,
) -> str:
    with session_scope(engine) as session:
        org = session.exec(select(Organization).where(Organization.name == org_name)).one()
        job_id = ids.job_id()
        name = jobs.fine_tuned_model_name(
            base_model="demo-tiny", org_name=org.name, suffix=None, job_id=job_id
        )
        session.add(
            FineTuningJob(
                id=job_id, organization_id=org.id, model="demo-tiny", training_file="file-x", status=status,
                fine_tuned_model=name if status == jobs.SUCCEEDED else None,
            )
        )  # fmt: skip
        if model and status == jobs.SUCCEEDED:
            session.add(
                FineTunedModel(
                    id=name, organization_id=org.id, job_id=job_id, base_model="demo-tiny",
                    adapter_prefix=f"jobs/{job_id}/attempt-1/adapter/",
                )
            )  # fmt: skip
        for step in steps:
            session.add(
                JobCheckpoint(
                    id=ids.checkpoint_id(), job_id=job_id, organization_id=org.id, step_number=step,
                    fine_tuned_model_checkpoint=jobs.checkpoint_model_name(name, step),
                    storage_prefix=f"jobs/{job_id}/checkpoints/step-{step}/attempt-1",
                )
            )  # fmt: skip
    return job_id


def _export(client: TestClient, key: str, job_id: str, **body: Any) -> Any:
    return client.post(f"/v1/fine_tuning/jobs/{job_id}/exports", headers=_auth(key), json=body)


def _error(resp: Any, status: int, param: str | None, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


def test_request_list_and_retrieve(
    client: TestClient, org_a_key: str, engine: Engine, settings: Settings
) -> None:
    settings.org_max_active_exports = 0  # no limit: five exports below
    job_id = _seed_job(engine, "org-a", steps=(5, 10))
    resp = _export(client, org_a_key, job_id, format="gguf")
    assert resp.status_code == 200, resp.text
    export = resp.json()
    assert export["id"].startswith("ftexp-") and export["object"] == "fine_tuning.job.export"
    assert export["job_id"] == job_id and export["format"] == "gguf" and export["status"] == "queued"
    assert export["file_id"] is None and export["bytes"] is None and export["error"] is None
    assert (
        export["checkpoint_step"] is None
        and export["model"].endswith(f":{job_id}")
        and export["checks"] == {}
    )

    with Session(engine) as session:
        checkpoints = session.exec(select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)).all()
    by_step = {c.step_number: c for c in checkpoints}
    # A checkpoint by step number, "step-N", id or model name.
    for wanted, step in (
        (5, 5),
        ("step-10", 10),
        (by_step[5].id, 5),
        (by_step[10].fine_tuned_model_checkpoint, 10),
    ):
        resp = _export(client, org_a_key, job_id, format="adapter", checkpoint=wanted)
        assert resp.status_code == 200, resp.text
        assert resp.json()["checkpoint_step"] == step
        assert resp.json()["model"] == by_step[step].fine_tuned_model_checkpoint

    listed = client.get(f"/v1/fine_tuning/jobs/{job_id}/exports", headers=_auth(org_a_key)).json()
    assert listed["object"] == "list" and listed["data"][-1]["id"] == export["id"]  # newest first
    page = client.get(f"/v1/fine_tuning/jobs/{job_id}/exports?limit=1", headers=_auth(org_a_key)).json()
    assert len(page["data"]) == 1 and page["has_more"] and page["first_id"] == page["last_id"]
    got = client.get(f"/v1/fine_tuning/jobs/{job_id}/exports/{export['id']}", headers=_auth(org_a_key))
    assert got.status_code == 200 and got.json() == export
    with Session(engine) as session:
        messages = [e.message for e in session.exec(select(JobEvent).where(JobEvent.job_id == job_id)).all()]
    assert f"Export gguf requested ({export['id']}, of the fine-tuned model)" in messages


def test_refusals_name_the_field(client: TestClient, org_a_key: str, org_b_key: str, engine: Engine) -> None:
    running = _seed_job(engine, "org-a", status=jobs.RUNNING, steps=(3,))
    error = _error(
        _export(client, org_a_key, running, format="merged"), 400, "fine_tuning_job_id", "invalid_state"
    )
    assert "running" in error["message"] and "checkpoint" in error["message"]
    # A running job's checkpoint can be exported.
    assert _export(client, org_a_key, running, format="merged", checkpoint=3).status_code == 200

    done = _seed_job(engine, "org-a", steps=(4,))
    error = _error(_export(client, org_a_key, done, format="safetensors"), 400, "format", "invalid_value")
    assert "adapter" in error["message"] and "gguf" in error["message"]
    _error(_export(client, org_a_key, done), 400, "format")
    _error(_export(client, org_a_key, done, format="gguf", checkpoint=True), 400, "checkpoint")
    error = _error(
        _export(client, org_a_key, done, format="gguf", checkpoint=7),
        400,
        "checkpoint",
        "checkpoint_not_found",
    )
    assert "steps: 4" in error["message"]
    _error(_export(client, org_a_key, done, format="gguf", checkpoint="ftckpt-nope"), 400, "checkpoint")
    no_model = _seed_job(engine, "org-a", model=False)
    assert (
        "deleted"
        in _error(_export(client, org_a_key, no_model, format="adapter"), 400, "fine_tuning_job_id")[
            "message"
        ]
    )

    # Another organization's job is "not found", exactly as a job that does not exist.
    missing = "ftjob-000000000000000000000000"
    for method, suffix in (("POST", ""), ("GET", ""), ("GET", "/ftexp-x")):
        theirs = client.request(
            method,
            f"/v1/fine_tuning/jobs/{done}/exports{suffix}",
            headers=_auth(org_b_key),
            json={"format": "gguf"},
        )
        nothing = client.request(
            method,
            f"/v1/fine_tuning/jobs/{missing}/exports{suffix}",
            headers=_auth(org_b_key),
            json={"format": "gguf"},
        )
        assert theirs.status_code == nothing.status_code == 404
        assert theirs.text.replace(done, missing) == nothing.text
    # An export id of another job (of the same org) is not found under this one.
    other = _export(client, org_a_key, done, format="adapter").json()["id"]
    _error(
        client.get(f"/v1/fine_tuning/jobs/{running}/exports/{other}", headers=_auth(org_a_key)),
        404,
        "export_id",
    )


def test_export_quotas(client: TestClient, org_a_key: str, engine: Engine, settings: Settings) -> None:
    job_id = _seed_job(engine, "org-a")
    settings.org_max_active_exports = 2
    for _ in range(2):
        assert _export(client, org_a_key, job_id, format="adapter").status_code == 200
    error = _error(_export(client, org_a_key, job_id, format="adapter"), 429, None, "quota_exceeded")
    assert "2 exports in progress" in error["message"]
    assert _error(_export(client, org_a_key, job_id, format="adapter"), 429, None)  # still

    # Finished exports whose files fill the export quota: refused until one is deleted.
    settings.org_max_active_exports = 0
    settings.org_max_export_bytes = 1000
    with session_scope(engine) as session:
        for export in session.exec(select(JobExport).where(JobExport.job_id == job_id)).all():
            file_id = ids.file_id()
            session.add(
                File(
                    id=file_id, organization_id=export.organization_id, filename="x.zip", purpose="fine-tune-results",
                    bytes=600, status="processed", storage_key=f"files/{file_id}",
                )
            )  # fmt: skip
            export.status, export.file_id, export.bytes = "succeeded", file_id, 600
            session.add(export)
    error = _error(_export(client, org_a_key, job_id, format="gguf"), 429, None, "quota_exceeded")
    assert "1,200 bytes" in error["message"] and "1,000" in error["message"]
    file_id = client.get(f"/v1/fine_tuning/jobs/{job_id}/exports", headers=_auth(org_a_key)).json()["data"][
        0
    ]["file_id"]
    assert client.delete(f"/v1/files/{file_id}", headers=_auth(org_a_key)).status_code == 200
    assert _export(client, org_a_key, job_id, format="gguf").status_code == 200
