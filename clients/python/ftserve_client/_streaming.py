"""Server-sent events: the decoder, and `Stream`/`AsyncStream`, which yield parsed chunks until `[DONE]`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

import httpx
import pydantic

from ._exceptions import APIError, APIResponseValidationError

T = TypeVar("T", bound=pydantic.BaseModel)

__all__ = ["ServerSentEvent", "SSEDecoder", "Stream", "AsyncStream"]


@dataclass(frozen=True)
class ServerSentEvent:
    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        return json.loads(self.data)


class SSEDecoder:
    """Line-by-line decoder per the WHATWG spec: `data:` lines join with newlines, a blank line dispatches,
    lines starting with ':' are comments."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None

    def decode(self, line: str) -> ServerSentEvent | None:
        if not line:
            if not self._data and self._event is None and self._id is None and self._retry is None:
                return None
            sse = ServerSentEvent(
                data="\n".join(self._data), event=self._event, id=self._id, retry=self._retry
            )
            self._data, self._event, self._retry = [], None, None  # the id carries over, as the spec says
            return sse
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def iter_lines(self, lines: Iterator[str]) -> Iterator[ServerSentEvent]:
        for line in lines:
            sse = self.decode(line.rstrip("\r\n"))
            if sse is not None:
                yield sse
        sse = self.decode("")  # a stream that ends without the final blank line
        if sse is not None:
            yield sse

    async def aiter_lines(self, lines: AsyncIterator[str]) -> AsyncIterator[ServerSentEvent]:
        async for line in lines:
            sse = self.decode(line.rstrip("\r\n"))
            if sse is not None:
                yield sse
        sse = self.decode("")
        if sse is not None:
            yield sse


def _chunk(cast_to: type[T], sse: ServerSentEvent, response: httpx.Response) -> T:
    try:
        body = sse.json()
    except ValueError:
        raise APIResponseValidationError(response, sse.data, message="A stream event was not JSON.") from None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        # vLLM and OpenAI report mid-stream failures as a data event holding an error envelope.
        error = body["error"]
        raise APIError(str(error.get("message") or "Error in stream"), response.request, body=error)
    try:
        return cast_to.model_validate(body)
    except pydantic.ValidationError as exc:
        raise APIResponseValidationError(response, body, message=f"Unexpected stream chunk: {exc}") from exc


class Stream(Generic[T]):
    """Iterate for chunks; the response closes when the stream ends, on error, or on `close()`/`with`."""

    response: httpx.Response

    def __init__(self, *, cast_to: type[T], response: httpx.Response) -> None:
        self.response = response
        self._cast_to = cast_to
        self._iterator = self._stream()

    def _stream(self) -> Iterator[T]:
        try:
            for sse in SSEDecoder().iter_lines(self.response.iter_lines()):
                if sse.data.startswith("[DONE]"):
                    break
                yield _chunk(self._cast_to, sse, self.response)
        finally:
            self.response.close()

    def __iter__(self) -> Iterator[T]:
        return self._iterator

    def __next__(self) -> T:
        return next(self._iterator)

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncStream(Generic[T]):
    response: httpx.Response

    def __init__(self, *, cast_to: type[T], response: httpx.Response) -> None:
        self.response = response
        self._cast_to = cast_to
        self._iterator = self._stream()

    async def _stream(self) -> AsyncIterator[T]:
        try:
            async for sse in SSEDecoder().aiter_lines(self.response.aiter_lines()):
                if sse.data.startswith("[DONE]"):
                    break
                yield _chunk(self._cast_to, sse, self.response)
        finally:
            await self.response.aclose()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterator

    async def __anext__(self) -> T:
        return await self._iterator.__anext__()

    async def close(self) -> None:
        await self.response.aclose()

    async def __aenter__(self) -> AsyncStream[T]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
