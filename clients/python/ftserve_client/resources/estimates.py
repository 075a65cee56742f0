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
    validation_file: str | None,
    method: MethodParam | None,
    hyperparameters: Mapping[str, Any] | None,
    extra_body: Mapping[str, Any] | None,
) -> dict[str, Any]:
    body = job_create_body(
        model=model,
        training_file=training_file or "",
        validation_file=validation_file,
        method=method,
        hyperparameters=hyperparameters,
        suffix=None,
        seed=None,
        metadata=None,
        integrations=None,
        extra_body=extra_body,
    )
    if training_file is None:
        body.pop("training_file")
    return body


class Estimates(SyncAPIResource):
    def create(
        self,
        *,
        model: str,
        training_file: str | None = None,
        validation_file: str | None = None,
        method: MethodParam | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> Estimate:
        """Takes the arguments of `fine_tuning.jobs.create`; creates nothing."""
        body = _body(model, training_file, validation_file, method, hyperparameters, extra_body)
        return self._client._post("fine_tuning/estimates", Estimate, body=body)


class AsyncEstimates(AsyncAPIResource):
    async def create(
        self,
        *,
        model: str,
        training_file: str | None = None,
        validation_file: str | None = None,
        method: MethodParam | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> Estimate:
        body = _body(model, training_file, validation_file, method, hyperparameters, extra_body)
        return await self._client._post("fine_tuning/estimates", Estimate, body=body)
