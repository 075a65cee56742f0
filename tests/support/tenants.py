"""Two-tenant fixtures' data for the security battery: every kind of object one org owns, made through the API
where the API makes it and in the database where only the worker would."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi.testclient import TestClient
from sqlmodel import Session, select

from core.db import make_engine
from core.settings import Settings
from tests.support.datasets import chat_jsonl
from tests.support.keys import make_key


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Tenant:
    key: str
    file_id: str
    job_id: str
    model_id: str
    checkpoint_model_id: str
    endpoint_id: str
    export_id: str
    key_id: str = ""  # the id (key-...) of `key`
    eval_id: str = ""
    run_id: str = ""  # a completed run of eval_id
    output_item_id: str = ""  # an output item of run_id


def seed_tenant(client: TestClient, settings: Settings, org: str) -> Tenant:
    """Objects of every kind for `org`, created through the API where the API creates them and in the DB
    where only the worker would (checkpoints, the fine-tuned model, an export, a delivery attempt)."""
    from core import ids, jobs
    from core.models import (
        ApiKey,
        EvalOutputItem,
        EvalRun,
        FineTunedModel,
        JobCheckpoint,
        JobExport,
        Organization,
        WebhookDelivery,
        WebhookDeliveryAttempt,
        WebhookEvent,
    )

    key = make_key(settings, org)
    headers = auth(key)
    resp = client.post(
        "/v1/files",
        headers=headers,
        data={"purpose": "fine-tune"},
        files={"file": ("t.jsonl", chat_jsonl(12))},
    )
    assert resp.status_code == 200, resp.text
    file_id = resp.json()["id"]
    resp = client.post(
        "/v1/fine_tuning/jobs", headers=headers, json={"model": "demo-tiny", "training_file": file_id}
    )
    assert resp.status_code == 200, resp.text
    job_id = resp.json()["id"]
    resp = client.post(
        "/v1/webhook_endpoints", headers=headers, json={"url": "http://127.0.0.1:9/hook", "events": "all"}
    )
    assert resp.status_code == 200, resp.text
    endpoint_id = resp.json()["id"]
    resp = client.post(
        "/v1/evals",
        headers=headers,
        json={"data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
              "testing_criteria": [{"type": "string_check", "name": "eq", "input": "{{ sample.output_text }}",
                                    "reference": "a", "operation": "eq"}]},
    )  # fmt: skip
    assert resp.status_code == 200, resp.text
    eval_id = resp.json()["id"]

    engine = make_engine(settings.resolved_database_url)
    with Session(engine) as session:
        org_row = session.exec(select(Organization).where(Organization.name == org)).one()
        model_id = jobs.fine_tuned_model_name(
            base_model="demo-tiny", org_name=org_row.name, suffix=None, job_id=job_id
        )
        checkpoint_model_id = jobs.checkpoint_model_name(model_id, 5)
        session.add(
            JobCheckpoint(
                id=ids.checkpoint_id(),
                job_id=job_id,
                organization_id=org_row.id,
                step_number=5,
                fine_tuned_model_checkpoint=checkpoint_model_id,
                metrics={"train_loss": 1.0},
                storage_prefix=f"jobs/{job_id}/checkpoints/step-5",
            )
        )
        for name, step in ((model_id, None), (checkpoint_model_id, 5)):
            session.add(
                FineTunedModel(
                    id=name,
                    organization_id=org_row.id,
                    job_id=job_id,
                    base_model="demo-tiny",
                    adapter_prefix=f"jobs/{job_id}/adapter",
                    checkpoint_step=step,
                )
            )
        export_id = ids.new_id("ftexp-")
        session.add(
            JobExport(
                id=export_id,
                organization_id=org_row.id,
                job_id=job_id,
                format="adapter",
                checkpoint_step=5,
                source_model=checkpoint_model_id,
            )
        )
        event_id = ids.new_id("evt_")
        delivery_id = ids.new_id("whd_")
        session.add(
            WebhookEvent(
                id=event_id,
                organization_id=org_row.id,
                type="fine_tuning.job.succeeded",
                job_id=job_id,
                payload="{}",
            )
        )
        session.add(
            WebhookDelivery(
                id=delivery_id,
                event_id=event_id,
                endpoint_id=endpoint_id,
                organization_id=org_row.id,
                next_attempt_at=0.0,
            )
        )
        session.add(
            WebhookDeliveryAttempt(
                id=ids.new_id("whatt_"),
                delivery_id=delivery_id,
                endpoint_id=endpoint_id,
                event_id=event_id,
                event_type="fine_tuning.job.succeeded",
                attempt=1,
                status="failed",
                response_status_code=500,
            )
        )
        # A finished run (no runner takes it up) and its output item, as the API's eval runner makes them.
        run_id, output_item_id = ids.new_id("evalrun_"), ids.new_id("outputitem_")
        session.add(EvalRun(id=run_id, eval_id=eval_id, organization_id=org_row.id, model="demo-tiny",
                            status="completed", data_source={}, result_counts={"total": 1, "errored": 0,
                            "failed": 0, "passed": 1}))  # fmt: skip
        session.add(EvalOutputItem(id=output_item_id, run_id=run_id, eval_id=eval_id, datasource_item_id=0,
                                   datasource_item={}, status="pass", results=[], sample={}))  # fmt: skip
        session.commit()
        key_id = session.exec(select(ApiKey.id).where(ApiKey.organization_id == org_row.id)).one()
    engine.dispose()
    return Tenant(
        key,
        file_id,
        job_id,
        model_id,
        checkpoint_model_id,
        endpoint_id,
        export_id,
        key_id,
        eval_id,
        run_id,
        output_item_id,
    )
