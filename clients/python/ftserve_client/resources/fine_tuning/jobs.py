"""/v1/fine_tuning/jobs, plus `wait()` and `follow()`, which poll the job and its events for you."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from ..._base_client import NOT_GIVEN, NotGiven, idempotency_headers
from ..._models import BaseModel
from ..._resource import AsyncAPIResource, SyncAPIResource
from ...pagination import AsyncPaginator, SyncCursorPage
from ...types.fine_tuning import TERMINAL_STATUSES, FineTuningJob, FineTuningJobEvent
from .checkpoints import AsyncCheckpoints, Checkpoints
from .exports import AsyncExports, Exports

if TYPE_CHECKING:
    from ..._client import AsyncClient, Client

__all__ = ["Jobs", "AsyncJobs", "JobFollower", "AsyncJobFollower"]

# a method's name, or OpenAI's method object, e.g. {"type": "reinforcement", "reinforcement": {"grader": ...}}
MethodParam = Literal["supervised", "dpo", "kto", "orpo", "simpo"] | Mapping[str, Any]
EVENTS_PAGE = 100


def job_create_body(
    *,
    model: str,
    training_file: str,
    validation_file: str | None,
    method: MethodParam | None,
    hyperparameters: Mapping[str, Any] | None,
    suffix: str | None,
    seed: int | None,
    metadata: Mapping[str, str] | None,
    integrations: list[dict[str, Any]] | None,
    priority: int | None,
    extra_body: Mapping[str, Any] | None,
    max_trained_tokens: int | None = None,
    max_cost: float | None = None,
) -> dict[str, Any]:
    """The JSON body of POST /fine_tuning/jobs. `hyperparameters` go where OpenAI wants them now:
    `method.<type>.hyperparameters` (the deprecated top-level field is never sent)."""
    method_obj: dict[str, Any] | None
    if method is None:
        method_obj = {"type": "supervised"} if hyperparameters is not None else None
    elif isinstance(method, str):
        method_obj = {"type": method}
    else:
        method_obj = {k: _plain(v) for k, v in method.items()}
    if hyperparameters is not None and method_obj is not None:
        kind = str(method_obj.get("type", "supervised"))
        section = dict(method_obj.get(kind) or {})
        if section.get("hyperparameters") is not None:
            raise TypeError("Pass hyperparameters once: in method or as hyperparameters=, not both.")
        section["hyperparameters"] = dict(hyperparameters)
        method_obj[kind] = section
    body: dict[str, Any] = {"model": model, "training_file": training_file}
    optional = {
        "validation_file": validation_file,
        "method": method_obj,
        "suffix": suffix,
        "seed": seed,
        "metadata": dict(metadata) if metadata is not None else None,
        "integrations": integrations,
        "priority": priority,
        "max_trained_tokens": max_trained_tokens,
        "max_cost": max_cost,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    body.update(extra_body or {})
    return body


def _plain(value: Any) -> Any:
    """A method section as JSON-ready data: typed ones (ReinforcementMethod, a grader) without their unset
    optional fields."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    return dict(value) if isinstance(value, Mapping) else value


def _caps(
    max_trained_tokens: int | None | NotGiven, max_cost: float | None | NotGiven
) -> dict[str, Any] | None:
    """The resume body: only the caps given (None is sent as null: no cap)."""
    body = {
        name: value
        for name, value in (("max_trained_tokens", max_trained_tokens), ("max_cost", max_cost))
        if not isinstance(value, NotGiven)
    }
    return body or None


class _EventCursor:
    """Turns the newest-first events API into "each event once, oldest first".

    Each poll reads from the newest event backwards, skipping ids already emitted, until it has passed
    OVERLAP events it had already emitted (or the first event). Reading past the first seen event catches
    one that committed late with an older position (PostgreSQL sequences are not commit-ordered).
    """

    OVERLAP = 20

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._collected: list[FineTuningJobEvent] = []
        self._overlap = 0

    def take(self, page: list[FineTuningJobEvent]) -> bool:
        """Take one page (newest first); True while older pages may still hold new events."""
        for event in page:
            if event.id in self.seen:
                self._overlap += 1
            else:
                self._collected.append(event)
        return self._overlap < self.OVERLAP

    def emit(self) -> list[FineTuningJobEvent]:
        ordered = list(reversed(self._collected))
        self.seen.update(e.id for e in ordered)
        self._collected, self._overlap = [], 0
        return ordered


class JobFollower:
    """Iterates a job's events as they arrive, oldest first, each once; ends when the job is done.
    `.job` is the latest snapshot of the job (refreshed each poll)."""

    def __init__(self, jobs: Jobs, job_id: str, *, poll_interval: float, timeout: float | None) -> None:
        self._jobs = jobs
        self.job_id = job_id
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.job: FineTuningJob | None = None
        self._cursor = _EventCursor()
        self._iterator = self._follow()

    def _new_events(self) -> list[FineTuningJobEvent]:
        after: str | None = None
        while True:
            page = self._jobs.list_events(self.job_id, after=after, limit=EVENTS_PAGE)
            if not (self._cursor.take(page.data) and page.has_more and page.data):
                return self._cursor.emit()
            after = page.data[-1].id

    def _follow(self) -> Iterator[FineTuningJobEvent]:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            # Status first, events second: once the status is final, that poll's events hold the last ones.
            self.job = self._jobs.retrieve(self.job_id)
            yield from self._new_events()
            if self.job.status in TERMINAL_STATUSES:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Job {self.job_id} still {self.job.status} after {self.timeout}s")
            time.sleep(self.poll_interval)

    def __iter__(self) -> Iterator[FineTuningJobEvent]:
        return self._iterator

    def __next__(self) -> FineTuningJobEvent:
        return next(self._iterator)


class AsyncJobFollower:
    def __init__(self, jobs: AsyncJobs, job_id: str, *, poll_interval: float, timeout: float | None) -> None:
        self._jobs = jobs
        self.job_id = job_id
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.job: FineTuningJob | None = None
        self._cursor = _EventCursor()
        self._iterator = self._follow()

    async def _new_events(self) -> list[FineTuningJobEvent]:
        after: str | None = None
        while True:
            page = await self._jobs.list_events(self.job_id, after=after, limit=EVENTS_PAGE)
            if not (self._cursor.take(page.data) and page.has_more and page.data):
                return self._cursor.emit()
            after = page.data[-1].id

    async def _follow(self) -> AsyncIterator[FineTuningJobEvent]:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            self.job = await self._jobs.retrieve(self.job_id)
            for event in await self._new_events():
                yield event
            if self.job.status in TERMINAL_STATUSES:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Job {self.job_id} still {self.job.status} after {self.timeout}s")
            await asyncio.sleep(self.poll_interval)

    def __aiter__(self) -> AsyncIterator[FineTuningJobEvent]:
        return self._iterator

    async def __anext__(self) -> FineTuningJobEvent:
        return await self._iterator.__anext__()


class Jobs(SyncAPIResource):
    def __init__(self, client: Client) -> None:
        super().__init__(client)

    @cached_property
    def checkpoints(self) -> Checkpoints:
        return Checkpoints(self._client)

    @cached_property
    def exports(self) -> Exports:
        return Exports(self._client)

    def create(
        self,
        *,
        model: str,
        training_file: str,
        validation_file: str | None = None,
        method: MethodParam | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        suffix: str | None = None,
        seed: int | None = None,
        metadata: Mapping[str, str] | None = None,
        integrations: list[dict[str, Any]] | None = None,
        priority: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        max_trained_tokens: int | None = None,
        max_cost: float | None = None,
    ) -> FineTuningJob:
        """Create a job. `method` is "supervised", "dpo", "kto", "orpo", "simpo" or OpenAI's method object;
        `hyperparameters` (OpenAI's plus ftserve's LoRA ones: lora_rank, lora_alpha, ...) land in
        `method.<type>`.
        `priority` (ftserve extension) orders the queue: higher goes first. `max_trained_tokens` and `max_cost`
        (extensions) pause the job once it reaches either; `resume` can raise them. `extra_body` adds fields this
        SDK does not know yet.

        Safe to retry: the call sends an `Idempotency-Key` (a new UUID per call unless you pass
        `idempotency_key`), the same on each of its automatic retries, so a retry after a lost response gets
        the job the first attempt created instead of a second one. Pass your own key to make your own
        retries of the call (within 24 h, with the same arguments) safe too."""
        body = job_create_body(
            model=model,
            training_file=training_file,
            validation_file=validation_file,
            method=method,
            hyperparameters=hyperparameters,
            suffix=suffix,
            seed=seed,
            metadata=metadata,
            integrations=integrations,
            priority=priority,
            extra_body=extra_body,
            max_trained_tokens=max_trained_tokens,
            max_cost=max_cost,
        )
        return self._client._post(
            "fine_tuning/jobs", FineTuningJob, body=body, headers=idempotency_headers(idempotency_key)
        )

    def list(
        self,
        *,
        after: str | None = None,
        limit: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> SyncCursorPage[FineTuningJob]:
        params = {"after": after, "limit": limit, "metadata": metadata}
        return self._client._get_api_list("fine_tuning/jobs", FineTuningJob, params=params)

    def retrieve(self, fine_tuning_job_id: str) -> FineTuningJob:
        return self._client._get(f"fine_tuning/jobs/{fine_tuning_job_id}", FineTuningJob)

    def cancel(self, fine_tuning_job_id: str) -> FineTuningJob:
        return self._client._post(f"fine_tuning/jobs/{fine_tuning_job_id}/cancel", FineTuningJob)

    def pause(self, fine_tuning_job_id: str) -> FineTuningJob:
        """Queued or running → paused: the worker checkpoints and frees itself."""
        return self._client._post(f"fine_tuning/jobs/{fine_tuning_job_id}/pause", FineTuningJob)

    def resume(
        self,
        fine_tuning_job_id: str,
        *,
        max_trained_tokens: int | None | NotGiven = NOT_GIVEN,
        max_cost: float | None | NotGiven = NOT_GIVEN,
    ) -> FineTuningJob:
        """Paused → queued: it continues from the pause checkpoint, on any worker. `max_trained_tokens` and
        `max_cost` change its caps (None removes one); a job paused at a cap needs that cap raised."""
        return self._client._post(
            f"fine_tuning/jobs/{fine_tuning_job_id}/resume",
            FineTuningJob,
            body=_caps(max_trained_tokens, max_cost),
        )

    def list_events(
        self, fine_tuning_job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> SyncCursorPage[FineTuningJobEvent]:
        """Newest first; iterating the page walks back to the first event."""
        return self._client._get_api_list(
            f"fine_tuning/jobs/{fine_tuning_job_id}/events",
            FineTuningJobEvent,
            params={"after": after, "limit": limit},
        )

    def follow(
        self, fine_tuning_job_id: str, *, poll_interval: float = 1.0, timeout: float | None = None
    ) -> JobFollower:
        """Yield the job's events as they arrive (oldest first, each once) until the job is done.

        follower = client.fine_tuning.jobs.follow(job.id)
        for event in follower:
            print(event.message)
        print(follower.job.status, follower.job.fine_tuned_model)
        """
        return JobFollower(self, fine_tuning_job_id, poll_interval=poll_interval, timeout=timeout)

    def wait(
        self,
        fine_tuning_job_id: str,
        *,
        on_event: Callable[[FineTuningJobEvent], object] | None = None,
        statuses: Collection[str] = TERMINAL_STATUSES,
        poll_interval: float = 1.0,
        timeout: float | None = None,
    ) -> FineTuningJob:
        """Block until the job reaches one of `statuses` (by default: succeeded, failed or cancelled) and
        return it. `on_event` gets each event once, oldest first. Raises TimeoutError after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        follower = JobFollower(self, fine_tuning_job_id, poll_interval=poll_interval, timeout=None)
        while True:
            follower.job = self.retrieve(fine_tuning_job_id)
            if on_event is not None:
                for event in follower._new_events():
                    on_event(event)
            if follower.job.status in statuses or follower.job.status in TERMINAL_STATUSES:
                return follower.job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Job {fine_tuning_job_id} still {follower.job.status} after {timeout}s")
            time.sleep(poll_interval)


class AsyncJobs(AsyncAPIResource):
    def __init__(self, client: AsyncClient) -> None:
        super().__init__(client)

    @cached_property
    def checkpoints(self) -> AsyncCheckpoints:
        return AsyncCheckpoints(self._client)

    @cached_property
    def exports(self) -> AsyncExports:
        return AsyncExports(self._client)

    async def create(
        self,
        *,
        model: str,
        training_file: str,
        validation_file: str | None = None,
        method: MethodParam | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        suffix: str | None = None,
        seed: int | None = None,
        metadata: Mapping[str, str] | None = None,
        integrations: list[dict[str, Any]] | None = None,
        priority: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        max_trained_tokens: int | None = None,
        max_cost: float | None = None,
    ) -> FineTuningJob:
        body = job_create_body(
            model=model,
            training_file=training_file,
            validation_file=validation_file,
            method=method,
            hyperparameters=hyperparameters,
            suffix=suffix,
            seed=seed,
            metadata=metadata,
            integrations=integrations,
            priority=priority,
            extra_body=extra_body,
            max_trained_tokens=max_trained_tokens,
            max_cost=max_cost,
        )
        return await self._client._post(
            "fine_tuning/jobs", FineTuningJob, body=body, headers=idempotency_headers(idempotency_key)
        )

    def list(
        self,
        *,
        after: str | None = None,
        limit: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> AsyncPaginator[FineTuningJob]:
        params = {"after": after, "limit": limit, "metadata": metadata}
        return self._client._get_api_list("fine_tuning/jobs", FineTuningJob, params=params)

    async def retrieve(self, fine_tuning_job_id: str) -> FineTuningJob:
        return await self._client._get(f"fine_tuning/jobs/{fine_tuning_job_id}", FineTuningJob)

    async def cancel(self, fine_tuning_job_id: str) -> FineTuningJob:
        return await self._client._post(f"fine_tuning/jobs/{fine_tuning_job_id}/cancel", FineTuningJob)

    async def pause(self, fine_tuning_job_id: str) -> FineTuningJob:
        return await self._client._post(f"fine_tuning/jobs/{fine_tuning_job_id}/pause", FineTuningJob)

    async def resume(
        self,
        fine_tuning_job_id: str,
        *,
        max_trained_tokens: int | None | NotGiven = NOT_GIVEN,
        max_cost: float | None | NotGiven = NOT_GIVEN,
    ) -> FineTuningJob:
        return await self._client._post(
            f"fine_tuning/jobs/{fine_tuning_job_id}/resume",
            FineTuningJob,
            body=_caps(max_trained_tokens, max_cost),
        )

    def list_events(
        self, fine_tuning_job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> AsyncPaginator[FineTuningJobEvent]:
        return self._client._get_api_list(
            f"fine_tuning/jobs/{fine_tuning_job_id}/events",
            FineTuningJobEvent,
            params={"after": after, "limit": limit},
        )

    def follow(
        self, fine_tuning_job_id: str, *, poll_interval: float = 1.0, timeout: float | None = None
    ) -> AsyncJobFollower:
        """`async for event in client.fine_tuning.jobs.follow(job.id): ...`"""
        return AsyncJobFollower(self, fine_tuning_job_id, poll_interval=poll_interval, timeout=timeout)

    async def wait(
        self,
        fine_tuning_job_id: str,
        *,
        on_event: Callable[[FineTuningJobEvent], object] | None = None,
        statuses: Collection[str] = TERMINAL_STATUSES,
        poll_interval: float = 1.0,
        timeout: float | None = None,
    ) -> FineTuningJob:
        deadline = None if timeout is None else time.monotonic() + timeout
        follower = AsyncJobFollower(self, fine_tuning_job_id, poll_interval=poll_interval, timeout=None)
        while True:
            follower.job = await self.retrieve(fine_tuning_job_id)
            if on_event is not None:
                for event in await follower._new_events():
                    on_event(event)
            if follower.job.status in statuses or follower.job.status in TERMINAL_STATUSES:
                return follower.job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Job {fine_tuning_job_id} still {follower.job.status} after {timeout}s")
            await asyncio.sleep(poll_interval)
