"""Usage, prices, budgets, scoped keys and the audit log through the API (issue #21), on SQLite and PostgreSQL.

Training usage is written with `record_training_usage`, the function the worker calls as each attempt ends
(tests/gpu_worker/test_usage_metering.py has the worker write it for real); chats go through the real proxy to a
stand-in vLLM over HTTP that answers with vLLM's `usage` (tests/contract/test_usage_openai_sdk.py uses a real one).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from core import jobs
from core.db import session_scope
from core.inference.replicas import FROM_CLI, upsert_replica
from core.keys import get_or_create_org
from core.model_registry import register_model
from core.models import FineTuningJob
from core.settings import Settings
from core.usage import record_training_usage, set_budget
from tests.support.datasets import chat_jsonl
from tests.support.http_server import fake_vllm, serve, usage_of
from tests.support.keys import make_key
from tests.support.tenants import auth

DAY = 86400
PRICES = {
    "price_per_million_trained_tokens": 2.0,
    "price_per_gpu_hour": {"H200": 3.6, "cpu": 0.36},
    "price_per_million_input_tokens": 1.0,
    "price_per_million_output_tokens": 4.0,
}


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """The API tests' SQLite / PostgreSQL settings, with prices and demo-tiny registered (no training here)."""
    settings = settings.model_copy(update=PRICES)
    register_model(settings, "demo-tiny", tmp_path / "demo-tiny")
    return settings


@pytest.fixture
def vllm_url(engine: Engine) -> Iterator[str]:
    """A stand-in vLLM for demo-tiny, registered as its replica."""
    with serve(fake_vllm()) as url:
        with session_scope(engine) as session:
            upsert_replica(session, base_model="demo-tiny", url=url, adapter_dir="/tmp/unused", max_adapters=2,
                           max_lora_rank=16, source=FROM_CLI)  # fmt: skip
        yield url


def _job(client: TestClient, key: str, **extra: Any) -> str:
    upload = client.post(
        "/v1/files",
        headers=auth(key),
        data={"purpose": "fine-tune"},
        files={"file": ("t.jsonl", chat_jsonl(12))},
    )
    assert upload.status_code == 200, upload.text
    job = client.post(
        "/v1/fine_tuning/jobs",
        headers=auth(key),
        json={"model": "demo-tiny", "training_file": upload.json()["id"], **extra},
    )
    assert job.status_code == 200, job.text
    return str(job.json()["id"])


def _attempt(engine: Engine, settings: Settings, job_id: str, attempt: int, gpu_class: str, tokens: int,
             seconds: float) -> None:  # fmt: skip
    """What the worker records as an attempt of `job_id` ends."""
    with session_scope(engine) as session:
        job = session.get(FineTuningJob, _seq(engine, job_id))
        assert job is not None
        record_training_usage(
            session, settings, organization_id=job.organization_id, job_id=job_id, attempt=attempt,
            model=job.model, gpu_class=gpu_class, trained_tokens=tokens, gpu_seconds=seconds,
        )  # fmt: skip


def _seq(engine: Engine, job_id: str) -> int:
    from sqlmodel import Session, select

    with Session(engine) as session:
        seq = session.exec(select(FineTuningJob.seq).where(FineTuningJob.id == job_id)).one()
    assert seq is not None
    return seq


def _chat(client: TestClient, key: str, *, stream: bool = False, include_usage: bool = False,
          max_tokens: int = 3, words: str = "hello there") -> dict[str, int]:  # fmt: skip
    """One chat through the proxy; returns the usage vLLM reported for it."""
    body: dict[str, Any] = {"model": "demo-tiny", "messages": [{"role": "user", "content": words}],
                            "max_tokens": max_tokens}  # fmt: skip
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    response = client.post("/v1/chat/completions", headers=auth(key), json=body)
    assert response.status_code == 200, response.text
    if stream:
        events = [e.removeprefix("data: ") for e in response.text.split("\n\n") if e.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        usage_chunks = [c for c in chunks if c.get("usage")]
        # The usage chunk the proxy asked vLLM for reaches the client only when the client asked for it too.
        assert len(usage_chunks) == (1 if include_usage else 0)
        assert all("usage" not in c for c in chunks if not include_usage)
    return usage_of(body)


def _usage(
    client: TestClient, key: str, path: str = "/v1/organization/usage", **params: Any
) -> dict[str, Any]:
    response = client.get(path, headers=auth(key), params={"start_time": _today() - DAY, **params})
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    assert page["object"] == "page" and all(b["object"] == "bucket" for b in page["data"])
    return page


def _today() -> int:
    return int(time.time()) // DAY * DAY


def _results(page: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [
        r for b in page["data"] for r in b["results"] if r["object"] == f"organization.usage.{kind}.result"
    ]


def test_two_orgs_usage_buckets_add_up_to_their_jobs_and_chats(
    client: TestClient, settings: Settings, engine: Engine, vllm_url: str
) -> None:
    keys = {org: make_key(settings, org) for org in ("usage-a", "usage-b")}
    # Org A: two jobs, one of them paused and resumed on another class; org B: one job.
    plan = {
        "usage-a": [
            [(1, "NVIDIA H200", 1200, 30.5)],
            [(1, "NVIDIA H200", 700, 10.25), (2, "cpu", 300, 99.0)],
        ],
        "usage-b": [[(1, "cpu", 555, 42.0)]],
    }
    jobs: dict[str, dict[str, int]] = {}
    for org, job_plans in plan.items():
        jobs[org] = {}
        for attempts in job_plans:
            job_id = _job(client, keys[org])
            for attempt, gpu_class, tokens, seconds in attempts:
                _attempt(engine, settings, job_id, attempt, gpu_class, tokens, seconds)
            _attempt(
                engine, settings, job_id, attempts[-1][0], attempts[-1][1], attempts[-1][2], attempts[-1][3]
            )
            jobs[org][job_id] = sum(a[2] for a in attempts)  # recording an attempt again replaced its row
    chats = {
        "usage-a": [_chat(client, keys["usage-a"]), _chat(client, keys["usage-a"], max_tokens=7, words="a b c d"),
                    _chat(client, keys["usage-a"], stream=True, max_tokens=4)],
        "usage-b": [_chat(client, keys["usage-b"], stream=True, include_usage=True, max_tokens=2)],
    }  # fmt: skip

    for org, key in keys.items():
        page = _usage(client, key)
        assert [b["end_time"] - b["start_time"] for b in page["data"]] == [DAY, DAY]  # yesterday and today
        assert page["data"][0]["results"] == [] and not page["has_more"]
        tuning = _results(page, "fine_tuning")
        assert sum(r["trained_tokens"] for r in tuning) == sum(jobs[org].values())
        assert sum(r["num_attempts"] for r in tuning) == sum(len(a) for a in plan[org])
        expected_seconds: dict[str, float] = {}
        for attempts in plan[org]:
            for _n, gpu_class, _t, seconds in attempts:
                expected_seconds[gpu_class] = expected_seconds.get(gpu_class, 0.0) + seconds
        assert {r["gpu_class"]: r["gpu_seconds"] for r in tuning} == expected_seconds
        # Cost: trained tokens x 2/M, plus GPU time at 3.6/h (H200) or 0.36/h (cpu).
        expected_cost = sum(
            t * 2.0 / 1e6 + s * (3.6 if "H200" in c else 0.36) / 3600 for a in plan[org] for _n, c, t, s in a
        )
        assert sum(r["cost"]["value"] for r in tuning) == pytest.approx(expected_cost, abs=1e-6)
        assert {r["cost"]["currency"] for r in tuning} == {"USD"}

        by_job = _results(_usage(client, key, group_by="job_id"), "fine_tuning")
        per_job: dict[str, int] = {}
        for result in by_job:
            per_job[result["job_id"]] = per_job.get(result["job_id"], 0) + result["trained_tokens"]
        assert per_job == jobs[org]

        completions = _results(page, "completions")
        assert len(completions) == 1
        assert completions[0]["input_tokens"] == sum(c["prompt_tokens"] for c in chats[org])
        assert completions[0]["output_tokens"] == sum(c["completion_tokens"] for c in chats[org])
        assert completions[0]["num_model_requests"] == len(chats[org])
        assert completions[0]["cost"]["value"] == pytest.approx(
            sum(c["prompt_tokens"] * 1.0 / 1e6 + c["completion_tokens"] * 4.0 / 1e6 for c in chats[org])
        )
        only = _usage(client, key, "/v1/organization/usage/completions", group_by="model,api_key_id")
        assert _results(only, "fine_tuning") == []
        assert [(r["model"], r["api_key_id"] is not None) for r in _results(only, "completions")] == [
            ("demo-tiny", True)
        ]


def test_usage_pages_and_refuses_bad_parameters_naming_them(client: TestClient, settings: Settings) -> None:
    key = make_key(settings, "usage-params")
    start = _today() - 9 * DAY
    first = client.get(
        "/v1/organization/usage", headers=auth(key), params={"start_time": start, "limit": 4}
    ).json()
    assert [b["start_time"] for b in first["data"]] == [start + i * DAY for i in range(4)]
    assert first["has_more"] and first["next_page"]
    second = client.get(
        "/v1/organization/usage",
        headers=auth(key),
        params={"start_time": start, "limit": 31, "page": first["next_page"]},
    ).json()
    assert second["data"][0]["start_time"] == start + 4 * DAY and not second["has_more"]
    assert second["data"][-1]["end_time"] == _today() + DAY
    hourly = client.get(
        "/v1/organization/usage",
        headers=auth(key),
        params={"start_time": _today() + 1800, "end_time": _today() + 7200, "bucket_width": "1h"},
    ).json()
    assert [(b["start_time"], b["end_time"]) for b in hourly["data"]] == [
        (_today() + 1800, _today() + 3600), (_today() + 3600, _today() + 7200)
    ]  # fmt: skip

    for params, param in [
        ({}, "start_time"),
        ({"start_time": "yesterday"}, "start_time"),
        ({"start_time": 100, "end_time": 50}, "end_time"),
        ({"start_time": 100, "bucket_width": "1w"}, "bucket_width"),
        ({"start_time": 100, "limit": 32}, "limit"),
        ({"start_time": 100, "bucket_width": "1h", "limit": 0}, "limit"),
        ({"start_time": 100, "group_by": "project_id"}, "group_by"),
        ({"start_time": 100, "page": "1"}, "page"),
    ]:
        response = client.get("/v1/organization/usage", headers=auth(key), params=params)
        assert response.status_code == 400, (params, response.text)
        error = response.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error", (params, error)


def test_an_org_over_its_monthly_budget_gets_429_insufficient_quota(
    client: TestClient, settings: Settings, engine: Engine
) -> None:
    key = make_key(settings, "budget-a")
    other = make_key(settings, "budget-b")
    job_id = _job(client, key)
    _attempt(engine, settings, job_id, 1, "cpu", 10_000, 0.0)  # 0.02 USD of trained tokens
    with session_scope(engine) as session:
        org = get_or_create_org(session, name="budget-a")
        set_budget(session, organization_id=org.id, monthly_cost=0.05, monthly_trained_tokens=None)
    training_file = client.get(f"/v1/fine_tuning/jobs/{_job(client, key)}", headers=auth(key)).json()[
        "training_file"
    ]
    with session_scope(engine) as session:  # under budget until now
        set_budget(session, organization_id=org.id, monthly_cost=0.02, monthly_trained_tokens=None)
    body = {"model": "demo-tiny", "training_file": training_file}
    refused = client.post("/v1/fine_tuning/jobs", headers=auth(key), json=body)
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert "0.02 USD this month" in error["message"] and refused.headers["x-should-retry"] == "false"
    with session_scope(engine) as session:
        set_budget(session, organization_id=org.id, monthly_cost=None, monthly_trained_tokens=10_000)
    assert client.post("/v1/fine_tuning/jobs", headers=auth(key), json=body).json()["error"]["code"] == (
        "insufficient_quota"
    )
    _job(client, other)  # another organization's budget is its own


def test_scoped_keys_an_inference_only_key_chats_but_cannot_create_a_job(
    client: TestClient, settings: Settings, vllm_url: str
) -> None:
    admin = make_key(settings, "scopes")
    made = {}
    for scopes in (["inference"], ["fine_tune"]):
        response = client.post("/v1/organization/api_keys", headers=auth(admin), json={"scopes": scopes})
        assert response.status_code == 200, response.text
        made[scopes[0]] = response.json()["value"]
    inference, fine_tune = made["inference"], made["fine_tune"]
    training = client.post(
        "/v1/files",
        headers=auth(admin),
        data={"purpose": "fine-tune"},
        files={"file": ("t.jsonl", chat_jsonl(12))},
    ).json()["id"]

    refused = client.post(
        "/v1/fine_tuning/jobs",
        headers=auth(inference),
        json={"model": "demo-tiny", "training_file": training},
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "insufficient_permissions"
    assert "'fine_tune' scope" in refused.json()["error"]["message"]
    for method, path in [("GET", "/v1/files"), ("GET", "/v1/organization/usage?start_time=0"),
                         ("GET", "/v1/organization/api_keys"), ("POST", "/v1/fine_tuning/estimates")]:  # fmt: skip
        assert client.request(method, path, headers=auth(inference), json={}).status_code == 403, path
    assert client.get("/v1/models", headers=auth(inference)).status_code == 200
    _chat(client, inference)

    assert (
        client.post(
            "/v1/fine_tuning/jobs",
            headers=auth(fine_tune),
            json={"model": "demo-tiny", "training_file": training},
        ).status_code
        == 200
    )
    no_chat = client.post(
        "/v1/chat/completions", headers=auth(fine_tune), json={"model": "demo-tiny", "messages": [{"role": "user", "content": "x"}]}
    )  # fmt: skip
    assert no_chat.status_code == 403 and no_chat.json()["error"]["code"] == "insufficient_permissions"
    assert client.get("/v1/organization/audit_logs", headers=auth(fine_tune)).status_code == 403


def test_a_key_over_its_inference_token_quota_gets_429(
    client: TestClient, settings: Settings, vllm_url: str
) -> None:
    admin = make_key(settings, "quota")
    created = client.post(
        "/v1/organization/api_keys",
        headers=auth(admin),
        json={"name": "capped", "scopes": ["inference"], "inference_token_quota": 12},
    ).json()
    assert created["inference_token_quota"] == 12 and created["scopes"] == ["inference"]
    key = created["value"]
    spent = _chat(client, key, max_tokens=5, words="one two")  # 7 tokens: under the quota
    spent2 = _chat(client, key, stream=True, max_tokens=5, words="one two")  # 14 tokens: now over it
    assert spent["total_tokens"] + spent2["total_tokens"] == 14
    time.sleep(1.05)  # past the proxy's 1 s authentication cache, which holds the key's quota too
    over = client.post(
        "/v1/chat/completions", headers=auth(key), json={"model": "demo-tiny", "messages": [{"role": "user", "content": "x"}]}
    )  # fmt: skip
    assert over.status_code == 429, over.text
    assert over.json()["error"]["type"] == over.json()["error"]["code"] == "insufficient_quota"
    assert "14 inference tokens this month, its quota is 12" in over.json()["error"]["message"]
    _chat(client, admin)  # the organization's other keys are not limited by it


def test_an_admin_lists_creates_and_revokes_keys_and_reads_the_audit_log(
    client: TestClient, settings: Settings
) -> None:
    admin = make_key(settings, "keys-a")
    other_admin = make_key(settings, "keys-b")
    created = client.post("/v1/organization/api_keys", headers=auth(admin), json={"name": "ci"})
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["object"] == "organization.api_key" and body["value"].startswith("ftsk-")
    assert body["scopes"] == ["fine_tune", "inference"] and body["redacted_value"].endswith("…")
    listed = client.get("/v1/organization/api_keys", headers=auth(admin)).json()
    assert [k["name"] for k in listed["data"]] == [None, "ci"] and all(
        "value" not in k for k in listed["data"]
    )
    assert listed["data"][0]["scopes"] == ["admin"]  # made by the server CLI: every scope
    assert (
        client.get("/v1/organization/api_keys", headers=auth(other_admin)).json()["data"][0]["id"]
        != body["id"]
    )
    # Another organization's key is "not found", and so is one already revoked.
    assert (
        client.delete(f"/v1/organization/api_keys/{body['id']}", headers=auth(other_admin)).status_code == 404
    )
    job_id = _job(client, body["value"])
    client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=auth(body["value"]))
    deleted = client.delete(f"/v1/organization/api_keys/{body['id']}", headers=auth(admin))
    assert deleted.json() == {"object": "organization.api_key.deleted", "id": body["id"], "deleted": True}
    assert client.get("/v1/models", headers=auth(body["value"])).status_code == 401
    assert client.delete(f"/v1/organization/api_keys/{body['id']}", headers=auth(admin)).status_code == 404
    for bad in (
        {"scopes": ["root"]},
        {"scopes": []},
        {"inference_token_quota": 0},
        {"name": ""},
        {"owner": "x"},
    ):
        response = client.post("/v1/organization/api_keys", headers=auth(admin), json=bad)
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["error"]["param"].startswith(next(iter(bad))), response.json()

    logs = client.get("/v1/organization/audit_logs", headers=auth(admin)).json()
    types = [entry["type"] for entry in logs["data"]]
    assert types == ["api_key.deleted", "fine_tuning.job.cancelled", "fine_tuning.job.created", "file.created",
                     "api_key.created"]  # fmt: skip
    created_entry = logs["data"][-1]
    assert created_entry["api_key.created"] == {
        "id": body["id"], "data": {"name": "ci", "scopes": ["fine_tune", "inference"], "inference_token_quota": None}
    }  # fmt: skip
    assert created_entry["actor"] == {
        "type": "api_key",
        "api_key": {"id": listed["data"][0]["id"], "type": "organization"},
    }
    assert logs["data"][1]["actor"]["api_key"]["id"] == body["id"]  # the job was cancelled with the new key
    only = client.get(
        "/v1/organization/audit_logs", headers=auth(admin), params={"event_types[]": "api_key.deleted"}
    )
    assert [e["type"] for e in only.json()["data"]] == ["api_key.deleted"]
    assert client.get("/v1/organization/audit_logs", headers=auth(other_admin)).json()["data"] == []
    bad = client.get("/v1/organization/audit_logs", headers=auth(admin), params={"event_types[]": "nope"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "event_types[]"


def test_caps_are_job_fields_and_a_capped_pause_resumes_only_with_a_higher_cap(
    client: TestClient, settings: Settings, engine: Engine
) -> None:
    key = make_key(settings, "caps")
    job_id = _job(client, key, max_trained_tokens=1000, max_cost=5.0)
    job = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=auth(key)).json()
    assert (job["max_trained_tokens"], job["max_cost"]) == (1000, 5.0)
    for bad, param in [({"max_trained_tokens": 0}, "max_trained_tokens"), ({"max_cost": -1}, "max_cost"),
                       ({"max_cost": "lots"}, "max_cost"), ({"max_trained_tokens": 1.5}, "max_trained_tokens")]:  # fmt: skip
        response = client.post(
            "/v1/fine_tuning/jobs",
            headers=auth(key),
            json={"model": "demo-tiny", "training_file": "f", **bad},
        )
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text

    # As the worker leaves it at the cap: paused, with the attempt's usage recorded.
    with session_scope(engine) as session:
        assert jobs.transition(session, job_id=job_id, from_status=[jobs.VALIDATING], to_status=jobs.PAUSED)
    _attempt(engine, settings, job_id, 1, "cpu", 1004, 1.0)
    refused = client.post(f"/v1/fine_tuning/jobs/{job_id}/resume", headers=auth(key))
    assert refused.status_code == 400, refused.text
    assert (refused.json()["error"]["param"], refused.json()["error"]["code"]) == (
        "max_trained_tokens",
        "cap_reached",
    )
    too_low = client.post(
        f"/v1/fine_tuning/jobs/{job_id}/resume", headers=auth(key), json={"max_trained_tokens": 1004}
    )
    assert too_low.status_code == 400
    resumed = client.post(
        f"/v1/fine_tuning/jobs/{job_id}/resume", headers=auth(key), json={"max_trained_tokens": 5000}
    )
    assert resumed.status_code == 200, resumed.text
    assert (resumed.json()["status"], resumed.json()["max_trained_tokens"], resumed.json()["max_cost"]) == (
        "queued", 5000, 5.0
    )  # fmt: skip
    client.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=auth(key))
    cleared = client.post(f"/v1/fine_tuning/jobs/{job_id}/resume", headers=auth(key), json={"max_cost": None})
    assert cleared.json()["max_cost"] is None and cleared.json()["max_trained_tokens"] == 5000
    logs = client.get(
        "/v1/organization/audit_logs", headers=auth(key), params={"event_types[]": "fine_tuning.job.resumed"}
    ).json()["data"]
    assert [e["fine_tuning.job.resumed"].get("data") for e in logs] == [
        {"max_cost": None},
        {"max_trained_tokens": 5000},
    ]
