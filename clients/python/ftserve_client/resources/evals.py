"""/v1/evals, as openai-python shapes it: `client.evals`, `client.evals.runs`, `client.evals.runs.output_items`.
`runs.wait()` polls a run until it is done (its result_counts grow as items are graded)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import Any, Literal

from .._resource import AsyncAPIResource, SyncAPIResource
from ..pagination import AsyncPaginator, SyncCursorPage
from ..types.evals import Eval, EvalDeleted, EvalOutputItem, EvalRun, EvalRunDeleted

__all__ = ["Evals", "AsyncEvals", "Runs", "AsyncRuns", "OutputItems", "AsyncOutputItems"]

Order = Literal["asc", "desc"]


def _eval_body(
    name: str | None,
    data_source_config: Mapping[str, Any] | None,
    testing_criteria: list[Mapping[str, Any]] | None,
    metadata: Mapping[str, str] | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "data_source_config": data_source_config,
        "testing_criteria": testing_criteria,
        "metadata": metadata,
    }
    return {k: v for k, v in body.items() if v is not None}


class OutputItems(SyncAPIResource):
    def list(
        self,
        run_id: str,
        *,
        eval_id: str,
        after: str | None = None,
        limit: int | None = None,
        order: Order | None = None,
        status: Literal["pass", "fail", "error"] | None = None,
    ) -> SyncCursorPage[EvalOutputItem]:
        return self._client._get_api_list(
            f"evals/{eval_id}/runs/{run_id}/output_items",
            EvalOutputItem,
            params={"after": after, "limit": limit, "order": order, "status": status},
        )

    def retrieve(self, output_item_id: str, *, eval_id: str, run_id: str) -> EvalOutputItem:
        return self._client._get(
            f"evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}", EvalOutputItem
        )


class Runs(SyncAPIResource):
    @cached_property
    def output_items(self) -> OutputItems:
        return OutputItems(self._client)

    def create(
        self,
        eval_id: str,
        *,
        data_source: Mapping[str, Any],
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> EvalRun:
        """Sample `data_source["model"]` on every item and grade it, in the background. Two runs of one eval
        with different models compare them."""
        body: dict[str, Any] = {"data_source": data_source, "name": name, "metadata": metadata}
        return self._client._post(
            f"evals/{eval_id}/runs", EvalRun, body={k: v for k, v in body.items() if v is not None}
        )

    def retrieve(self, run_id: str, *, eval_id: str) -> EvalRun:
        return self._client._get(f"evals/{eval_id}/runs/{run_id}", EvalRun)

    def list(
        self,
        eval_id: str,
        *,
        after: str | None = None,
        limit: int | None = None,
        order: Order | None = None,
        status: str | None = None,
    ) -> SyncCursorPage[EvalRun]:
        return self._client._get_api_list(
            f"evals/{eval_id}/runs",
            EvalRun,
            params={"after": after, "limit": limit, "order": order, "status": status},
        )

    def cancel(self, run_id: str, *, eval_id: str) -> EvalRun:
        return self._client._post(f"evals/{eval_id}/runs/{run_id}/cancel", EvalRun)

    def delete(self, run_id: str, *, eval_id: str) -> EvalRunDeleted:
        return self._client._delete(f"evals/{eval_id}/runs/{run_id}", EvalRunDeleted)

    def wait(
        self,
        run_id: str,
        *,
        eval_id: str,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        on_update: Callable[[EvalRun], object] | None = None,
    ) -> EvalRun:
        """Poll until the run is completed, failed or canceled, and return it. `on_update` sees every poll.
        Raises TimeoutError after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = self.retrieve(run_id, eval_id=eval_id)
            if on_update is not None:
                on_update(run)
            if run.done:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Eval run {run_id} still {run.status} after {timeout}s")
            time.sleep(poll_interval)


class Evals(SyncAPIResource):
    @cached_property
    def runs(self) -> Runs:
        return Runs(self._client)

    def create(
        self,
        *,
        data_source_config: Mapping[str, Any],
        testing_criteria: list[Mapping[str, Any]],
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Eval:
        return self._client._post(
            "evals", Eval, body=_eval_body(name, data_source_config, testing_criteria, metadata)
        )

    def retrieve(self, eval_id: str) -> Eval:
        return self._client._get(f"evals/{eval_id}", Eval)

    def update(
        self, eval_id: str, *, name: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> Eval:
        return self._client._post(f"evals/{eval_id}", Eval, body=_eval_body(name, None, None, metadata))

    def list(
        self, *, after: str | None = None, limit: int | None = None, order: Order | None = None
    ) -> SyncCursorPage[Eval]:
        return self._client._get_api_list(
            "evals", Eval, params={"after": after, "limit": limit, "order": order}
        )

    def delete(self, eval_id: str) -> EvalDeleted:
        return self._client._delete(f"evals/{eval_id}", EvalDeleted)


class AsyncOutputItems(AsyncAPIResource):
    def list(
        self,
        run_id: str,
        *,
        eval_id: str,
        after: str | None = None,
        limit: int | None = None,
        order: Order | None = None,
        status: Literal["pass", "fail", "error"] | None = None,
    ) -> AsyncPaginator[EvalOutputItem]:
        return self._client._get_api_list(
            f"evals/{eval_id}/runs/{run_id}/output_items",
            EvalOutputItem,
            params={"after": after, "limit": limit, "order": order, "status": status},
        )

    async def retrieve(self, output_item_id: str, *, eval_id: str, run_id: str) -> EvalOutputItem:
        return await self._client._get(
            f"evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}", EvalOutputItem
        )


class AsyncRuns(AsyncAPIResource):
    @cached_property
    def output_items(self) -> AsyncOutputItems:
        return AsyncOutputItems(self._client)

    async def create(
        self,
        eval_id: str,
        *,
        data_source: Mapping[str, Any],
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> EvalRun:
        body: dict[str, Any] = {"data_source": data_source, "name": name, "metadata": metadata}
        return await self._client._post(
            f"evals/{eval_id}/runs", EvalRun, body={k: v for k, v in body.items() if v is not None}
        )

    async def retrieve(self, run_id: str, *, eval_id: str) -> EvalRun:
        return await self._client._get(f"evals/{eval_id}/runs/{run_id}", EvalRun)

    def list(
        self,
        eval_id: str,
        *,
        after: str | None = None,
        limit: int | None = None,
        order: Order | None = None,
        status: str | None = None,
    ) -> AsyncPaginator[EvalRun]:
        return self._client._get_api_list(
            f"evals/{eval_id}/runs",
            EvalRun,
            params={"after": after, "limit": limit, "order": order, "status": status},
        )

    async def cancel(self, run_id: str, *, eval_id: str) -> EvalRun:
        return await self._client._post(f"evals/{eval_id}/runs/{run_id}/cancel", EvalRun)

    async def delete(self, run_id: str, *, eval_id: str) -> EvalRunDeleted:
        return await self._client._delete(f"evals/{eval_id}/runs/{run_id}", EvalRunDeleted)

    async def wait(
        self,
        run_id: str,
        *,
        eval_id: str,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        on_update: Callable[[EvalRun], object] | None = None,
    ) -> EvalRun:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = await self.retrieve(run_id, eval_id=eval_id)
            if on_update is not None:
                on_update(run)
            if run.done:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Eval run {run_id} still {run.status} after {timeout}s")
            await asyncio.sleep(poll_interval)


class AsyncEvals(AsyncAPIResource):
    @cached_property
    def runs(self) -> AsyncRuns:
        return AsyncRuns(self._client)

    async def create(
        self,
        *,
        data_source_config: Mapping[str, Any],
        testing_criteria: list[Mapping[str, Any]],
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Eval:
        return await self._client._post(
            "evals", Eval, body=_eval_body(name, data_source_config, testing_criteria, metadata)
        )

    async def retrieve(self, eval_id: str) -> Eval:
        return await self._client._get(f"evals/{eval_id}", Eval)

    async def update(
        self, eval_id: str, *, name: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> Eval:
        return await self._client._post(f"evals/{eval_id}", Eval, body=_eval_body(name, None, None, metadata))

    def list(
        self, *, after: str | None = None, limit: int | None = None, order: Order | None = None
    ) -> AsyncPaginator[Eval]:
        return self._client._get_api_list(
            "evals", Eval, params={"after": after, "limit": limit, "order": order}
        )

    async def delete(self, eval_id: str) -> EvalDeleted:
        return await self._client._delete(f"evals/{eval_id}", EvalDeleted)
