"""`Client` and `AsyncClient`: the resource tree, settings from the environment, context managers."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from types import TracebackType

import httpx

from ._base_client import NOT_GIVEN, AsyncAPIClient, NotGiven, SyncAPIClient, Timeout
from ._constants import DEFAULT_MAX_RETRIES
from .resources.chat import AsyncChat, Chat
from .resources.estimates import AsyncEstimates, Estimates
from .resources.evals import AsyncEvals, Evals
from .resources.files import AsyncFiles, Files
from .resources.fine_tuning import AsyncFineTuning, FineTuning
from .resources.models import AsyncModels, Models
from .resources.organization import AsyncOrganization, Organization
from .resources.webhooks import AsyncWebhooks, Webhooks

__all__ = ["Client", "AsyncClient"]


class Client(SyncAPIClient):
    """A synchronous ftserve client.

    client = Client()   # FTSERVE_API_KEY, FTSERVE_BASE_URL (default http://127.0.0.1:8000/v1)
    f = client.files.create(file="train.jsonl")
    job = client.fine_tuning.jobs.create(model="demo-tiny", training_file=f.id)
    job = client.fine_tuning.jobs.wait(job.id, on_event=lambda e: print(e.message))
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | httpx.URL | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
        webhook_secret: str | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
            webhook_secret=webhook_secret,
            http_client=http_client,
        )

    @cached_property
    def files(self) -> Files:
        return Files(self)

    @cached_property
    def fine_tuning(self) -> FineTuning:
        return FineTuning(self)

    @cached_property
    def models(self) -> Models:
        return Models(self)

    @cached_property
    def chat(self) -> Chat:
        return Chat(self)

    @cached_property
    def estimates(self) -> Estimates:
        return Estimates(self)

    @cached_property
    def evals(self) -> Evals:
        return Evals(self)

    @cached_property
    def webhooks(self) -> Webhooks:
        return Webhooks(self)

    @cached_property
    def organization(self) -> Organization:
        """Usage, API keys and the audit log (needs an admin-scoped key)."""
        return Organization(self)

    def with_options(
        self,
        *,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        max_retries: int | None = None,
        default_headers: Mapping[str, str] | None = None,
    ) -> Client:
        """A copy with other request options, sharing this client's connection pool:
        `client.with_options(max_retries=5).files.list()`."""
        return Client(
            api_key=self.api_key,
            base_url=self.base_url,
            timeout=self.timeout if isinstance(timeout, NotGiven) else timeout,
            max_retries=self.max_retries if max_retries is None else max_retries,
            default_headers={**self._default_headers, **(default_headers or {})},
            webhook_secret=self.webhook_secret,
            http_client=self._client,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncClient(AsyncAPIClient):
    """The asyncio twin of `Client`: the same resources, with `await` (and `async for` over lists)."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | httpx.URL | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
        webhook_secret: str | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
            webhook_secret=webhook_secret,
            http_client=http_client,
        )

    @cached_property
    def files(self) -> AsyncFiles:
        return AsyncFiles(self)

    @cached_property
    def fine_tuning(self) -> AsyncFineTuning:
        return AsyncFineTuning(self)

    @cached_property
    def models(self) -> AsyncModels:
        return AsyncModels(self)

    @cached_property
    def chat(self) -> AsyncChat:
        return AsyncChat(self)

    @cached_property
    def estimates(self) -> AsyncEstimates:
        return AsyncEstimates(self)

    @cached_property
    def evals(self) -> AsyncEvals:
        return AsyncEvals(self)

    @cached_property
    def webhooks(self) -> AsyncWebhooks:
        return AsyncWebhooks(self)

    @cached_property
    def organization(self) -> AsyncOrganization:
        return AsyncOrganization(self)

    def with_options(
        self,
        *,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        max_retries: int | None = None,
        default_headers: Mapping[str, str] | None = None,
    ) -> AsyncClient:
        return AsyncClient(
            api_key=self.api_key,
            base_url=self.base_url,
            timeout=self.timeout if isinstance(timeout, NotGiven) else timeout,
            max_retries=self.max_retries if max_retries is None else max_retries,
            default_headers={**self._default_headers, **(default_headers or {})},
            webhook_secret=self.webhook_secret,
            http_client=self._client,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
