"""/v1/fine_tuning/alpha/graders: check a reinforcement grader, or score one sample with it (OpenAI's
`client.fine_tuning.alpha.graders`)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any

from ..._models import BaseModel
from ..._resource import AsyncAPIResource, SyncAPIResource
from ...types.graders import GraderRunResponse, GraderValidateResponse

__all__ = ["Alpha", "AsyncAlpha", "Graders", "AsyncGraders"]

GraderParam = BaseModel | Mapping[str, Any]


def _grader(grader: GraderParam) -> dict[str, Any]:
    # exclude_none, not exclude_unset: a typed grader's `type` is a default, and the server needs it
    return (
        grader.model_dump(mode="json", exclude_none=True) if isinstance(grader, BaseModel) else dict(grader)
    )


def _run_body(grader: GraderParam, model_sample: str, item: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"grader": _grader(grader), "model_sample": model_sample}
    if item is not None:
        body["item"] = item
    return body


class Graders(SyncAPIResource):
    def run(self, *, grader: GraderParam, model_sample: str, item: Any = None) -> GraderRunResponse:
        """Score `model_sample` (the `sample` namespace) for `item` (the `item` namespace) with the grader. A
        grader the server cannot use is a BadRequestError naming the field."""
        return self._client._post(
            "fine_tuning/alpha/graders/run", GraderRunResponse, body=_run_body(grader, model_sample, item)
        )

    def validate(self, *, grader: GraderParam) -> GraderValidateResponse:
        """The grader back when the server can use it; else a BadRequestError naming the bad field."""
        return self._client._post(
            "fine_tuning/alpha/graders/validate", GraderValidateResponse, body={"grader": _grader(grader)}
        )


class AsyncGraders(AsyncAPIResource):
    async def run(self, *, grader: GraderParam, model_sample: str, item: Any = None) -> GraderRunResponse:
        return await self._client._post(
            "fine_tuning/alpha/graders/run", GraderRunResponse, body=_run_body(grader, model_sample, item)
        )

    async def validate(self, *, grader: GraderParam) -> GraderValidateResponse:
        return await self._client._post(
            "fine_tuning/alpha/graders/validate", GraderValidateResponse, body={"grader": _grader(grader)}
        )


class Alpha(SyncAPIResource):
    @cached_property
    def graders(self) -> Graders:
        return Graders(self._client)


class AsyncAlpha(AsyncAPIResource):
    @cached_property
    def graders(self) -> AsyncGraders:
        return AsyncGraders(self._client)
