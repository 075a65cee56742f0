"""/v1/chat/completions: OpenAI's shape, streamed as server-sent events with `stream=True`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cached_property
from typing import Any, Literal, overload

from .._base_client import RequestOptions
from .._resource import AsyncAPIResource, SyncAPIResource
from .._streaming import AsyncStream, Stream
from ..types.chat import ChatCompletion, ChatCompletionChunk

__all__ = ["Chat", "AsyncChat", "Completions", "AsyncCompletions"]

Message = Mapping[str, Any]


def _body(
    model: str,
    messages: Iterable[Message],
    stream: bool,
    options: dict[str, Any],
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [dict(m) for m in messages]}
    body.update({k: v for k, v in options.items() if v is not None})
    if stream:
        body["stream"] = True
    body.update(extra or {})
    return body


class Completions(SyncAPIResource):
    @overload
    def create(
        self,
        *,
        model: str,
        messages: Iterable[Message],
        stream: Literal[False] = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | list[str] | None = None,
        seed: int | None = None,
        n: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> ChatCompletion: ...

    @overload
    def create(
        self,
        *,
        model: str,
        messages: Iterable[Message],
        stream: Literal[True],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | list[str] | None = None,
        seed: int | None = None,
        n: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> Stream[ChatCompletionChunk]: ...

    def create(
        self,
        *,
        model: str,
        messages: Iterable[Message],
        stream: bool = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | list[str] | None = None,
        seed: int | None = None,
        n: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> ChatCompletion | Stream[ChatCompletionChunk]:
        """A chat completion from a base model or one of your `ft:` models. With `stream=True`, iterate
        the returned `Stream` for `ChatCompletionChunk`s (use it in a `with` block to close it early)."""
        options = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "stop": stop}
        options.update({"seed": seed, "n": n})
        body = _body(model, messages, stream, options, extra_body)
        if stream:
            response = self._client.request(
                RequestOptions(
                    "POST",
                    "chat/completions",
                    json=body,
                    stream=True,
                    headers={"Accept": "text/event-stream"},
                )
            )
            return Stream(cast_to=ChatCompletionChunk, response=response)
        return self._client._post("chat/completions", ChatCompletion, body=body)


class AsyncCompletions(AsyncAPIResource):
    @overload
    async def create(
        self,
        *,
        model: str,
        messages: Iterable[Message],
        stream: Literal[False] = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | list[str] | None = None,
        seed: int | None = None,
        n: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> ChatCompletion: ...

    @overload
    async def create(
        self,
        *,
        model: str,
        messages: Iterable[Message],
        stream: Literal[True],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | list[str] | None = None,
        seed: int | None = None,
        n: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> AsyncStream[ChatCompletionChunk]: ...

    async def create(
        self,
        *,
        model: str,
        messages: Iterable[Message],
        stream: bool = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | list[str] | None = None,
        seed: int | None = None,
        n: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> ChatCompletion | AsyncStream[ChatCompletionChunk]:
        options = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "stop": stop}
        options.update({"seed": seed, "n": n})
        body = _body(model, messages, stream, options, extra_body)
        if stream:
            response = await self._client.request(
                RequestOptions(
                    "POST",
                    "chat/completions",
                    json=body,
                    stream=True,
                    headers={"Accept": "text/event-stream"},
                )
            )
            return AsyncStream(cast_to=ChatCompletionChunk, response=response)
        return await self._client._post("chat/completions", ChatCompletion, body=body)


class Chat(SyncAPIResource):
    @cached_property
    def completions(self) -> Completions:
        return Completions(self._client)


class AsyncChat(AsyncAPIResource):
    @cached_property
    def completions(self) -> AsyncCompletions:
        return AsyncCompletions(self._client)
