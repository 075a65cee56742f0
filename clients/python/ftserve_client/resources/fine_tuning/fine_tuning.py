from __future__ import annotations

from functools import cached_property

from ..._resource import AsyncAPIResource, SyncAPIResource
from .alpha import Alpha, AsyncAlpha
from .jobs import AsyncJobs, Jobs

__all__ = ["FineTuning", "AsyncFineTuning"]


class FineTuning(SyncAPIResource):
    @cached_property
    def jobs(self) -> Jobs:
        return Jobs(self._client)

    @cached_property
    def alpha(self) -> Alpha:
        return Alpha(self._client)


class AsyncFineTuning(AsyncAPIResource):
    @cached_property
    def jobs(self) -> AsyncJobs:
        return AsyncJobs(self._client)

    @cached_property
    def alpha(self) -> AsyncAlpha:
        return AsyncAlpha(self._client)
