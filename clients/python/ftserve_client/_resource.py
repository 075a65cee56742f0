from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._client import AsyncClient, Client


class SyncAPIResource:
    """A group of endpoints bound to a client: `client.files`, `client.fine_tuning.jobs`, ..."""

    def __init__(self, client: Client) -> None:
        self._client = client


class AsyncAPIResource:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client
