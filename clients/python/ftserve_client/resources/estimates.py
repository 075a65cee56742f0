"""POST /v1/fine_tuning/estimates: what a job would need (VRAM, GPU class) before you create it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._resource import AsyncAPIResource, SyncAPIResource
from ..types.estimates import Estimate
from .fine_tuning.jobs import MethodParam, job_create_body

__all__ = ["Estimates", "AsyncEstimates"]


def _body(
    model: str,
    training_file: str | None,
    n_examples: int | None,
    max_seq_length: int | None,
    method: MethodParam | None,
    hyperparameters: Mapping[str, Any] | None,
    extra_body: Mapping[str, Any] | None,
) -> dict[str, Any]:
    body = job_create_body(
        model=model,
        training_file=training_file or "",
        validation_file=None,
        method=method,
        hyperparameters=hyperparameters,
        suffix=None,
        seed=None,
        metadata=None,
        integrations=None,
        priority=None,
        extra_body=None,
    )
    if training_file is None:
        body.pop("training_file")
    body.update({k: v for k, v in {"n_examples": n_examples, "max_seq_length": max_seq_length}.items() if v})
    body.update(extra_body or {})
    return body


class Estimates(SyncAPIResource):
    def create(
        self,
        *,
        model: str,
        training_file: str | None = None,
        n_examples: int | None = None,
        max_seq_length: int | None = None,
        method: MethodParam | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> Estimate:
        """The memory the job would reserve, itemised, and the live GPU classes that fit it; creates
        nothing. Takes `fine_tuning.jobs.create`'s arguments; without a `training_file` yet, give
        `n_examples` (and `max_seq_length`) instead."""
        body = _body(model, training_file, n_examples, max_seq_length, method, hyperparameters, extra_body)
        return self._client._post("fine_tuning/estimates", Estimate, body=body)


class AsyncEstimates(AsyncAPIResource):
    async def create(
        self,
        *,
        model: str,
        training_file: str | None = None,
        n_examples: int | None = None,
        max_seq_length: int | None = None,
        method: MethodParam | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> Estimate:
        body = _body(model, training_file, n_examples, max_seq_length, method, hyperparameters, extra_body)
        return await self._client._post("fine_tuning/estimates", Estimate, body=body)
