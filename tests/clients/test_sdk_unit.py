"""The SDK's own logic, against httpx.MockTransport: errors, retries, paging, SSE, follow(), uploads, settings.

What needs a real server (every resource end to end) is in test_sdk_live.py.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

import ftserve_client
from ftserve_client import AsyncClient, Client
from ftserve_client._base_client import parse_retry_after
from ftserve_client.resources.fine_tuning import jobs as jobs_module
from ftserve_client.types import ChatCompletionChunk, FineTuningJob

Handler = Callable[[httpx.Request], httpx.Response]


def make_client(handler: Handler, **kwargs: Any) -> Client:
    return Client(
        api_key="ftsk-test",
        base_url="http://ftserve.test",
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
        **kwargs,
    )


def error(status: int, message: str = "nope", param: str | None = None, **headers: str) -> httpx.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": "c"}}
    return httpx.Response(status, json=body, headers={"x-request-id": "req_1", **headers})


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record retry delays instead of sleeping them."""
    recorded: list[float] = []
    monkeypatch.setattr("ftserve_client._base_client.time.sleep", recorded.append)
    return recorded


# --- settings --------------------------------------------------------------------------------------------------


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"object": "list", "data": []})

    monkeypatch.setenv("FTSERVE_API_KEY", "ftsk-from-env")
    monkeypatch.setenv("FTSERVE_BASE_URL", "http://example.test:9000")  # /v1 is added
    client = Client(http_client=httpx.Client(transport=httpx.MockTransport(handler)))
    client.models.list()
    assert str(seen[0].url) == "http://example.test:9000/v1/models"
    assert seen[0].headers["authorization"] == "Bearer ftsk-from-env"
    assert seen[0].headers["user-agent"].startswith("ftserve-python/")


def test_a_missing_key_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FTSERVE_API_KEY", raising=False)
    with pytest.raises(ftserve_client.FtserveError, match="FTSERVE_API_KEY.*ftserve keys create"):
        Client()


# --- errors and retries ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, ftserve_client.BadRequestError),
        (401, ftserve_client.AuthenticationError),
        (403, ftserve_client.PermissionDeniedError),
        (404, ftserve_client.NotFoundError),
        (409, ftserve_client.ConflictError),
        (413, ftserve_client.PayloadTooLargeError),
        (422, ftserve_client.UnprocessableEntityError),
        (429, ftserve_client.RateLimitError),
        (500, ftserve_client.InternalServerError),
        (503, ftserve_client.InternalServerError),
        (418, ftserve_client.APIStatusError),
    ],
)
def test_status_codes_map_to_the_exception_tree(status: int, cls: type[Exception]) -> None:
    client = make_client(lambda r: error(status, "bad suffix", param="suffix"), max_retries=0)
    with pytest.raises(cls) as excinfo:
        client.files.retrieve("file-x")
    exc = excinfo.value
    assert isinstance(exc, ftserve_client.APIStatusError) and type(exc) is cls
    assert exc.status_code == status and exc.param == "suffix" and exc.code == "c"
    assert exc.request_id == "req_1" and "bad suffix" in str(exc)
    assert exc.type == "invalid_request_error"


def test_a_non_json_error_body_still_raises_with_its_text() -> None:
    client = make_client(lambda r: httpx.Response(502, text="upstream down"), max_retries=0)
    with pytest.raises(ftserve_client.InternalServerError, match="upstream down") as excinfo:
        client.models.list()
    assert excinfo.value.body == "upstream down" and excinfo.value.param is None


def test_retries_5xx_and_429_with_backoff_then_succeeds(sleeps: list[float]) -> None:
    answers = [error(503), error(429), httpx.Response(200, json={"object": "list", "data": []})]
    client = make_client(lambda r: answers.pop(0), max_retries=2)
    assert client.models.list().data == []
    assert len(sleeps) == 2 and 0.3 <= sleeps[0] <= 0.5 and 0.7 <= sleeps[1] <= 1.0  # 0.5 s, 1 s, -25% jitter


def test_retry_after_is_honoured(sleeps: list[float]) -> None:
    answers = [
        error(429, **{"retry-after": "3"}),
        error(503, **{"retry-after-ms": "250"}),
        httpx.Response(200, json={"object": "list", "data": []}),
    ]
    client = make_client(lambda r: answers.pop(0), max_retries=3)
    client.models.list()
    assert sleeps == [3.0, 0.25]


def test_retry_after_as_an_http_date() -> None:
    import email.utils
    import time

    headers = httpx.Headers({"retry-after": email.utils.formatdate(time.time() + 30, usegmt=True)})
    delay = parse_retry_after(headers)
    assert delay is not None and 25 <= delay <= 31


def test_a_retry_after_beyond_a_minute_is_not_waited_on(sleeps: list[float]) -> None:
    client = make_client(lambda r: error(429, **{"retry-after": "3600"}), max_retries=3)
    with pytest.raises(ftserve_client.RateLimitError):
        client.models.list()
    assert sleeps == []


def test_x_should_retry_is_obeyed_and_400_is_final(sleeps: list[float]) -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return error(500, **{"x-should-retry": "false"})

    with pytest.raises(ftserve_client.InternalServerError):
        make_client(handler, max_retries=3).models.list()
    assert len(calls) == 1

    calls.clear()
    with pytest.raises(ftserve_client.BadRequestError):
        make_client(lambda r: calls.append(1) or error(400), max_retries=3).models.list()  # type: ignore[func-returns-value]
    assert len(calls) == 1

    answers = [error(400, **{"x-should-retry": "true"}), httpx.Response(200, json={"data": []})]
    make_client(lambda r: answers.pop(0), max_retries=1).models.list()
    assert answers == []


def test_connection_errors_retry_then_raise(sleeps: list[float]) -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(ftserve_client.APIConnectionError, match="refused"):
        make_client(handler, max_retries=2).models.list()
    assert len(calls) == 3

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(ftserve_client.APITimeoutError):
        make_client(slow, max_retries=0).models.list()


def test_an_unexpected_body_raises_a_validation_error() -> None:
    client = make_client(lambda r: httpx.Response(200, json={"id": "file-1"}))
    with pytest.raises(ftserve_client.APIResponseValidationError):
        client.files.retrieve("file-1")


def test_with_options_overrides_retries_and_headers(sleeps: list[float]) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return error(503)

    client = make_client(handler, max_retries=0)
    with pytest.raises(ftserve_client.InternalServerError):
        client.with_options(max_retries=2, default_headers={"x-trace": "t1"}).models.list()
    assert len(seen) == 3 and seen[0].headers["x-trace"] == "t1"


# --- pagination ------------------------------------------------------------------------------------------------


def _job(i: int) -> dict[str, Any]:
    return {
        "id": f"ftjob-{i}",
        "object": "fine_tuning.job",
        "created_at": 1000 + i,
        "model": "demo-tiny",
        "organization_id": "org-1",
        "status": "queued",
        "training_file": "file-1",
        "seed": 1,
        "method": {"type": "supervised"},
    }


def paged_jobs(total: int) -> tuple[Handler, list[dict[str, str]]]:
    """A server holding `total` jobs, newest first, paging by `after`; records each query."""
    ids = list(range(total, 0, -1))
    queries: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        query = dict(request.url.params)
        queries.append(query)
        limit = int(query.get("limit", 20))
        start = ids.index(int(query["after"].split("-")[1])) + 1 if "after" in query else 0
        chunk = ids[start : start + limit]
        return httpx.Response(
            200,
            json={"object": "list", "data": [_job(i) for i in chunk], "has_more": start + limit < len(ids)},
        )

    return handler, queries


def test_cursor_pages_iterate_every_item_once() -> None:
    handler, queries = paged_jobs(7)
    client = make_client(handler)
    page = client.fine_tuning.jobs.list(limit=3, metadata={"team": "a"})
    assert [j.id for j in page.data] == ["ftjob-7", "ftjob-6", "ftjob-5"] and page.has_more
    assert [j.id for j in page] == [f"ftjob-{i}" for i in range(7, 0, -1)]
    assert queries[0] == {"limit": "3", "metadata[team]": "a"}
    assert queries[1] == {"limit": "3", "metadata[team]": "a", "after": "ftjob-5"}
    assert [len(p.data) for p in page.iter_pages()] == [3, 3, 1]
    last = page.get_next_page().get_next_page()
    assert not last.has_next_page() and last.next_page_info() is None


def test_async_pages_await_and_async_iterate() -> None:
    handler, _ = paged_jobs(5)

    async def main() -> tuple[list[str], list[str]]:
        async with AsyncClient(
            api_key="k",
            base_url="http://ftserve.test/v1",
            http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        ) as client:
            first = await client.fine_tuning.jobs.list(limit=2)
            every = [j.id async for j in client.fine_tuning.jobs.list(limit=2)]
            return [j.id for j in first.data], every

    first, every = asyncio.run(main())
    assert first == ["ftjob-5", "ftjob-4"] and every == [f"ftjob-{i}" for i in range(5, 0, -1)]


# --- follow() and wait() ---------------------------------------------------------------------------------------


class FakeJobServer:
    """A job whose events appear over successive polls, served newest first with `after` paging."""

    def __init__(self, batches: list[list[int]], final: str = "succeeded") -> None:
        self.batches = batches  # event sequence numbers appearing at each poll of the job
        self.final = final
        self.visible: list[int] = []
        self.polls = 0
        self.event_requests = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/events"):
            self.event_requests += 1
            ordered = sorted(self.visible, reverse=True)  # newest first
            query = dict(request.url.params)
            limit = int(query.get("limit", 20))
            start = ordered.index(int(query["after"].split("-")[1])) + 1 if "after" in query else 0
            chunk = ordered[start : start + limit]
            data = [
                {
                    "object": "fine_tuning.job.event",
                    "id": f"ftevent-{n}",
                    "created_at": 2000 + n,
                    "level": "info",
                    "message": f"event {n}",
                }
                for n in chunk
            ]
            return httpx.Response(200, json={"data": data, "has_more": start + limit < len(ordered)})
        if self.polls < len(self.batches):
            self.visible.extend(self.batches[self.polls])
        self.polls += 1
        done = self.polls >= len(self.batches)
        return httpx.Response(200, json={**_job(1), "status": self.final if done else "running"})


def test_follow_yields_each_event_once_oldest_first_across_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_module, "EVENTS_PAGE", 2)  # force several pages per poll
    # Poll 2 brings event 5 late: its sequence number is below 6 and 7, which were already visible
    # (PostgreSQL sequences are not commit-ordered). It must still be emitted, once.
    server = FakeJobServer([[1, 2, 3, 4, 6, 7], [5, 8], [], [9, 10, 11, 12, 13]])
    client = make_client(server.handler)
    follower = client.fine_tuning.jobs.follow("ftjob-1", poll_interval=0)
    seen = [int(e.id.split("-")[1]) for e in follower]
    assert seen == [1, 2, 3, 4, 6, 7, 5, 8, 9, 10, 11, 12, 13]
    assert follower.job is not None and follower.job.status == "succeeded" and follower.job.done


def test_wait_calls_on_event_and_returns_the_final_job() -> None:
    server = FakeJobServer([[1], [2, 3], [4]], final="failed")
    events: list[str] = []
    job = make_client(server.handler).fine_tuning.jobs.wait(
        "ftjob-1", on_event=lambda e: events.append(e.message), poll_interval=0
    )
    assert isinstance(job, FineTuningJob) and job.status == "failed"
    assert events == ["event 1", "event 2", "event 3", "event 4"]


def test_wait_times_out() -> None:
    server = FakeJobServer([[1]] * 1000)
    with pytest.raises(TimeoutError, match="still running"):
        make_client(server.handler).fine_tuning.jobs.wait("ftjob-1", poll_interval=0.01, timeout=0.05)


def test_async_follow_matches_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_module, "EVENTS_PAGE", 2)
    server = FakeJobServer([[1, 2, 3], [5, 4], [6]])

    async def main() -> tuple[list[str], str]:
        client = AsyncClient(
            api_key="k",
            base_url="http://ftserve.test",
            http_client=httpx.AsyncClient(transport=httpx.MockTransport(server.handler)),
        )
        follower = client.fine_tuning.jobs.follow("ftjob-1", poll_interval=0)
        ids = [e.id async for e in follower]
        assert follower.job is not None
        return ids, follower.job.status

    ids, status = asyncio.run(main())
    assert ids == [f"ftevent-{n}" for n in (1, 2, 3, 4, 5, 6)] and status == "succeeded"


# --- request bodies --------------------------------------------------------------------------------------------


def test_job_create_puts_hyperparameters_in_the_method() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=_job(1))

    jobs = make_client(handler).fine_tuning.jobs
    jobs.create(model="m", training_file="file-1", method="dpo", hyperparameters={"beta": 0.2}, seed=3)
    jobs.create(
        model="m", training_file="file-1", hyperparameters={"n_epochs": 2}, extra_body={"priority": 5}
    )
    jobs.create(model="m", training_file="file-1")
    assert bodies[0] == {
        "model": "m",
        "training_file": "file-1",
        "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}},
        "seed": 3,
    }
    assert bodies[1]["method"] == {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}
    assert bodies[1]["priority"] == 5 and "hyperparameters" not in bodies[1]
    assert bodies[2] == {"model": "m", "training_file": "file-1"}
    with pytest.raises(TypeError, match="once"):
        jobs.create(
            model="m",
            training_file="f",
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
            hyperparameters={"n_epochs": 2},
        )


# --- uploads ---------------------------------------------------------------------------------------------------


def _parse_multipart(request: httpx.Request) -> dict[str, tuple[str | None, bytes]]:
    from email.parser import BytesParser
    from email.policy import HTTP

    raw = b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n" + request.content
    message = BytesParser(policy=HTTP).parsebytes(raw)
    parts: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        parts[str(name)] = (part.get_filename(), part.get_payload(decode=True))
    return parts


FILE_OBJECT = {
    "id": "file-1",
    "object": "file",
    "bytes": 0,
    "created_at": 1,
    "filename": "t.jsonl",
    "purpose": "fine-tune",
    "status": "processed",
}


@pytest.mark.parametrize("kind", ["path", "bytes", "fileobj", "tuple"])
def test_upload_streams_multipart_with_progress_and_a_content_length(kind: str, tmp_path: Any) -> None:
    data = b'{"prompt": "a", "completion": "b"}\n' * 20_000  # ~700 KB: several chunks
    path = tmp_path / "train.jsonl"
    path.write_bytes(data)
    source: Any = {
        "path": path,
        "bytes": data,
        "fileobj": io.BytesIO(data),
        "tuple": ("named.jsonl", data),
    }[kind]
    received: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        received.append(request)
        return httpx.Response(200, json=FILE_OBJECT)

    progress: list[tuple[int, int | None]] = []
    make_client(handler).files.create(
        file=source, expires_after_seconds=3600, on_progress=lambda s, t: progress.append((s, t))
    )
    request = received[0]
    assert int(request.headers["content-length"]) == len(request.content)
    parts = _parse_multipart(request)
    assert parts["purpose"] == (None, b"fine-tune")
    assert parts["expires_after[seconds]"] == (None, b"3600")
    filename, content = parts["file"]
    assert content == data
    assert filename == {"path": "train.jsonl", "bytes": "upload.jsonl", "fileobj": "upload.jsonl"}.get(
        kind, "named.jsonl"
    )
    assert progress[0] == (0, len(data)) and progress[-1] == (len(data), len(data)) and len(progress) > 3
    assert [s for s, _ in progress] == sorted(s for s, _ in progress)


def test_an_upload_is_sent_again_whole_on_retry(sleeps: list[float], tmp_path: Any) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"prompt": "a", "completion": "b"}\n' * 100)
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        return error(503) if len(bodies) == 1 else httpx.Response(200, json=FILE_OBJECT)

    make_client(handler, max_retries=1).files.create(file=path)
    assert len(bodies) == 2 and bodies[0] == bodies[1] and path.read_bytes() in bodies[1]


def test_a_missing_upload_path_raises_file_not_found(tmp_path: Any) -> None:
    with pytest.raises(FileNotFoundError):
        make_client(lambda r: httpx.Response(200)).files.create(file=tmp_path / "nope.jsonl")


# --- server-sent events ----------------------------------------------------------------------------------------


def _chunk(content: str, i: int = 0) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }


def sse_body(*events: str) -> bytes:
    return "".join(events).encode()


def test_stream_yields_chunks_until_done_across_odd_framing() -> None:
    body = sse_body(
        ": keep-alive comment\n\n",
        f"data: {json.dumps(_chunk('Hel'))}\n\n",
        f"data: {json.dumps(_chunk('lo'))}\r\n\r\n",  # CRLF framing
        "event: message\nid: 7\n",
        # A JSON document split over two data lines is joined with a newline, which JSON allows.
        'data: {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,\n',
        'data: "model": "m", "choices": [{"index": 0, "delta": {"content": "!"}}]}\n\n',
        "data: [DONE]\n\n",
        f"data: {json.dumps(_chunk('never'))}\n\n",
    )
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    client = make_client(handler)
    with client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=5
    ) as stream:
        chunks = list(stream)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello!"
    sent = json.loads(seen[0].content)
    assert sent == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "stream": True,
    }
    assert seen[0].headers["accept"] == "text/event-stream"


def test_an_error_event_mid_stream_raises() -> None:
    body = sse_body(
        f"data: {json.dumps(_chunk('a'))}\n\n",
        'data: {"error": {"message": "replica lost", "type": "server_error", "code": "x"}}\n\n',
    )
    client = make_client(lambda r: httpx.Response(200, content=body))
    stream = client.chat.completions.create(model="m", messages=[], stream=True)
    assert next(stream).choices[0].delta.content == "a"
    with pytest.raises(ftserve_client.APIError, match="replica lost") as excinfo:
        next(stream)
    assert excinfo.value.code == "x"


def test_an_error_status_before_the_stream_raises_the_status_error() -> None:
    client = make_client(
        lambda r: error(404, "The model 'ft:x' does not exist", param="model"), max_retries=0
    )
    with pytest.raises(ftserve_client.NotFoundError) as excinfo:
        client.chat.completions.create(model="ft:x", messages=[], stream=True)
    assert excinfo.value.param == "model"


def test_async_stream_and_non_streaming_completion() -> None:
    body = sse_body(*(f"data: {json.dumps(_chunk(t))}\n\n" for t in "abc"), "data: [DONE]\n\n")
    completion = {
        "id": "chatcmpl-2",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "abc"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content).get("stream"):
            return httpx.Response(200, content=body)
        return httpx.Response(200, json=completion)

    async def main() -> tuple[str, str]:
        client = AsyncClient(
            api_key="k",
            base_url="http://ftserve.test",
            http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        )
        stream = await client.chat.completions.create(model="m", messages=[], stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        whole = await client.chat.completions.create(model="m", messages=[])
        return text, whole.text

    assert asyncio.run(main()) == ("abc", "abc")


def test_follow_reads_one_page_per_quiet_poll() -> None:
    """Polls that bring nothing new (or a few events) cost one request, not a walk through the history."""
    server = FakeJobServer([list(range(1, 151)), [], [151], []])
    follower = make_client(server.handler).fine_tuning.jobs.follow("ftjob-1", poll_interval=0)
    assert [e.id for e in follower] == [f"ftevent-{n}" for n in range(1, 152)]
    assert server.event_requests == 2 + 1 + 1 + 1  # history (2 pages of 100), then one page per poll
