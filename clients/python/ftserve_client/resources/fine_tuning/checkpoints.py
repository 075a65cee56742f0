"""/v1/fine_tuning/jobs/{id}/checkpoints: newest first; the last 3 are kept."""

from __future__ import annotations

from ..._resource import AsyncAPIResource, SyncAPIResource
from ...pagination import AsyncPaginator, SyncCursorPage
from ...types.fine_tuning import FineTuningJobCheckpoint

__all__ = ["Checkpoints", "AsyncCheckpoints"]


class Checkpoints(SyncAPIResource):
    def list(
        self, fine_tuning_job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> SyncCursorPage[FineTuningJobCheckpoint]:
        return self._client._get_api_list(
            f"fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
            FineTuningJobCheckpoint,
            params={"after": after, "limit": limit},
        )


class AsyncCheckpoints(AsyncAPIResource):
    def list(
        self, fine_tuning_job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> AsyncPaginator[FineTuningJobCheckpoint]:
        return self._client._get_api_list(
            f"fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
            FineTuningJobCheckpoint,
            params={"after": after, "limit": limit},
        )
