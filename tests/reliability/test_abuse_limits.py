"""Abuse limits: the per-key rate limit (in-process, and shared through a real Redis by two API apps),
per-org quotas on files, storage bytes and unfinished jobs, and the body and inference limits."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from api.main import create_app
from core.model_registry import register_model
from core.redis_embedded import EmbeddedRedis, free_port
from core.settings import Settings
from tests.support.datasets import chat_jsonl
from tests.support.keys import make_key
from tests.support.tenants import auth


def _client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings))


def _upload(client: TestClient, key: str, data: bytes) -> object:
    return client.post(
        "/v1/files", headers=auth(key), data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", data)}
    )


def assert_rate_limited(resp: object) -> None:
    assert resp.status_code == 429, resp.text  # type: ignore[attr-defined]
    headers = resp.headers  # type: ignore[attr-defined]
    error = resp.json()["error"]  # type: ignore[attr-defined]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-limit-requests"] == "1"  # per minute: no refill during a test
    assert headers["x-request-id"]


def test_rate_limit_per_key_in_process(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", rate_limit_requests_per_minute=1, rate_limit_burst=3)
    with _client(settings) as client:
        key_a, key_b = make_key(settings, "rl-a"), make_key(settings, "rl-b")
        answers = [client.get("/v1/files", headers=auth(key_a)) for _ in range(3)]
        assert [r.status_code for r in answers] == [200, 200, 200]
        assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["2", "1", "0"]
        assert answers[0].headers["x-ratelimit-reset-requests"].endswith("s")
        assert_rate_limited(client.get("/v1/files", headers=auth(key_a)))
        # Another key has its own bucket; an unknown key is limited too (no free guessing).
        assert client.get("/v1/files", headers=auth(key_b)).status_code == 200
        guesses = [client.get("/v1/files", headers=auth("ftsk-guess")).status_code for _ in range(4)]
        assert guesses == [401, 401, 401, 429]
        # Health probes and the dashboard are not limited.
        assert client.get("/healthz").status_code == 200


def test_rate_limit_is_shared_by_api_processes_through_redis(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    """Two apps (as two API processes would) on one Redis draw from one bucket per key."""
    settings = Settings(
        data_dir=tmp_path / "data",
        redis_url=redis_server.url,
        rate_limit_requests_per_minute=1,
        rate_limit_burst=4,
    )
    with _client(settings) as first, _client(settings) as second:
        key = make_key(settings, "rl-shared")
        codes = [
            app.get("/v1/files", headers=auth(key)).status_code for app in (first, second, first, second)
        ]
        assert codes == [200, 200, 200, 200]
        assert_rate_limited(second.get("/v1/files", headers=auth(key)))
        assert_rate_limited(first.get("/v1/files", headers=auth(key)))


def test_rate_limit_fails_open_when_redis_is_down(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        rate_limit_requests_per_minute=1,
        rate_limit_burst=1,
    )
    with _client(settings) as client:
        key = make_key(settings, "rl-down")
        assert [client.get("/v1/files", headers=auth(key)).status_code for _ in range(3)] == [200, 200, 200]


def assert_quota(resp: object, param: str | None) -> None:
    assert resp.status_code == 429, resp.text  # type: ignore[attr-defined]
    error = resp.json()["error"]  # type: ignore[attr-defined]
    assert error["code"] == "quota_exceeded" and error["type"] == "insufficient_quota"
    assert error["param"] == param
    assert resp.headers["x-should-retry"] == "false"  # type: ignore[attr-defined]


def test_file_count_and_storage_quotas(tmp_path: Path) -> None:
    data = chat_jsonl(12)
    settings = Settings(
        data_dir=tmp_path / "data", org_max_files=2, org_max_storage_bytes=int(len(data) * 2.5)
    )
    with _client(settings) as client:
        key, other = make_key(settings, "q-files"), make_key(settings, "q-other")
        first = _upload(client, key, data)
        assert first.status_code == 200, first.text
        assert _upload(client, key, data).status_code == 200
        assert_quota(_upload(client, key, data), "file")
        assert _upload(client, other, data).status_code == 200  # per organization
        # Deleting frees the slot; the storage quota then stops an upload that would pass it, mid-stream.
        assert client.delete(f"/v1/files/{first.json()['id']}", headers=auth(key)).status_code == 200
        assert_quota(_upload(client, key, data + data), "file")
        assert _upload(client, key, data).status_code == 200
        listed = client.get("/v1/files", headers=auth(key)).json()["data"]
        assert len(listed) == 2  # the refused uploads left nothing behind


def test_active_jobs_quota(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", org_max_active_jobs=1)
    register_model(settings, "demo-tiny", tmp_path / "demo-tiny")
    with _client(settings) as client:
        key = make_key(settings, "q-jobs")
        file_id = _upload(client, key, chat_jsonl(12)).json()["id"]  # type: ignore[attr-defined]
        body = {"model": "demo-tiny", "training_file": file_id}
        job = client.post("/v1/fine_tuning/jobs", headers=auth(key), json=body)
        assert job.status_code == 200, job.text
        assert_quota(client.post("/v1/fine_tuning/jobs", headers=auth(key), json=body), None)
        assert (
            client.post(f"/v1/fine_tuning/jobs/{job.json()['id']}/cancel", headers=auth(key)).status_code
            == 200
        )
        assert client.post("/v1/fine_tuning/jobs", headers=auth(key), json=body).status_code == 200


def test_body_and_inference_limits(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        max_upload_bytes=1000,
        inference_max_request_bytes=2000,
        inference_max_tokens=64,
    )
    register_model(settings, "demo-tiny", tmp_path / "demo-tiny")
    with _client(settings) as client:
        key = make_key(settings, "limits")
        too_big = _upload(client, key, chat_jsonl(40))
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "payload_too_large"
        assert client.get("/v1/files", headers=auth(key)).json()["data"] == []
        messages = [{"role": "user", "content": "x" * 3000}]
        prompt = client.post(
            "/v1/chat/completions", headers=auth(key), json={"model": "demo-tiny", "messages": messages}
        )
        assert prompt.status_code == 413, prompt.text
        small = [{"role": "user", "content": "hi"}]
        tokens = client.post(
            "/v1/chat/completions",
            headers=auth(key),
            json={"model": "demo-tiny", "messages": small, "max_tokens": 65},
        )
        assert tokens.status_code == 400 and tokens.json()["error"]["param"] == "max_tokens", tokens.text
        completion = client.post(
            "/v1/completions", headers=auth(key), json={"model": "demo-tiny", "prompt": "p" * 3000}
        )
        assert completion.status_code == 413, completion.text
