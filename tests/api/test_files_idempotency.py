"""Idempotency-Key on POST /v1/files, through the ASGI app on SQLite and PostgreSQL with real local storage: a
retry gets the first file back and keeps nothing (no second row, no second object, no temporary left), another
purpose or other bytes under the key are refused, keys are per organization, a refused upload leaves its key
free, two concurrent uploads with one key keep one file, and a deleted, expired or day-old file frees its key.
On S3 (moto's server) a replay aborts the multipart upload its bytes started."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlmodel import Session, col, select

from api.services import files as service
from api.services.idempotency import IDEMPOTENCY_KEY_TTL_S
from core.db import make_engine
from core.model_registry import register_model
from core.models import File, now_s
from core.settings import Settings
from core.storage import make_storage_from_settings
from core.storage.s3 import S3Storage
from tests.support.datasets import chat_jsonl, prompt_completion_jsonl
from tests.support.keys import make_key
from tests.support.moto_server import run_moto_server, s3_settings_kwargs

KEY_HEADER = "Idempotency-Key"
BAD_JSONL = b'{"messages": "not a list"}\n' * 12


def _headers(api_key: str, idempotency_key: str | bytes | None = None) -> dict[str, Any]:
    headers: dict[str, Any] = {"Authorization": f"Bearer {api_key}"}
    if idempotency_key is not None:
        headers[KEY_HEADER] = idempotency_key
    return headers


def _upload(
    client: TestClient,
    api_key: str,
    data: bytes,
    idempotency_key: str | bytes | None = None,
    *,
    purpose: str = "fine-tune",
    name: str = "train.jsonl",
) -> httpx.Response:
    return client.post(
        "/v1/files",
        headers=_headers(api_key, idempotency_key),
        data={"purpose": purpose},
        files={"file": (name, data)},
    )


def _upload_purpose_last(
    client: TestClient, api_key: str, data: bytes, idempotency_key: str, *, purpose: str
) -> httpx.Response:
    """The purpose field after the file part, so it is only known once the bytes are in."""
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n'.encode()
        + data
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
        f"--{boundary}--\r\n".encode()
    )
    headers = {
        **_headers(api_key, idempotency_key),
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    return client.post("/v1/files", headers=headers, content=body)


def _rows(settings: Settings) -> list[File]:
    engine = make_engine(settings.resolved_database_url)
    try:
        with Session(engine) as session:
            return list(session.exec(select(File).order_by(col(File.seq))).all())
    finally:
        engine.dispose()


def _age(settings: Settings, file_id: str, **values: Any) -> None:
    engine = make_engine(settings.resolved_database_url)
    try:
        with Session(engine) as session:
            session.execute(update(File).where(col(File.id) == file_id).values(**values))
            session.commit()
    finally:
        engine.dispose()


def _stored(settings: Settings) -> list[str]:
    """The published objects under files/; fails if any temporary (a dropped or lost upload) is left."""
    storage = make_storage_from_settings(settings)
    root = Path(settings.resolved_storage_url.removeprefix("file://"))
    temporaries = [p.name for p in root.rglob("*") if ".tmp-" in p.name]
    assert temporaries == []
    return storage.list_keys("files/")


def test_a_replay_returns_the_same_file_and_keeps_nothing(
    client: TestClient, settings: Settings, org_a_key: str
) -> None:
    data = chat_jsonl(12)
    first = _upload(client, org_a_key, data, "key-1")
    assert first.status_code == 200, first.text
    assert "idempotent-replayed" not in first.headers
    file = first.json()
    assert _stored(settings) == [f"files/{file['id']}"]

    # The same upload again (another filename does not make it another upload): the same file, nothing new.
    again = _upload(client, org_a_key, data, "key-1", name="renamed.jsonl")
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == file == client.get(f"/v1/files/{file['id']}", headers=_headers(org_a_key)).json()
    assert [r.id for r in _rows(settings)] == [file["id"]]
    assert _stored(settings) == [f"files/{file['id']}"]
    content = client.get(f"/v1/files/{file['id']}/content", headers=_headers(org_a_key))
    assert content.content == data


def test_without_a_key_every_upload_is_a_new_file(
    client: TestClient, settings: Settings, org_a_key: str
) -> None:
    data = chat_jsonl(12)
    ids = {_upload(client, org_a_key, data).json()["id"] for _ in range(2)}
    keyed = _upload(client, org_a_key, data, "key-1")
    assert keyed.status_code == 200 and "idempotent-replayed" not in keyed.headers
    assert keyed.json()["id"] not in ids
    assert len(_rows(settings)) == 3 and len(_stored(settings)) == 3


@pytest.mark.parametrize(
    "other",
    [chat_jsonl(13), prompt_completion_jsonl(12), BAD_JSONL],
    ids=["more-lines", "other-format", "invalid"],
)
def test_the_same_key_with_other_content_is_refused(
    client: TestClient, settings: Settings, org_a_key: str, other: bytes
) -> None:
    file = _upload(client, org_a_key, chat_jsonl(12), "key-1").json()
    resp = _upload(client, org_a_key, other, "key-1")
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "idempotency_key_reused" and error["param"] == KEY_HEADER
    assert error["type"] == "invalid_request_error" and file["id"] in error["message"]
    assert resp.headers["x-should-retry"] == "false"
    # Invalid content under the key is a 422 too, and leaves no error file behind.
    assert [r.id for r in _rows(settings)] == [file["id"]]
    assert _stored(settings) == [f"files/{file['id']}"]


@pytest.mark.parametrize("purpose_last", [False, True], ids=["purpose-first", "purpose-after-the-file"])
def test_the_same_key_with_another_purpose_is_refused(
    client: TestClient, settings: Settings, org_a_key: str, purpose_last: bool
) -> None:
    data = chat_jsonl(12)
    file = _upload(client, org_a_key, data, "key-1").json()
    # Alone, this purpose is a 400; under a key that names a file it is the key's 422, as for jobs.
    assert _upload(client, org_a_key, data, purpose="batch").json()["error"]["param"] == "purpose"
    if purpose_last:
        resp = _upload_purpose_last(client, org_a_key, data, "key-1", purpose="batch")
    else:
        resp = _upload(client, org_a_key, data, "key-1", purpose="batch")
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "idempotency_key_reused" and file["id"] in resp.text
    assert [r.id for r in _rows(settings)] == [file["id"]]
    assert _stored(settings) == [f"files/{file['id']}"]
    # The original purpose, sent after the file, still replays.
    same = _upload_purpose_last(client, org_a_key, data, "key-1", purpose="fine-tune")
    assert same.status_code == 200 and same.headers["idempotent-replayed"] == "true"


@pytest.mark.parametrize(
    "bad_key",
    ["", "k" * 256, "tab\tkey", "del\x7fkey", "ключ".encode()],
    ids=["empty", "too-long", "control", "del", "non-ascii"],
)
def test_an_invalid_key_is_a_400_naming_the_header(
    client: TestClient, settings: Settings, org_a_key: str, bad_key: str | bytes
) -> None:
    resp = _upload(client, org_a_key, chat_jsonl(12), bad_key)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == KEY_HEADER and error["code"] == "invalid_idempotency_key"
    assert _rows(settings) == [] and _stored(settings) == []
    longest = ("".join(chr(c) for c in range(0x20, 0x7F)) * 3)[:255]
    assert _upload(client, org_a_key, chat_jsonl(12), longest).status_code == 200


def test_keys_are_per_organization(
    client: TestClient, settings: Settings, org_a_key: str, org_b_key: str
) -> None:
    data = chat_jsonl(12)
    file_a = _upload(client, org_a_key, data, "shared-key").json()
    # Org B sends org A's exact upload and key: it gets a file of its own, not org A's.
    file_b = _upload(client, org_b_key, data, "shared-key")
    assert file_b.status_code == 200 and "idempotent-replayed" not in file_b.headers
    assert file_b.json()["id"] != file_a["id"]
    assert _upload(client, org_a_key, data, "shared-key").json()["id"] == file_a["id"]
    assert _upload(client, org_b_key, data, "shared-key").json()["id"] == file_b.json()["id"]
    # Each organization's other content under the key is refused against its own file only.
    refused = _upload(client, org_b_key, chat_jsonl(13), "shared-key")
    assert (
        refused.status_code == 422
        and file_b.json()["id"] in refused.text
        and file_a["id"] not in refused.text
    )
    assert len(_rows(settings)) == 2 and len(_stored(settings)) == 2


def test_files_and_jobs_keep_their_keys_apart(
    client: TestClient, settings: Settings, org_a_key: str, tmp_path: Path
) -> None:
    register_model(settings, "demo-tiny", tmp_path / "demo-tiny")  # the API needs the registry entry only
    file = _upload(client, org_a_key, chat_jsonl(12), "same-key").json()
    job = client.post(
        "/v1/fine_tuning/jobs",
        headers=_headers(org_a_key, "same-key"),
        json={"model": "demo-tiny", "training_file": file["id"]},
    )
    assert job.status_code == 200 and "idempotent-replayed" not in job.headers
    again = _upload(client, org_a_key, chat_jsonl(12), "same-key")
    assert again.headers["idempotent-replayed"] == "true" and again.json()["id"] == file["id"]


def test_a_refused_upload_does_not_use_up_its_key(
    client: TestClient, settings: Settings, org_a_key: str
) -> None:
    data = chat_jsonl(12)
    # A file that fails validation is kept as an error file (its report), but it does not take the key.
    invalid = _upload(client, org_a_key, BAD_JSONL, "key-1")
    assert invalid.status_code == 400 and invalid.json()["error"]["code"] == "invalid_file"
    # Over the quota: a 429, nothing kept.
    settings.org_max_files = 2
    keyless = _upload(client, org_a_key, data).json()
    over = _upload(client, org_a_key, data, "key-1")
    assert over.status_code == 429, over.text
    assert _stored(settings) == [f"files/{keyless['id']}"]
    settings.org_max_files = 0
    fixed = _upload(client, org_a_key, data, "key-1")
    assert fixed.status_code == 200 and "idempotent-replayed" not in fixed.headers
    keys = {r.id: r.idempotency_key for r in _rows(settings)}
    assert keys == {
        invalid.json()["error"]["file_id"]: None,
        keyless["id"]: None,
        fixed.json()["id"]: "key-1",
    }


def test_a_replay_is_answered_even_when_the_quota_is_full(
    client: TestClient, settings: Settings, org_a_key: str
) -> None:
    # The upload itself fills both quotas: its retry must still get it back, not a 429.
    data = chat_jsonl(12)
    settings.org_max_files = 1
    settings.org_max_storage_bytes = len(data)
    file = _upload(client, org_a_key, data, "key-1").json()
    assert _upload(client, org_a_key, data, "key-2").status_code == 429
    again = _upload(client, org_a_key, data, "key-1")
    assert again.status_code == 200 and again.json()["id"] == file["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert _stored(settings) == [f"files/{file['id']}"]


@pytest.mark.parametrize("gone", ["deleted", "expired", "day-old"])
def test_a_file_that_is_gone_or_a_day_old_frees_its_key(
    client: TestClient, settings: Settings, org_a_key: str, gone: str
) -> None:
    old = _upload(client, org_a_key, chat_jsonl(12), "key-1").json()
    if gone == "deleted":
        assert client.delete(f"/v1/files/{old['id']}", headers=_headers(org_a_key)).status_code == 200
    elif gone == "expired":
        _age(settings, old["id"], expires_at=now_s() - 1)
    else:
        _age(settings, old["id"], created_at=File.created_at - IDEMPOTENCY_KEY_TTL_S - 1)
    # The key now makes a new file, even with other content; the old file gives the key up.
    new = _upload(client, org_a_key, chat_jsonl(13), "key-1")
    assert new.status_code == 200 and "idempotent-replayed" not in new.headers
    assert new.json()["id"] != old["id"]
    keys = {r.id: r.idempotency_key for r in _rows(settings)}
    assert keys == {old["id"]: None, new.json()["id"]: "key-1"}
    again = _upload(client, org_a_key, chat_jsonl(13), "key-1")
    assert again.headers["idempotent-replayed"] == "true" and again.json()["id"] == new.json()["id"]


def test_concurrent_uploads_with_one_key_keep_one_file(
    client: TestClient, settings: Settings, org_a_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hold both uploads after each key lookup (before streaming, and again before publishing) until both got
    # there, so both find the key free and both insert: the unique index must let one win, and the other must
    # drop the object it published and answer as a replay of the winner.
    barrier = threading.Barrier(2, timeout=30)
    key_holder = service.key_holder

    def both_past_the_lookup(*args: Any, **kwargs: Any) -> Any:
        holder = key_holder(*args, **kwargs)
        if holder is None:
            barrier.wait()
        return holder

    monkeypatch.setattr(service, "key_holder", both_past_the_lookup)
    data = chat_jsonl(12)
    with ThreadPoolExecutor(max_workers=2) as pool:
        responses = list(pool.map(lambda _: _upload(client, org_a_key, data, "race"), range(2)))
    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    assert responses[0].json() == responses[1].json()
    assert sorted(r.headers.get("idempotent-replayed", "") for r in responses) == ["", "true"]
    file_id = responses[0].json()["id"]
    assert [r.id for r in _rows(settings)] == [file_id]
    assert _stored(settings) == [f"files/{file_id}"]  # the loser's object is gone, and no temporary is left


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with run_moto_server() as endpoint:
        yield endpoint


def test_on_s3_a_replay_aborts_its_multipart_upload(tmp_path: Path, moto_endpoint: str) -> None:
    # Over one 8 MiB part, so each upload starts an S3 multipart upload: a replay and a refused upload must
    # abort theirs, leaving the first file's object alone and no upload in progress.
    from api.main import create_app

    settings = Settings(
        data_dir=tmp_path / "data",
        min_examples=10,
        **s3_settings_kwargs(moto_endpoint, "ftserve-idem", "/ftserve"),
    )
    storage = make_storage_from_settings(settings)
    assert isinstance(storage, S3Storage)
    data = chat_jsonl(60_000)
    assert len(data) > storage.part_size
    with TestClient(create_app(settings)) as client:
        api_key = make_key(settings, "org-s3")
        file = _upload(client, api_key, data, "big").json()
        again = _upload(client, api_key, data, "big")
        assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
        assert again.json()["id"] == file["id"]
        assert _upload(client, api_key, data + chat_jsonl(1), "big").status_code == 422
        assert storage.list_keys("files/") == [f"files/{file['id']}"]
        assert storage.client._list_multipart_uploads(storage.bucket).uploads == []
        assert client.get(f"/v1/files/{file['id']}/content", headers=_headers(api_key)).content == data
