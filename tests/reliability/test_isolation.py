"""Isolation: the BOLA matrix and mass assignment.

Every route of the app that takes an object id is found from `app.routes`, so a new route is covered (or
fails this test until its id kind is named below). Each is called with org B's key on org A's object and on
an id that does not exist: both must give the same 404 and the same body (the id aside), and A's objects
must be unchanged afterwards.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from core.db import make_engine
from core.settings import Settings
from tests.support.tenants import Tenant, auth, seed_tenant

# Path parameter → (A's object, a well-formed id that exists nowhere).
ID_KINDS: dict[str, tuple[str, str]] = {
    "file_id": ("file_id", "file-000000000000000000000000"),
    "job_id": ("job_id", "ftjob-000000000000000000000000"),
    "model_id": ("model_id", "ft:demo-tiny:org-nobody::ftjob-000000000000000000000000"),
    "endpoint_id": ("endpoint_id", "whep_000000000000000000000000"),
    "export_id": ("export_id", "ftexp-000000000000000000000000"),
    "key_id": ("key_id", "key-000000000000000000000000"),
    "eval_id": ("eval_id", "eval_000000000000000000000000"),
    "run_id": ("run_id", "evalrun_000000000000000000000000"),
    "output_item_id": ("output_item_id", "outputitem_000000000000000000000000"),
}
# Path parameters that are not object ids.
NOT_OBJECT_IDS = {("/ui/static/{path:path}", "path"), ("/ui/{page:path}", "page")}
# A valid body where the route needs one, so that validation cannot answer before the ownership check.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/fine_tuning/jobs/{job_id}/exports"): {"format": "adapter"},
    ("POST", "/v1/webhook_endpoints/{endpoint_id}"): {"name": "owned", "url": "http://127.0.0.1:9/evil"},
    ("PATCH", "/v1/webhook_endpoints/{endpoint_id}"): {"name": "owned", "url": "http://127.0.0.1:9/evil"},
    ("POST", "/v1/webhook_endpoints/{endpoint_id}/test"): {"event_type": "fine_tuning.job.succeeded"},
    ("POST", "/v1/evals/{eval_id}"): {"name": "owned"},
    ("POST", "/v1/evals/{eval_id}/runs"): {
        "data_source": {
            "type": "completions",
            "model": "demo-tiny",
            "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
            "source": {"type": "file_content", "content": [{"item": {"messages": []}}]},
        }
    },
    ("POST", "/v1/webhook_endpoints/{endpoint_id}/rotate_secret"): {
        "keep_old_secret_active_for_24_hours": False
    },
}


@pytest.fixture(scope="module")
def tenants(battery_client: TestClient, battery_settings: Settings) -> tuple[Tenant, Tenant]:
    return (
        seed_tenant(battery_client, battery_settings, "bola-a"),
        seed_tenant(battery_client, battery_settings, "bola-b"),
    )


def id_routes(client: TestClient) -> list[tuple[str, str, list[str]]]:
    """(method, path template, path parameter names) of every route with a path parameter."""
    found = []
    for route in client.app.routes:  # type: ignore[attr-defined]
        if not isinstance(route, APIRoute):
            continue
        names = [param.name for param in route.dependant.path_params]
        if not names:
            continue
        for method in sorted(route.methods):
            found.append((method, route.path, names))
    return found


def _call(client: TestClient, method: str, template: str, values: dict[str, str], key: str) -> Any:
    path = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: values[m.group(1)], template)
    body = BODIES.get((method, re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", template)))
    return client.request(method, path, headers=auth(key), json=body)


def _snapshot(client: TestClient, a: Tenant) -> dict[str, Any]:
    """What org A sees of its own objects (the parts another org could try to change)."""
    headers = auth(a.key)
    endpoint = client.get(f"/v1/webhook_endpoints/{a.endpoint_id}", headers=headers).json()
    return {
        "file": client.get(f"/v1/files/{a.file_id}", headers=headers).json(),
        "content": client.get(f"/v1/files/{a.file_id}/content", headers=headers).content,
        "job": {
            k: v
            for k, v in client.get(f"/v1/fine_tuning/jobs/{a.job_id}", headers=headers).json().items()
            if k not in ("queue_position", "estimated_start_at", "queue_reason")
        },
        "events": client.get(f"/v1/fine_tuning/jobs/{a.job_id}/events", headers=headers).json(),
        "checkpoints": client.get(f"/v1/fine_tuning/jobs/{a.job_id}/checkpoints", headers=headers).json(),
        "exports": client.get(f"/v1/fine_tuning/jobs/{a.job_id}/exports", headers=headers).json(),
        "model": client.get(f"/v1/models/{a.model_id}", headers=headers).json(),
        "checkpoint_model": client.get(f"/v1/models/{a.checkpoint_model_id}", headers=headers).json(),
        "endpoint": endpoint,
        "deliveries": client.get(f"/v1/webhook_endpoints/{a.endpoint_id}/deliveries", headers=headers).json(),
    }


def test_bola_matrix(battery_client: TestClient, tenants: tuple[Tenant, Tenant]) -> None:
    client = battery_client
    a, b = tenants
    before = _snapshot(client, a)
    assert before["file"]["id"] == a.file_id and before["endpoint"]["id"] == a.endpoint_id
    assert before["checkpoints"]["data"] and before["deliveries"]["data"]

    routes = id_routes(client)
    unknown = [
        (path, name)
        for _m, path, names in routes
        for name in names
        if name not in ID_KINDS and (path, name) not in NOT_OBJECT_IDS
    ]
    assert not unknown, f"routes with an id kind this matrix does not know; add it to ID_KINDS: {unknown}"

    tried = 0
    for method, path, names in routes:
        if any((path, name) in NOT_OBJECT_IDS for name in names):
            continue
        variants = [{name: getattr(a, ID_KINDS[name][0]) for name in names}]
        if "model_id" in names:
            variants.append({"model_id": a.checkpoint_model_id})
        for foreign in variants:
            missing = {name: ID_KINDS[name][1] for name in names}
            theirs = _call(client, method, path, foreign, b.key)
            nothing = _call(client, method, path, missing, b.key)
            label = f"{method} {path} with {foreign}"
            assert theirs.status_code == 404, f"{label}: {theirs.status_code} {theirs.text}"
            assert nothing.status_code == 404, f"{label} (nonexistent): {nothing.status_code} {nothing.text}"
            # The same answer as for an id that does not exist: no existence leak, no other field.
            redacted = theirs.text
            for name in names:
                redacted = redacted.replace(foreign[name], missing[name])
            assert redacted == nothing.text, f"{label}: {theirs.text} != {nothing.text}"
            tried += 1
    assert tried >= 20, tried

    # Inference names the object in the body (model=), not the path.
    for model in (a.model_id, a.checkpoint_model_id):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        theirs = client.post("/v1/chat/completions", headers=auth(b.key), json=body)
        nothing = client.post(
            "/v1/chat/completions", headers=auth(b.key), json={**body, "model": ID_KINDS["model_id"][1]}
        )
        assert theirs.status_code == nothing.status_code == 404, theirs.text
        assert theirs.text.replace(model, ID_KINDS["model_id"][1]) == nothing.text
        completion = client.post("/v1/completions", headers=auth(b.key), json={"model": model, "prompt": "x"})
        assert completion.status_code == 404, completion.text

    # A job on A's training file is refused the same way as one on a file that does not exist.
    for field in ("training_file", "validation_file"):
        own = seed_file = {"model": "demo-tiny", "training_file": b.file_id}
        theirs = client.post("/v1/fine_tuning/jobs", headers=auth(b.key), json={**own, field: a.file_id})
        nothing = client.post(
            "/v1/fine_tuning/jobs", headers=auth(b.key), json={**seed_file, field: ID_KINDS["file_id"][1]}
        )
        assert theirs.status_code == nothing.status_code and theirs.status_code >= 400, theirs.text
        assert theirs.text.replace(a.file_id, ID_KINDS["file_id"][1]) == nothing.text

    assert _snapshot(client, a) == before, "org B changed one of org A's objects"


def test_lists_and_cursors_never_show_another_org(
    battery_client: TestClient, tenants: tuple[Tenant, Tenant]
) -> None:
    client = battery_client
    a, b = tenants
    a_ids = {a.file_id, a.job_id, a.model_id, a.checkpoint_model_id, a.endpoint_id}
    for path in ("/v1/files", "/v1/fine_tuning/jobs", "/v1/models", "/v1/webhook_endpoints"):
        listed = client.get(path, headers=auth(b.key)).json()["data"]
        assert not a_ids & {row["id"] for row in listed}, path
    # A's id as B's cursor: the same "unknown cursor" as an id that exists nowhere.
    for path, a_id, missing in (
        ("/v1/files", a.file_id, ID_KINDS["file_id"][1]),
        ("/v1/fine_tuning/jobs", a.job_id, ID_KINDS["job_id"][1]),
        ("/v1/webhook_endpoints", a.endpoint_id, ID_KINDS["endpoint_id"][1]),
    ):
        theirs = client.get(path, headers=auth(b.key), params={"after": a_id})
        nothing = client.get(path, headers=auth(b.key), params={"after": missing})
        assert theirs.status_code == nothing.status_code == 400
        assert theirs.text.replace(a_id, missing) == nothing.text
    # Another org's event id as a deliveries filter on B's own endpoint shows nothing.
    a_deliveries = client.get(f"/v1/webhook_endpoints/{a.endpoint_id}/deliveries", headers=auth(a.key)).json()
    event_id = a_deliveries["data"][0]["event_id"]
    leaked = client.get(
        f"/v1/webhook_endpoints/{b.endpoint_id}/deliveries",
        headers=auth(b.key),
        params={"event_id": event_id},
    ).json()["data"]
    assert leaked == []


SERVER_OWNED_JOB_FIELDS: dict[str, Any] = {
    "id": "ftjob-chosenbyclient0000000000",
    "object": "something.else",
    "status": "succeeded",
    "organization_id": "org-someoneelse",
    "trained_tokens": 123456,
    "fine_tuned_model": "ft:demo-tiny:other::ftjob-x",
    "result_files": ["file-x"],
    "created_at": 1,
    "finished_at": 2,
    "error": {"code": "x", "message": "y"},
    "attempt": 7,
    "estimated_vram_mb": 1,
    "gpu_class": "H100",
    "queue_position": 0,
    "lora_path": "/etc",
    "adapter_prefix": "../../x",
    "is_admin": True,
}


def test_mass_assignment_is_ignored_on_create(
    battery_client: TestClient, battery_settings: Settings, tenants: tuple[Tenant, Tenant]
) -> None:
    """Server-owned fields in a create body change nothing: the wire models ignore unknown fields (the SDK
    compatibility choice in api/protocol.py) and the services set every server-owned column themselves."""
    from core.models import FineTuningJob, Organization, WebhookEndpoint

    client = battery_client
    a, _b = tenants
    headers = auth(a.key)
    resp = client.post(
        "/v1/fine_tuning/jobs",
        headers=headers,
        json={"model": "demo-tiny", "training_file": a.file_id, **SERVER_OWNED_JOB_FIELDS},
    )
    assert resp.status_code == 200, resp.text
    job = resp.json()
    for field, value in SERVER_OWNED_JOB_FIELDS.items():
        assert job.get(field) != value, (field, job.get(field))
    assert job["status"] == "validating_files" and job["trained_tokens"] is None and job["result_files"] == []

    upload = client.post(
        "/v1/files",
        headers=headers,
        data={
            "purpose": "fine-tune",
            "id": "file-mine",
            "status": "processed",
            "bytes": "1",
            "organization_id": "x",
        },
        files={"file": ("t.jsonl", b"not json\n")},
    )
    file_obj = upload.json()
    assert upload.status_code in (200, 400), upload.text
    if upload.status_code == 200:
        assert file_obj["id"] != "file-mine" and file_obj["status"] == "error" and file_obj["bytes"] == 9

    endpoint = client.post(
        "/v1/webhook_endpoints",
        headers=headers,
        json={
            "url": "http://127.0.0.1:9/x",
            "id": "whep_mine",
            "signing_secret": "whsec_chosen",
            "organization_id": "org-x",
            "created_at": 1,
            "disabled_reason": "x",
        },
    ).json()
    assert endpoint["id"] != "whep_mine" and endpoint["signing_secret"] != "whsec_chosen"
    assert endpoint["created_at"] > 1 and endpoint["disabled_reason"] is None

    engine = make_engine(battery_settings.resolved_database_url)
    with Session(engine) as session:
        org_id = session.exec(select(Organization.id).where(Organization.name == "bola-a")).one()
        row = session.exec(select(FineTuningJob).where(FineTuningJob.id == job["id"])).one()
        assert row.organization_id == org_id and row.attempt == 0
        hook = session.exec(select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint["id"])).one()
        assert hook.organization_id == org_id
    engine.dispose()
