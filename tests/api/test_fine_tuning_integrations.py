"""`integrations` on POST /v1/fine_tuning/jobs: ftserve has none, so every entry is refused with a 400 naming
it (never stored and ignored); an empty list or null is accepted and kept as sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from core.model_registry import register_model
from core.settings import Settings
from tests.support.datasets import chat_jsonl

WANDB = {"type": "wandb", "wandb": {"project": "my-wandb-project", "tags": ["a"]}}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def body(settings: Settings, tmp_path: Path, client: TestClient, org_a_key: str) -> dict[str, Any]:
    register_model(settings, "demo-tiny", tmp_path / "demo-tiny")  # the API needs the registry entry only
    resp = client.post(
        "/v1/files",
        headers=_auth(org_a_key),
        data={"purpose": "fine-tune"},
        files={"file": ("t.jsonl", chat_jsonl(12))},
    )
    assert resp.status_code == 200, resp.text
    return {"model": "demo-tiny", "training_file": resp.json()["id"]}


def _create(client: TestClient, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return client.post("/v1/fine_tuning/jobs", headers={**_auth(key), **headers}, json=body)


def _job_count(client: TestClient, key: str) -> int:
    resp = client.get("/v1/fine_tuning/jobs", headers=_auth(key))
    assert resp.status_code == 200, resp.text
    return len(resp.json()["data"])


def test_wandb_is_refused_saying_where_the_metrics_are(
    client: TestClient, org_a_key: str, body: dict[str, Any]
) -> None:
    resp = _create(client, org_a_key, {**body, "integrations": [WANDB]})
    assert resp.status_code == 400, resp.text
    assert resp.headers["x-should-retry"] == "false"
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "integrations[0].type"
    assert error["code"] == "unsupported_integration"
    message = error["message"]
    assert "does not send runs to Weights & Biases" in message
    for where in ("/events", "/checkpoints", "results.csv", "result_files"):
        assert where in message
    assert _job_count(client, org_a_key) == 0


@pytest.mark.parametrize(
    "integrations",
    [[{"type": "mlflow"}], [{"type": "Wandb", "wandb": {"project": "p"}}], [{"type": "comet"}, WANDB]],
)
def test_an_unknown_integration_type_is_refused(
    client: TestClient, org_a_key: str, body: dict[str, Any], integrations: list[dict[str, Any]]
) -> None:
    resp = _create(client, org_a_key, {**body, "integrations": integrations})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == "integrations[0].type" and error["code"] == "unsupported_integration"
    assert f"Unknown integration type '{integrations[0]['type']}'" in error["message"]
    assert "results.csv" in error["message"]
    assert _job_count(client, org_a_key) == 0


@pytest.mark.parametrize(
    ("integrations", "param"),
    [
        ("wandb", "integrations"),
        (WANDB, "integrations"),  # an object, not a list of them
        (["wandb"], "integrations[0]"),
        ([1], "integrations[0]"),
        ([None], "integrations[0]"),
        ([{}], "integrations[0].type"),
        ([{"wandb": {"project": "p"}}], "integrations[0].type"),
        ([{"type": None}], "integrations[0].type"),
        ([{"type": 5}], "integrations[0].type"),
        ([{"type": ""}], "integrations[0].type"),
    ],
)
def test_malformed_integrations_are_refused(
    client: TestClient, org_a_key: str, body: dict[str, Any], integrations: Any, param: str
) -> None:
    resp = _create(client, org_a_key, {**body, "integrations": integrations})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param and error["code"] == "invalid_value"
    assert f"'{param}'" in error["message"]
    assert _job_count(client, org_a_key) == 0


@pytest.mark.parametrize("integrations", [[], None])
def test_an_empty_list_or_null_is_accepted_and_kept(
    client: TestClient, org_a_key: str, body: dict[str, Any], integrations: list[Any] | None
) -> None:
    resp = _create(client, org_a_key, {**body, "integrations": integrations})
    assert resp.status_code == 200, resp.text
    job = resp.json()
    assert job["integrations"] == integrations
    got = client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=_auth(org_a_key))
    assert got.status_code == 200 and got.json()["integrations"] == integrations


def test_a_refused_integration_leaves_the_idempotency_key_free(
    client: TestClient, org_a_key: str, body: dict[str, Any]
) -> None:
    bad = _create(client, org_a_key, {**body, "integrations": [WANDB]}, **{"Idempotency-Key": "key-1"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "integrations[0].type"
    fixed = _create(client, org_a_key, body, **{"Idempotency-Key": "key-1"})
    assert fixed.status_code == 200, fixed.text
    assert "idempotent-replayed" not in fixed.headers
    assert _job_count(client, org_a_key) == 1


def test_the_openai_sdk_gets_a_bad_request_error(
    client: TestClient, org_a_key: str, body: dict[str, Any]
) -> None:
    import openai

    sdk = openai.OpenAI(api_key=org_a_key, base_url="http://testserver/v1", http_client=client, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.fine_tuning.jobs.create(
            model=body["model"],
            training_file=body["training_file"],
            integrations=[{"type": "wandb", "wandb": {"project": "my-wandb-project"}}],
        )
    assert caught.value.status_code == 400
    assert caught.value.param == "integrations[0].type"
    assert caught.value.code == "unsupported_integration"
    assert "Weights & Biases" in caught.value.message
    job = sdk.fine_tuning.jobs.create(
        model=body["model"], training_file=body["training_file"], integrations=[]
    )
    assert job.status == "validating_files" and job.integrations == []
    assert _job_count(client, org_a_key) == 1
