"""Files API behaviour through the ASGI app (real SQLite, real local storage)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fastapi.testclient import TestClient

from core.model_registry import register_model
from core.settings import Settings
from core.token_counts import count_file_tokens
from tests.support.datasets import chat_jsonl, preference_jsonl, prompt_completion_jsonl


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _upload(client: TestClient, key: str, data: bytes, name: str = "train.jsonl", purpose: str = "fine-tune"):
    return client.post(
        "/v1/files", headers=_auth(key), data={"purpose": purpose}, files={"file": (name, data)}
    )


def test_upload_returns_processed_file_object(client: TestClient, org_a_key: str) -> None:
    data = chat_jsonl(12)
    resp = _upload(client, org_a_key, data)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["id"].startswith("file-")
    assert body["object"] == "file"
    assert body["bytes"] == len(data)
    assert body["filename"] == "train.jsonl"
    assert body["purpose"] == "fine-tune"
    assert body["status"] == "processed"
    assert body["data_format"] == "chat"
    assert body["example_count"] == 12
    assert isinstance(body["created_at"], int)
    assert resp.headers["x-request-id"].startswith("req_")

    content = client.get(f"/v1/files/{body['id']}/content", headers=_auth(org_a_key))
    assert content.status_code == 200
    assert hashlib.sha256(content.content).hexdigest() == hashlib.sha256(data).hexdigest()


def test_each_format_is_detected(client: TestClient, org_a_key: str) -> None:
    for data, fmt in [
        (prompt_completion_jsonl(), "prompt_completion"),
        (preference_jsonl(), "preference"),
    ]:
        resp = _upload(client, org_a_key, data)
        assert resp.status_code == 200, resp.text
        assert resp.json()["data_format"] == fmt


def test_list_pages_with_after_limit_order_and_purpose(client: TestClient, org_a_key: str) -> None:
    ids = [_upload(client, org_a_key, chat_jsonl(10), name=f"f{i}.jsonl").json()["id"] for i in range(5)]
    first = client.get("/v1/files", params={"limit": 2}, headers=_auth(org_a_key)).json()
    assert [f["id"] for f in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True and first["first_id"] == ids[4] and first["last_id"] == ids[3]
    second = client.get(
        "/v1/files", params={"limit": 2, "after": first["last_id"]}, headers=_auth(org_a_key)
    ).json()
    assert [f["id"] for f in second["data"]] == ids[::-1][2:4]
    asc = client.get("/v1/files", params={"order": "asc"}, headers=_auth(org_a_key)).json()
    assert [f["id"] for f in asc["data"]] == ids and asc["has_more"] is False
    none = client.get("/v1/files", params={"purpose": "batch"}, headers=_auth(org_a_key)).json()
    assert none["data"] == [] and none["first_id"] is None


def test_bad_list_params_are_400(client: TestClient, org_a_key: str) -> None:
    for params, param in [
        ({"limit": 0}, "limit"),
        ({"order": "sideways"}, "order"),
        ({"after": "file-nope"}, "after"),
    ]:
        resp = client.get("/v1/files", params=params, headers=_auth(org_a_key))
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == param


def test_delete_hides_file_and_removes_content(client: TestClient, org_a_key: str) -> None:
    file_id = _upload(client, org_a_key, chat_jsonl()).json()["id"]
    resp = client.delete(f"/v1/files/{file_id}", headers=_auth(org_a_key))
    assert resp.json() == {"id": file_id, "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{file_id}", headers=_auth(org_a_key)).status_code == 404
    assert client.get(f"/v1/files/{file_id}/content", headers=_auth(org_a_key)).status_code == 404
    assert client.delete(f"/v1/files/{file_id}", headers=_auth(org_a_key)).status_code == 404


def test_missing_or_bad_key_is_401_with_envelope(client: TestClient, org_a_key: str) -> None:
    for headers in [{}, {"Authorization": "Bearer ftsk-wrong"}, {"Authorization": "Basic abc"}]:
        resp = client.get("/v1/files", headers=headers)
        assert resp.status_code == 401
        error = resp.json()["error"]
        assert set(error) >= {"message", "type", "param", "code"}
        assert resp.headers["x-request-id"]


def test_every_files_route_hides_other_orgs_objects(
    client: TestClient, org_a_key: str, org_b_key: str
) -> None:
    file_id = _upload(client, org_a_key, chat_jsonl()).json()["id"]
    routes = [
        ("GET", f"/v1/files/{file_id}"),
        ("GET", f"/v1/files/{file_id}/content"),
        ("GET", f"/v1/files/{file_id}/validation"),
        ("DELETE", f"/v1/files/{file_id}"),
    ]
    for method, path in routes:
        resp = client.request(method, path, headers=_auth(org_b_key))
        assert resp.status_code == 404, (method, path, resp.text)
        assert file_id in resp.json()["error"]["message"]
        assert "train.jsonl" not in resp.text
    listing = client.get("/v1/files", headers=_auth(org_b_key)).json()
    assert listing["data"] == []
    # Paging with another org's id as the cursor must not reveal that it exists.
    assert client.get("/v1/files", params={"after": file_id}, headers=_auth(org_b_key)).status_code == 400
    # And the owner still has it.
    assert client.get(f"/v1/files/{file_id}", headers=_auth(org_a_key)).status_code == 200


def test_expires_after_sets_expires_at(client: TestClient, org_a_key: str) -> None:
    resp = client.post(
        "/v1/files",
        headers=_auth(org_a_key),
        data={
            "purpose": "fine-tune",
            "expires_after[anchor]": "created_at",
            "expires_after[seconds]": "3600",
        },
        files={"file": ("t.jsonl", chat_jsonl())},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["expires_at"] - body["created_at"] in (3599, 3600, 3601)


def test_unknown_route_and_method_use_envelope(client: TestClient, org_a_key: str) -> None:
    resp = client.get("/v1/nothing-here", headers=_auth(org_a_key))
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "unknown_url"
    resp = client.put("/v1/files", headers=_auth(org_a_key))
    assert resp.status_code == 405 and "error" in resp.json()


def test_validation_report_counts_tokens_with_a_base_models_tokenizer(
    client: TestClient, org_a_key: str, settings: Settings, demo_model_dir: Path, tmp_path: Path
) -> None:
    """?model= adds the file's tokens as a job on that model would tokenise them (core.token_counts, itself
    checked against the worker), against its context length or the given max_seq_length."""
    register_model(settings, "demo-tiny", demo_model_dir)
    for data, fmt in [(chat_jsonl(12), "chat"), (preference_jsonl(), "preference")]:
        file_id = _upload(client, org_a_key, data).json()["id"]
        url = f"/v1/files/{file_id}/validation"
        assert client.get(url, headers=_auth(org_a_key)).json()["tokens"] is None  # not asked for
        local = tmp_path / f"{fmt}.jsonl"
        local.write_bytes(data)
        context = json.loads((demo_model_dir / "config.json").read_text())["max_position_embeddings"]

        resp = client.get(url, params={"model": "demo-tiny"}, headers=_auth(org_a_key))
        assert resp.status_code == 200, resp.text
        expected = count_file_tokens(local, fmt, demo_model_dir, max_seq_length=context).as_dict()
        assert resp.json()["tokens"] == {"model": "demo-tiny", **expected}
        assert expected["examples"] == 12 and expected["over_limit"] == 0

        limit = expected["longest_example_tokens"] - 1
        resp = client.get(
            url, params={"model": "demo-tiny", "max_seq_length": limit}, headers=_auth(org_a_key)
        )
        assert resp.status_code == 200, resp.text
        tokens = resp.json()["tokens"]
        assert tokens == {
            "model": "demo-tiny",
            **count_file_tokens(local, fmt, demo_model_dir, max_seq_length=limit).as_dict(),
        }
        assert tokens["max_seq_length"] == limit and tokens["over_limit"] >= 1
        assert tokens["longest_example_line"] in tokens["over_limit_lines"]


def test_validation_report_token_errors_are_400_envelopes(
    client: TestClient, org_a_key: str, settings: Settings, demo_model_dir: Path, tmp_path: Path
) -> None:
    register_model(settings, "demo-tiny", demo_model_dir)
    (tmp_path / "no-tokenizer").mkdir()
    register_model(
        settings, "weights-elsewhere", tmp_path / "no-tokenizer"
    )  # a control plane without the files
    file_id = _upload(client, org_a_key, chat_jsonl(12)).json()["id"]
    url = f"/v1/files/{file_id}/validation"

    def error(params: dict[str, object]) -> dict[str, object]:
        resp = client.get(url, params=params, headers=_auth(org_a_key))
        assert resp.status_code == 400, resp.text
        return dict(resp.json()["error"])

    unknown = error({"model": "no-such-model"})
    assert (unknown["param"], unknown["code"], unknown["type"]) == (
        "model",
        "model_not_found",
        "invalid_request_error",
    )
    assert "demo-tiny" in str(unknown["message"])  # the base models it could have been
    missing = error({"model": "weights-elsewhere"})
    assert (missing["param"], missing["code"]) == ("model", "tokenizer_unavailable")
    assert str(tmp_path) not in str(missing["message"])  # no server path in the answer
    assert error({"max_seq_length": 100})["param"] == "max_seq_length"  # a limit needs a model
    assert "max_seq_length" in str(error({"model": "demo-tiny", "max_seq_length": 0})["param"])

    # A template that refuses the file: the job would fail the same way, so the count does too.
    register_model(
        settings, "refuses", demo_model_dir, chat_template="{{ raise_exception('no chats here') }}"
    )
    refused = error({"model": "refuses"})
    assert (refused["param"], refused["code"]) == ("file_id", "untokenizable_file")
    assert "line 1: the chat template refused" in str(refused["message"]) and "no chats here" in str(
        refused["message"]
    )

    # A file that failed validation kept no content: there is nothing to count.
    bad = _upload(client, org_a_key, b'{"messages": []}\n')
    assert bad.status_code == 400
    bad_id = bad.json()["error"]["file_id"]
    resp = client.get(
        f"/v1/files/{bad_id}/validation", params={"model": "demo-tiny"}, headers=_auth(org_a_key)
    )
    assert resp.status_code == 200 and resp.json()["status"] == "error" and resp.json()["tokens"] is None
