"""/v1/models: base models (owned_by "system") and your fine-tuned ones. Ids may contain ':'."""

from __future__ import annotations

from .._resource import AsyncAPIResource, SyncAPIResource
from ..pagination import AsyncPaginator, SyncCursorPage
from ..types.models import Model, ModelDeleted

__all__ = ["Models", "AsyncModels"]


class Models(SyncAPIResource):
    def list(self) -> SyncCursorPage[Model]:
        return self._client._get_api_list("models", Model, cursor=False)

    def retrieve(self, model: str) -> Model:
        return self._client._get(f"models/{model}", Model)

    def delete(self, model: str) -> ModelDeleted:
        """Delete one of your fine-tuned models."""
        return self._client._delete(f"models/{model}", ModelDeleted)


class AsyncModels(AsyncAPIResource):
    def list(self) -> AsyncPaginator[Model]:
        return self._client._get_api_list("models", Model, cursor=False)

    async def retrieve(self, model: str) -> Model:
        return await self._client._get(f"models/{model}", Model)

    async def delete(self, model: str) -> ModelDeleted:
        return await self._client._delete(f"models/{model}", ModelDeleted)
