"""The inference routes before and around vLLM: bad requests get a 4xx naming the field, unknown and other
organizations' models a 404, models without a reachable server a 503, unservable adapters a 400 and a job
event. (Answers from a real vLLM: tests/contract/test_inference_openai_sdk.py and test_placement_vllm.py.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from core.db import session_scope
from core.inference.replicas import FROM_CLI, upsert_replica
from core.model_registry import register_model
from core.models import JobEvent, ServedAdapter
from core.redis_embedded import free_port
from core.settings import Settings
from tests.support.adapters import make_adapter, make_base

CHAT = {"model": "demo-tiny", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    from api.main import create_app

    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def key(make_key_for: Callable[[str], tuple[str, str]]) -> str:
    return make_key_for("org-a")[0]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    """One app for the many request-checking cases (they change nothing)."""
    from api.main import create_app
    from tests.support.keys import make_key

    settings = Settings(data_dir=tmp_path_factory.mktemp("proxy") / "data")
    with TestClient(create_app(settings)) as test_client:
        yield test_client, make_key(settings, "org-a")


def _post(
    client: TestClient, key: str, body: Any, path: str = "/v1/chat/completions"
) -> tuple[int, dict[str, Any]]:
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = client.post(path, headers={"authorization": f"Bearer {key}"}, **kwargs)
    return response.status_code, response.json()


def _replica(engine: Engine, base_model: str, *, max_lora_rank: int = 16, url: str | None = None) -> str:
    with session_scope(engine) as session:
        return upsert_replica(
            session, base_model=base_model, url=url or f"http://127.0.0.1:{free_port()}", adapter_dir="/tmp/x",
            max_adapters=2, max_lora_rank=max_lora_rank, source=FROM_CLI,
        ).url  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        (b"{", 400, None, "invalid_json"),
        (b"[1]", 400, None, "invalid_json"),
        ({"messages": CHAT["messages"]}, 400, "model", "missing_required_parameter"),
        ({"model": "demo-tiny"}, 400, "messages", "missing_required_parameter"),
        ({**CHAT, "messages": []}, 400, "messages", "invalid_value"),
        ({**CHAT, "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role", "invalid_value"),
        ({**CHAT, "messages": ["hi"]}, 400, "messages[0]", "invalid_value"),
        ({**CHAT, "temperature": 3}, 400, "temperature", "invalid_value"),
        ({**CHAT, "top_p": "high"}, 400, "top_p", "invalid_value"),
        ({**CHAT, "n": 0}, 400, "n", "invalid_value"),
        ({**CHAT, "n": 9}, 400, "n", "invalid_value"),
        ({**CHAT, "max_tokens": 0}, 400, "max_tokens", "invalid_value"),
        ({**CHAT, "max_tokens": 4097}, 400, "max_tokens", "invalid_value"),
        ({**CHAT, "max_completion_tokens": 10**6}, 400, "max_completion_tokens", "invalid_value"),
        ({**CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "invalid_value"),
        ({**CHAT, "stop": 7}, 400, "stop", "invalid_value"),
        ({**CHAT, "stream_options": {"include_usage": True}}, 400, "stream_options", None),
        ({**CHAT, "chat_template": "{{ evil }}"}, 400, "chat_template", "unknown_parameter"),
        ({**CHAT, "lora_request": {"lora_path": "/etc"}}, 400, "lora_request", "unknown_parameter"),
        ({**CHAT, "audio": {"voice": "x"}}, 400, "audio", None),
        ({**CHAT, "modalities": ["text", "audio"]}, 400, "modalities", None),
        ({**CHAT, "model": ""}, 400, "model", "invalid_value"),
        ({**CHAT, "model": "no-such-model"}, 404, "model", "model_not_found"),
        ({**CHAT, "model": "ft:demo-tiny:org-a::ftjob-nope"}, 404, "model", "model_not_found"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_field(
    shared: tuple[TestClient, str], body: Any, status: int, param: str | None, code: str | None
) -> None:
    got, payload = _post(*shared, body)
    assert got == status, payload
    assert payload["error"]["param"] == param and payload["error"]["code"] == code, payload
    assert payload["error"]["type"] == "invalid_request_error" and payload["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "demo-tiny"}, "prompt"),
        ({"model": "demo-tiny", "prompt": {"text": "x"}}, "prompt"),
        ({"model": "demo-tiny", "prompt": "x", "logprobs": 9}, "logprobs"),
        ({"model": "demo-tiny", "prompt": "x", "n": 3, "best_of": 2}, "best_of"),
        ({"model": "demo-tiny", "prompt": "x", "messages": []}, "messages"),
    ],
)
def test_bad_completion_requests(shared: tuple[TestClient, str], body: dict[str, Any], param: str) -> None:
    status, payload = _post(*shared, body, "/v1/completions")
    assert status == 400 and payload["error"]["param"] == param, payload


def test_a_body_over_the_limit_is_413(shared: tuple[TestClient, str]) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * Settings().inference_max_request_bytes}]}
    status, payload = _post(*shared, big)
    assert status == 413 and payload["error"]["param"] == "messages"


def test_no_key_is_401(shared: tuple[TestClient, str]) -> None:
    assert shared[0].post("/v1/chat/completions", json=CHAT).status_code == 401


def test_vllm_admin_routes_are_not_exposed(shared: tuple[TestClient, str]) -> None:
    client, key = shared
    headers = {"authorization": f"Bearer {key}"}
    for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/v1/lora_adapters"):
        response = client.post(path, headers=headers, json={"lora_name": "x", "lora_path": "/"})
        assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_url"


def test_a_base_model_without_a_server_is_503(
    client: TestClient, key: str, settings: Settings, tmp_path: Path
) -> None:
    register_model(settings, "demo-tiny", make_base(tmp_path / "base"))
    status, payload = _post(client, key, CHAT)
    assert status == 503 and payload["error"]["code"] == "service_unavailable"
    assert "No inference server serves the base model 'demo-tiny'" in payload["error"]["message"]


def test_an_unreachable_server_is_503_starting(client: TestClient, key: str, engine: Engine) -> None:
    _replica(engine, "demo-tiny")
    status, payload = _post(client, key, CHAT)
    assert status == 503 and "is starting; retry shortly" in payload["error"]["message"], payload


def test_other_orgs_and_deleted_models_are_404(
    client: TestClient,
    engine: Engine,
    tmp_path: Path,
    make_key_for: Callable[[str], tuple[str, str]],
    make_model: Callable[..., tuple[str, str]],
) -> None:
    key_a, org_a = make_key_for("org-a")
    key_b, _ = make_key_for("org-b")
    base = make_base(tmp_path / "base")
    model, _job = make_model(org_a, make_adapter(tmp_path / "ad", base), base_dir=base)
    _replica(engine, "demo-tiny")
    # Org a's model exists (its server is down: 503); for org b it does not exist.
    assert _post(client, key_a, {**CHAT, "model": model})[0] == 503
    status, payload = _post(client, key_b, {**CHAT, "model": model})
    assert status == 404 and payload["error"]["code"] == "model_not_found"
    assert _post(client, key_b, {**CHAT, "model": model + ":ckpt-step-1"})[0] == 404
    deleted = client.delete(f"/v1/models/{model}", headers={"authorization": f"Bearer {key_a}"})
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert _post(client, key_a, {**CHAT, "model": model})[0] == 404
    with Session(engine) as session:
        assert session.exec(select(ServedAdapter).where(ServedAdapter.id == model)).one().status == "deleted"


def test_an_unservable_adapter_gets_a_400_and_a_job_event(
    client: TestClient,
    engine: Engine,
    tmp_path: Path,
    make_key_for: Callable[[str], tuple[str, str]],
    make_model: Callable[..., tuple[str, str]],
) -> None:
    key, org = make_key_for("org-a")
    base = make_base(tmp_path / "base")
    # Trained elsewhere with rank 32; this replica takes 16.
    model, job_id = make_model(org, make_adapter(tmp_path / "ad", base, rank=32), base_dir=base)
    _replica(engine, "demo-tiny", max_lora_rank=16)
    for _ in range(2):
        status, payload = _post(client, key, {**CHAT, "model": model})
        assert status == 400 and payload["error"]["code"] == "model_not_servable", payload
        assert "LoRA rank 32 is greater than the servers' max_lora_rank 16" in payload["error"]["message"]
    with Session(engine) as session:
        events = session.exec(select(JobEvent).where(JobEvent.job_id == job_id)).all()
    rejected = [e for e in events if (e.data or {}).get("event") == "model.rejected"]
    assert len(rejected) == 1 and rejected[0].level == "error" and model in rejected[0].message


def test_job_creation_refuses_a_rank_vllm_would_refuse(
    client: TestClient, key: str, settings: Settings
) -> None:
    body = {
        "model": "demo-tiny",
        "training_file": "file-x",
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"lora_rank": 128}}},
    }
    response = client.post("/v1/fine_tuning/jobs", json=body, headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (
        error["param"] == "method.supervised.hyperparameters.lora_rank"
        and "max_lora_rank 64" in error["message"]
    )


def test_a_revoked_key_stops_working_within_a_second(
    client: TestClient, engine: Engine, make_key_for: Callable[[str], tuple[str, str]]
) -> None:
    import time

    from core.keys import hash_key, revoke_key
    from core.models import ApiKey

    key, _org = make_key_for("org-revoked")
    body = {**CHAT, "model": "no-such-model"}
    assert _post(client, key, body)[0] == 404  # authenticated (and remembered for up to 1 s)
    with session_scope(engine) as session:
        row = session.exec(select(ApiKey).where(ApiKey.key_hash == hash_key(key))).one()
        revoke_key(session, key_id=row.id)
    time.sleep(1.1)
    status, payload = _post(client, key, body)
    assert status == 401 and payload["error"]["code"] == "invalid_api_key"
