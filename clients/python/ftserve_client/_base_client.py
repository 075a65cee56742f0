"""HTTP plumbing shared by every resource: auth, URLs, retries with backoff, error mapping, parsing.

`BaseClient` holds what needs no I/O; `SyncAPIClient` and `AsyncAPIClient` add the request loop.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import os
import random
import time
import uuid
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pydantic

from ._constants import (
    DEFAULT_BASE_URL,
    DEFAULT_TIMEOUT,
    INITIAL_RETRY_DELAY,
    MAX_RETRY_AFTER,
    MAX_RETRY_DELAY,
)
from ._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    FtserveError,
    make_status_error,
)
from ._version import __version__
from .pagination import AsyncCursorPage, AsyncPaginator, SyncCursorPage

log = logging.getLogger("ftserve_client")

ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)
Timeout = float | httpx.Timeout | None
# A request body that can be produced again for a retry: an upload re-reads its file each attempt.
ContentFactory = Callable[[], bytes | Iterable[bytes] | AsyncIterable[bytes]]


class NotGiven:
    """Tells "not passed" apart from None (which means "no timeout")."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN = NotGiven()


@dataclass
class RequestOptions:
    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    content: ContentFactory | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: Timeout | NotGiven = NOT_GIVEN
    max_retries: int | None = None
    stream: bool = False


def idempotency_headers(idempotency_key: str | None) -> dict[str, str]:
    """One key per create() call, generated here (not per attempt), so the client's retries all reuse it."""
    return {"Idempotency-Key": idempotency_key if idempotency_key is not None else str(uuid.uuid4())}


def flatten_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Drop None values and spell dicts OpenAI's way: {"metadata": {"k": "v"}} -> metadata[k]=v."""
    out: dict[str, Any] = {}
    for name, value in (params or {}).items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            for key, inner in value.items():
                if inner is not None:
                    out[f"{name}[{key}]"] = inner
        else:
            out[name] = value
    return out


def normalize_base_url(url: str) -> str:
    """Accept `http://host:8000`, `http://host:8000/` or `http://host:8000/v1`: all mean the /v1 API."""
    url = url.rstrip("/")
    if not url.endswith("/v1"):
        url += "/v1"
    return url + "/"


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the server asks us to wait: retry-after-ms, then retry-after (seconds or an HTTP date)."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue
        return seconds if math.isfinite(seconds) else None
    value = headers.get("retry-after")
    if value:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, parsed.timestamp() - time.time())
    return None


class BaseClient:
    api_key: str
    base_url: httpx.URL
    max_retries: int
    timeout: Timeout

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | httpx.URL | None,
        timeout: Timeout | NotGiven,
        max_retries: int,
        default_headers: Mapping[str, str] | None,
        webhook_secret: str | None,
    ) -> None:
        api_key = api_key if api_key is not None else os.environ.get("FTSERVE_API_KEY")
        if not api_key:
            raise FtserveError(
                "No API key: pass api_key= to the client or set FTSERVE_API_KEY "
                "(a server admin creates one with `ftserve keys create --org NAME`)."
            )
        self.api_key = api_key
        raw_url = str(base_url) if base_url is not None else os.environ.get("FTSERVE_BASE_URL")
        self.base_url = httpx.URL(normalize_base_url(raw_url or DEFAULT_BASE_URL))
        self.timeout = DEFAULT_TIMEOUT if isinstance(timeout, NotGiven) else timeout
        self.max_retries = max_retries
        self.webhook_secret = (
            webhook_secret if webhook_secret is not None else os.environ.get("FTSERVE_WEBHOOK_SECRET")
        )
        self._default_headers = dict(default_headers or {})

    @property
    def default_headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.api_key}",
            "Accept": "application/json",
            "User-Agent": f"ftserve-python/{__version__}",
            **self._default_headers,
        }

    def _request_kwargs(self, options: RequestOptions) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "method": options.method,
            "url": options.path.lstrip("/"),
            "params": flatten_params(options.params),
            "headers": {**self.default_headers, **options.headers},
            "timeout": self.timeout if isinstance(options.timeout, NotGiven) else options.timeout,
        }
        if options.json is not None:
            kwargs["json"] = options.json
        if options.content is not None:
            kwargs["content"] = options.content()
        return kwargs

    def _max_retries(self, options: RequestOptions) -> int:
        return self.max_retries if options.max_retries is None else options.max_retries

    @staticmethod
    def _should_retry(response: httpx.Response) -> bool:
        retry_after = parse_retry_after(response.headers)
        if retry_after is not None and retry_after > MAX_RETRY_AFTER:
            return False
        # ftserve marks its final 400s with x-should-retry: false; obey the server either way.
        hint = response.headers.get("x-should-retry")
        if hint == "true":
            return True
        if hint == "false":
            return False
        return response.status_code in (408, 409, 429) or response.status_code >= 500

    @staticmethod
    def _retry_delay(retries_done: int, headers: httpx.Headers | None) -> float:
        retry_after = parse_retry_after(headers) if headers is not None else None
        if retry_after is not None and 0 <= retry_after <= MAX_RETRY_AFTER:
            return retry_after
        delay = min(INITIAL_RETRY_DELAY * 2.0**retries_done, MAX_RETRY_DELAY)
        return delay * (1 - 0.25 * random.random())

    @staticmethod
    def _parse(cast_to: type[ModelT], response: httpx.Response) -> ModelT:
        try:
            body = response.json()
        except ValueError:
            raise APIResponseValidationError(
                response, response.text, message="Expected a JSON body."
            ) from None
        try:
            return cast_to.model_validate(body)
        except pydantic.ValidationError as exc:
            raise APIResponseValidationError(
                response, body, message=f"Unexpected {cast_to.__name__} from the API: {exc}"
            ) from exc

    @staticmethod
    def _parse_list(item: type[ModelT], response: httpx.Response) -> tuple[list[ModelT], bool]:
        body: Any = None
        try:
            body = response.json()
            data = [item.model_validate(x) for x in body["data"]]
        except (ValueError, KeyError, TypeError) as exc:  # pydantic.ValidationError is a ValueError
            raise APIResponseValidationError(
                response, body, message=f"Unexpected list of {item.__name__}: {exc}"
            ) from exc
        return data, bool(body.get("has_more", False))


class SyncAPIClient(BaseClient):
    _client: httpx.Client

    def __init__(self, *, http_client: httpx.Client | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client = http_client or httpx.Client(timeout=self.timeout, follow_redirects=True)
        self._client.base_url = self.base_url

    def request(self, options: RequestOptions) -> httpx.Response:
        """Send with retries. The response is read unless `options.stream` (then the caller closes it)."""
        max_retries = self._max_retries(options)
        retries_done = 0
        while True:
            request = self._client.build_request(**self._request_kwargs(options))
            try:
                response = self._client.send(request, stream=True)
            except httpx.TimeoutException as exc:
                if retries_done < max_retries:
                    self._sleep_before_retry(retries_done, None, request, exc)
                    retries_done += 1
                    continue
                raise APITimeoutError(request) from exc
            except httpx.TransportError as exc:
                if retries_done < max_retries:
                    self._sleep_before_retry(retries_done, None, request, exc)
                    retries_done += 1
                    continue
                raise APIConnectionError(request=request, message=f"Connection error: {exc}") from exc
            if response.is_error:
                if retries_done < max_retries and self._should_retry(response):
                    response.close()
                    self._sleep_before_retry(retries_done, response.headers, request, response.status_code)
                    retries_done += 1
                    continue
                response.read()
                raise make_status_error(response)
            if not options.stream:
                response.read()
            return response

    def _sleep_before_retry(
        self, retries_done: int, headers: httpx.Headers | None, request: httpx.Request, why: object
    ) -> None:
        delay = self._retry_delay(retries_done, headers)
        log.info("Retrying %s %s in %.2fs (%s)", request.method, request.url, delay, why)
        time.sleep(delay)

    def _get(self, path: str, cast_to: type[ModelT], *, params: Mapping[str, Any] | None = None) -> ModelT:
        return self._parse(cast_to, self.request(RequestOptions("GET", path, params=params)))

    def _post(self, path: str, cast_to: type[ModelT], *, body: Any = None, **options: Any) -> ModelT:
        return self._parse(cast_to, self.request(RequestOptions("POST", path, json=body, **options)))

    def _delete(self, path: str, cast_to: type[ModelT]) -> ModelT:
        return self._parse(cast_to, self.request(RequestOptions("DELETE", path)))

    def _get_api_list(
        self, path: str, item: type[ModelT], *, params: Mapping[str, Any] | None = None, cursor: bool = True
    ) -> SyncCursorPage[ModelT]:
        def fetch(after: str | None) -> SyncCursorPage[ModelT]:
            query = {**(params or {}), **({"after": after} if after else {})}
            data, has_more = self._parse_list(item, self.request(RequestOptions("GET", path, params=query)))
            return SyncCursorPage(data=data, has_more=has_more, fetch=fetch if cursor else None)

        return fetch(None)

    def close(self) -> None:
        self._client.close()


class AsyncAPIClient(BaseClient):
    _client: httpx.AsyncClient

    def __init__(self, *, http_client: httpx.AsyncClient | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client = http_client or httpx.AsyncClient(timeout=self.timeout, follow_redirects=True)
        self._client.base_url = self.base_url

    async def request(self, options: RequestOptions) -> httpx.Response:
        max_retries = self._max_retries(options)
        retries_done = 0
        while True:
            request = self._client.build_request(**self._request_kwargs(options))
            try:
                response = await self._client.send(request, stream=True)
            except httpx.TimeoutException as exc:
                if retries_done < max_retries:
                    await self._sleep_before_retry(retries_done, None, request, exc)
                    retries_done += 1
                    continue
                raise APITimeoutError(request) from exc
            except httpx.TransportError as exc:
                if retries_done < max_retries:
                    await self._sleep_before_retry(retries_done, None, request, exc)
                    retries_done += 1
                    continue
                raise APIConnectionError(request=request, message=f"Connection error: {exc}") from exc
            if response.is_error:
                if retries_done < max_retries and self._should_retry(response):
                    await response.aclose()
                    await self._sleep_before_retry(
                        retries_done, response.headers, request, response.status_code
                    )
                    retries_done += 1
                    continue
                await response.aread()
                raise make_status_error(response)
            if not options.stream:
                await response.aread()
            return response

    async def _sleep_before_retry(
        self, retries_done: int, headers: httpx.Headers | None, request: httpx.Request, why: object
    ) -> None:
        delay = self._retry_delay(retries_done, headers)
        log.info("Retrying %s %s in %.2fs (%s)", request.method, request.url, delay, why)
        await asyncio.sleep(delay)

    async def _get(
        self, path: str, cast_to: type[ModelT], *, params: Mapping[str, Any] | None = None
    ) -> ModelT:
        return self._parse(cast_to, await self.request(RequestOptions("GET", path, params=params)))

    async def _post(self, path: str, cast_to: type[ModelT], *, body: Any = None, **options: Any) -> ModelT:
        return self._parse(cast_to, await self.request(RequestOptions("POST", path, json=body, **options)))

    async def _delete(self, path: str, cast_to: type[ModelT]) -> ModelT:
        return self._parse(cast_to, await self.request(RequestOptions("DELETE", path)))

    def _get_api_list(
        self, path: str, item: type[ModelT], *, params: Mapping[str, Any] | None = None, cursor: bool = True
    ) -> AsyncPaginator[ModelT]:
        async def fetch(after: str | None) -> AsyncCursorPage[ModelT]:
            query = {**(params or {}), **({"after": after} if after else {})}
            response = await self.request(RequestOptions("GET", path, params=query))
            data, has_more = self._parse_list(item, response)
            return AsyncCursorPage(data=data, has_more=has_more, fetch=fetch if cursor else None)

        return AsyncPaginator(fetch)

    async def close(self) -> None:
        await self._client.aclose()
