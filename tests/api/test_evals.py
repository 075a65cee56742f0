"""/v1/evals without a model: creating, listing, updating and deleting evals, and every refusal of a bad eval or
run (a 400 naming the field, a 404 for what is not there or is another organization's). Runs that sample a real
model are in tests/contract/test_evals_openai_sdk.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from core.model_registry import register_model
from core.settings import Settings


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


ITEM_SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
}
EXACT = {
    "type": "string_check",
    "name": "exact",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.answer }}",
    "operation": "eq",
}


def _eval_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "secret",
        "data_source_config": {"type": "custom", "item_schema": ITEM_SCHEMA, "include_sample_schema": True},
        "testing_criteria": [EXACT],
    }
    return {**body, **changes}


def _run_body(**changes: Any) -> dict[str, Any]:
    data_source: dict[str, Any] = {
        "type": "completions",
        "model": "demo-tiny",
        "input_messages": {
            "type": "template",
            "template": [{"role": "user", "content": "{{ item.question }}"}],
        },
        "source": {"type": "file_content", "content": [{"item": {"question": "q", "answer": "a"}}]},
    }
    return {"data_source": {**data_source, **changes}}


def _refused(response: Any, status: int, param: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error


def test_eval_crud_and_refusals(
    client: TestClient, settings: Settings, org_a_key: str, org_b_key: str, tmp_path: Path
) -> None:
    a, b = _auth(org_a_key), _auth(org_b_key)
    created = client.post("/v1/evals", json=_eval_body(), headers=a)
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["object"] == "eval" and body["id"].startswith("eval_")
    assert body["data_source_config"]["schema"]["properties"]["item"] == ITEM_SCHEMA
    assert body["data_source_config"]["schema"]["required"] == ["item", "sample"]
    assert body["testing_criteria"][0]["name"] == "exact"
    eval_id = body["id"]

    # Bad evals: each a 400 naming the field.
    python = {"type": "python", "name": "py", "source": "def grade(s, i): return 1"}
    _refused(client.post("/v1/evals", json=_eval_body(testing_criteria=[python]), headers=a), 400,
             "testing_criteria[0].type")  # fmt: skip
    similarity = {**EXACT, "type": "text_similarity", "evaluation_metric": "fuzzy_match"}
    del similarity["operation"]
    _refused(client.post("/v1/evals", json=_eval_body(testing_criteria=[similarity]), headers=a), 400,
             "testing_criteria[0].pass_threshold")  # fmt: skip
    unknown_field = {**EXACT, "reference": "{{ item.nope }}"}
    _refused(client.post("/v1/evals", json=_eval_body(testing_criteria=[unknown_field]), headers=a), 400,
             "testing_criteria[0]")  # fmt: skip
    _refused(
        client.post("/v1/evals", json=_eval_body(testing_criteria=[]), headers=a), 400, "testing_criteria"
    )
    logs = {"type": "logs"}
    _refused(client.post("/v1/evals", json=_eval_body(data_source_config=logs), headers=a), 400,
             "data_source_config.type")  # fmt: skip

    # Listing, updating, other organizations.
    listed = client.get("/v1/evals", headers=a).json()
    assert [e["id"] for e in listed["data"]] == [eval_id]
    assert client.get("/v1/evals", headers=b).json()["data"] == []
    _refused(client.get(f"/v1/evals/{eval_id}", headers=b), 404, "eval_id")
    updated = client.post(f"/v1/evals/{eval_id}", json={"name": "renamed", "metadata": {"k": "v"}}, headers=a)
    assert updated.json()["name"] == "renamed" and updated.json()["metadata"] == {"k": "v"}

    # Bad runs.
    runs = f"/v1/evals/{eval_id}/runs"
    bad_template = {"type": "template", "template": [{"role": "user", "content": "{{ item.question"}]}
    _refused(client.post(runs, json=_run_body(input_messages=bad_template), headers=a), 400,
             "data_source.input_messages.template[0].content")  # fmt: skip
    sample_ref = {"type": "template", "template": [{"role": "user", "content": "{{ sample.output_text }}"}]}
    _refused(client.post(runs, json=_run_body(input_messages=sample_ref), headers=a), 400,
             "data_source.input_messages.template[0].content")  # fmt: skip
    _refused(client.post(runs, json=_run_body(type="jsonl"), headers=a), 400, "data_source.type")
    _refused(client.post(runs, json=_run_body(sampling_params={"temperature": "hot"}), headers=a), 400,
             "data_source.sampling_params.temperature")  # fmt: skip
    _refused(client.post(runs, json=_run_body(), headers=a), 404, "data_source.model")  # not registered here
    register_model(settings, "demo-tiny", tmp_path / "demo-tiny")
    unknown_file = {"type": "file_id", "id": "file-nope"}
    _refused(client.post(runs, json=_run_body(source=unknown_file), headers=a), 404, "data_source.source.id")
    _refused(client.post(runs, json=_run_body(model="ft:demo-tiny:org:x:1"), headers=a), 404, "model")
    _refused(client.post(runs, json=_run_body(), headers=b), 404, "eval_id")

    # A run that cannot sample (no vLLM here) is still created, listed and cancellable, by its org only.
    run = client.post(runs, json=_run_body(), headers=a)
    assert run.status_code == 200, run.text
    run_body = run.json()
    assert run_body["object"] == "eval.run" and run_body["status"] in ("queued", "in_progress")
    assert run_body["result_counts"] == {"total": 1, "errored": 0, "failed": 0, "passed": 0}
    assert run_body["report_url"].endswith(f"/ui/evals/{eval_id}?run={run_body['id']}")
    run_path = f"{runs}/{run_body['id']}"
    _refused(client.get(run_path, headers=b), 404, "eval_id")
    canceled = client.post(run_path, headers=a).json()
    assert canceled["status"] == "canceled"
    assert [r["id"] for r in client.get(f"{runs}?status=canceled", headers=a).json()["data"]] == [
        run_body["id"]
    ]
    _refused(client.get(f"{runs}?status=bogus", headers=a), 400, "status")
    assert client.get(f"{run_path}/output_items", headers=a).status_code == 200
    _refused(client.get(f"{run_path}/output_items", headers=b), 404, "eval_id")

    # Deleting: the eval goes (and its runs with it, for this org's reads).
    _refused(client.delete(f"/v1/evals/{eval_id}", headers=b), 404, "eval_id")
    deleted = client.delete(f"/v1/evals/{eval_id}", headers=a).json()
    assert deleted == {"object": "eval.deleted", "deleted": True, "eval_id": eval_id}
    _refused(client.get(run_path, headers=a), 404, "eval_id")
    assert json.loads(client.get("/v1/evals", headers=a).text)["data"] == []
