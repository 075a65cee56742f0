"""The SDK's Idempotency-Key on jobs.create and files.create: one key per call, the same on each of its
retries, so a retry after a lost response gets the job (or file) back instead of a second one. Against the real
app in-process, through a transport that lets the first create reach the app (which commits the job or file)
and then drops its response."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from core.db import make_engine
from core.model_registry import register_model
from core.models import File, FineTuningJob
from core.settings import Settings
from core.storage import make_storage_from_settings
from ftserve_client import APIConnectionError, AsyncClient, Client
from tests.support.datasets import chat_jsonl

CREATE_PATH = "/v1/fine_tuning/jobs"
UPLOAD_PATH = "/v1/files"


class DropFirstCreateResponse:
    """Sends each request to the app; the first POST to `path` (job creation by default) is processed (its
    job committed) but answered with a dropped connection, as when a proxy or the network loses the response."""

    def __init__(self, app: TestClient, path: str = CREATE_PATH) -> None:
        self.app = app
        self.path = path
        self.creates: list[httpx.Request] = []
        self.answers: list[Any] = []  # the app's responses (TestClient's own httpx flavour)

    def forward(self, request: httpx.Request) -> httpx.Response:
        headers = {k: v for k, v in request.headers.items() if k not in ("host", "content-length")}
        response = self.app.request(
            request.method, str(request.url), headers=headers, content=request.content
        )
        if request.method == "POST" and request.url.path == self.path:
            self.creates.append(request)
            self.answers.append(response)
            if len(self.creates) == 1:
                raise httpx.ReadError("connection dropped before the response", request=request)
        headers = [
            (k, v) for k, v in response.headers.items() if k not in ("content-length", "content-encoding")
        ]
        return httpx.Response(response.status_code, headers=headers, content=response.content)


class SyncTransport(httpx.BaseTransport):
    def __init__(self, server: DropFirstCreateResponse) -> None:
        self.server = server

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        return self.server.forward(request)


class AsyncTransport(httpx.AsyncBaseTransport):
    def __init__(self, server: DropFirstCreateResponse) -> None:
        self.server = server

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        content = await request.aread()
        plain = httpx.Request(request.method, request.url, headers=request.headers, content=content)
        return await asyncio.to_thread(self.server.forward, plain)


@pytest.fixture
def training_file(settings: Settings, tmp_path: Path, client: TestClient, org_a_key: str) -> str:
    register_model(settings, "demo-tiny", tmp_path / "demo-tiny")  # the API needs the registry entry only
    resp = client.post(
        "/v1/files",
        headers={"Authorization": f"Bearer {org_a_key}"},
        data={"purpose": "fine-tune"},
        files={"file": ("t.jsonl", chat_jsonl(12))},
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def _job_ids(settings: Settings) -> list[str]:
    engine = make_engine(settings.resolved_database_url)
    try:
        with Session(engine) as session:
            return [job.id for job in session.exec(select(FineTuningJob)).all()]
    finally:
        engine.dispose()


def _sdk(server: DropFirstCreateResponse, api_key: str) -> Client:
    return Client(
        api_key=api_key,
        base_url="http://testserver",
        max_retries=2,
        http_client=httpx.Client(transport=SyncTransport(server)),
    )


def test_a_retry_after_a_dropped_response_gets_the_first_job(
    client: TestClient, settings: Settings, org_a_key: str, training_file: str
) -> None:
    server = DropFirstCreateResponse(client)
    job = _sdk(server, org_a_key).fine_tuning.jobs.create(model="demo-tiny", training_file=training_file)
    assert len(server.creates) == 2  # the dropped attempt and its retry
    keys = {r.headers["idempotency-key"] for r in server.creates}
    assert len(keys) == 1 and uuid.UUID(keys.pop()).version == 4
    assert server.answers[0].json()["id"] == job.id  # the job the lost response would have carried
    assert server.answers[1].headers["idempotent-replayed"] == "true"
    assert _job_ids(settings) == [job.id]


def test_each_call_has_its_own_key_and_an_explicit_key_is_sent_as_given(
    client: TestClient, settings: Settings, org_a_key: str, training_file: str
) -> None:
    server = DropFirstCreateResponse(client)
    sdk = _sdk(server, org_a_key)
    first = sdk.fine_tuning.jobs.create(model="demo-tiny", training_file=training_file)
    second = sdk.fine_tuning.jobs.create(model="demo-tiny", training_file=training_file)
    assert first.id != second.id  # two calls are two jobs, though their bodies are the same
    mine = sdk.fine_tuning.jobs.create(
        model="demo-tiny", training_file=training_file, idempotency_key="mine-1"
    )
    again = sdk.fine_tuning.jobs.create(
        model="demo-tiny", training_file=training_file, idempotency_key="mine-1"
    )
    assert mine.id == again.id and server.creates[-1].headers["idempotency-key"] == "mine-1"
    assert sorted(_job_ids(settings)) == sorted({first.id, second.id, mine.id})


def _async_sdk(server: DropFirstCreateResponse, api_key: str) -> AsyncClient:
    return AsyncClient(
        api_key=api_key,
        base_url="http://testserver",
        max_retries=2,
        http_client=httpx.AsyncClient(transport=AsyncTransport(server)),
    )


def test_the_async_client_reuses_its_key_across_retries(
    client: TestClient, settings: Settings, org_a_key: str, training_file: str
) -> None:
    server = DropFirstCreateResponse(client)

    async def create() -> str:
        sdk = _async_sdk(server, org_a_key)
        try:
            job = await sdk.fine_tuning.jobs.create(model="demo-tiny", training_file=training_file)
        finally:
            await sdk.close()
        return job.id

    job_id = asyncio.run(create())
    assert len(server.creates) == 2
    assert server.creates[0].headers["idempotency-key"] == server.creates[1].headers["idempotency-key"]
    assert _job_ids(settings) == [job_id]


def _openai(server: DropFirstCreateResponse, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=api_key,
        base_url="http://testserver/v1",
        max_retries=1,
        http_client=httpx.Client(transport=SyncTransport(server)),
    )


@pytest.mark.parametrize(
    ("extra_headers", "jobs_made"),
    [({}, 2), ({"Idempotency-Key": "from-openai-sdk"}, 1)],
    ids=["no-key", "extra-headers-key"],
)
def test_the_openai_sdk_works_unchanged_and_can_send_a_key(
    client: TestClient,
    settings: Settings,
    org_a_key: str,
    training_file: str,
    extra_headers: dict[str, str],
    jobs_made: int,
) -> None:
    # The official SDK sends no key: its retry after a lost response is a new create, as before. With
    # extra_headers it gets the ftserve SDK's behaviour.
    server = DropFirstCreateResponse(client)
    create: Callable[..., Any] = _openai(server, org_a_key).fine_tuning.jobs.create
    job = create(model="demo-tiny", training_file=training_file, extra_headers=extra_headers)
    assert len(server.creates) == 2
    assert ("idempotency-key" in server.creates[0].headers) == bool(extra_headers)
    assert len(_job_ids(settings)) == jobs_made and job.id in _job_ids(settings)


# -- files.create ------------------------------------------------------------------------------------------


def _file_ids(settings: Settings) -> list[str]:
    engine = make_engine(settings.resolved_database_url)
    try:
        with Session(engine) as session:
            return [row.id for row in session.exec(select(File)).all()]
    finally:
        engine.dispose()


def _stored_files(settings: Settings) -> list[str]:
    return make_storage_from_settings(settings).list_keys("files/")


@pytest.mark.parametrize("source", ["path", "bytes", "seekable"])
def test_an_upload_retry_after_a_dropped_response_gets_the_first_file(
    client: TestClient, settings: Settings, org_a_key: str, tmp_path: Path, source: str
) -> None:
    data = chat_jsonl(12)
    path = tmp_path / "train.jsonl"
    path.write_bytes(data)
    file: Any = {"path": path, "bytes": ("train.jsonl", data), "seekable": io.BytesIO(data)}[source]
    server = DropFirstCreateResponse(client, UPLOAD_PATH)
    uploaded = _sdk(server, org_a_key).files.create(file=file)
    assert len(server.creates) == 2  # the dropped attempt and its retry, the whole body sent again
    assert server.creates[0].content == server.creates[1].content and data in server.creates[1].content
    keys = {r.headers["idempotency-key"] for r in server.creates}
    assert len(keys) == 1 and uuid.UUID(keys.pop()).version == 4
    assert server.answers[0].json()["id"] == uploaded.id  # the file the lost response would have carried
    assert server.answers[1].headers["idempotent-replayed"] == "true"
    assert _file_ids(settings) == [uploaded.id]
    assert _stored_files(settings) == [f"files/{uploaded.id}"]


def test_each_upload_has_its_own_key_and_an_explicit_key_is_sent_as_given(
    client: TestClient, settings: Settings, org_a_key: str
) -> None:
    server = DropFirstCreateResponse(client, UPLOAD_PATH)
    sdk = _sdk(server, org_a_key)
    data = chat_jsonl(12)
    first = sdk.files.create(file=("a.jsonl", data))
    second = sdk.files.create(file=("a.jsonl", data))
    assert first.id != second.id  # two calls are two files, though their bytes are the same
    mine = sdk.files.create(file=("a.jsonl", data), idempotency_key="mine-1")
    again = sdk.files.create(file=("a.jsonl", data), idempotency_key="mine-1")
    assert mine.id == again.id and server.creates[-1].headers["idempotency-key"] == "mine-1"
    assert sorted(_file_ids(settings)) == sorted({first.id, second.id, mine.id})


def test_a_stream_is_sent_once_and_the_caller_retries_it_with_its_own_key(
    client: TestClient, settings: Settings, org_a_key: str
) -> None:
    # A non-seekable stream cannot be re-read, so the SDK does not retry it; the caller, who can open it
    # again, retries the call with the same key and gets the file the lost response carried.
    class Stream(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            return self.inner.read(size)

    server = DropFirstCreateResponse(client, UPLOAD_PATH)
    sdk = _sdk(server, org_a_key)
    with pytest.raises(APIConnectionError):
        sdk.files.create(file=Stream(chat_jsonl(12)), idempotency_key="upload-7")
    assert len(server.creates) == 1
    uploaded = sdk.files.create(file=Stream(chat_jsonl(12)), idempotency_key="upload-7")
    assert server.answers[0].json()["id"] == uploaded.id
    assert _file_ids(settings) == [uploaded.id]
    assert _stored_files(settings) == [f"files/{uploaded.id}"]


def test_the_async_client_reuses_its_upload_key_across_retries(
    client: TestClient, settings: Settings, org_a_key: str
) -> None:
    server = DropFirstCreateResponse(client, UPLOAD_PATH)

    async def upload() -> str:
        sdk = _async_sdk(server, org_a_key)
        try:
            file = await sdk.files.create(file=("a.jsonl", chat_jsonl(12)))
        finally:
            await sdk.close()
        return file.id

    file_id = asyncio.run(upload())
    assert len(server.creates) == 2
    assert server.creates[0].headers["idempotency-key"] == server.creates[1].headers["idempotency-key"]
    assert _file_ids(settings) == [file_id]
    assert _stored_files(settings) == [f"files/{file_id}"]


@pytest.mark.parametrize(
    ("extra_headers", "files_made"),
    [({}, 2), ({"Idempotency-Key": "from-openai-sdk"}, 1)],
    ids=["no-key", "extra-headers-key"],
)
def test_the_openai_sdk_uploads_unchanged_and_can_send_a_key(
    client: TestClient, settings: Settings, org_a_key: str, extra_headers: dict[str, str], files_made: int
) -> None:
    server = DropFirstCreateResponse(client, UPLOAD_PATH)
    create: Callable[..., Any] = _openai(server, org_a_key).files.create
    file = create(file=("a.jsonl", chat_jsonl(12)), purpose="fine-tune", extra_headers=extra_headers)
    assert len(server.creates) == 2
    assert ("idempotency-key" in server.creates[0].headers) == bool(extra_headers)
    assert len(_file_ids(settings)) == files_made and file.id in _file_ids(settings)
    assert len(_stored_files(settings)) == files_made
