"""Cursor pages: `list()` returns the first page; iterating it walks every item of every page.

page = client.fine_tuning.jobs.list(limit=20)
page.data, page.has_more          # this page only
for job in page: ...              # every job, fetching pages as needed (`after=<last id>`)
for p in page.iter_pages(): ...   # page by page
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["SyncCursorPage", "AsyncCursorPage", "AsyncPaginator"]


def _last_id(data: list[Any]) -> str | None:
    return getattr(data[-1], "id", None) if data else None


class SyncCursorPage(Generic[T]):
    data: list[T]
    has_more: bool

    def __init__(
        self, *, data: list[T], has_more: bool, fetch: Callable[[str | None], SyncCursorPage[T]] | None
    ) -> None:
        self.data = data
        self.has_more = has_more
        self._fetch = fetch

    def has_next_page(self) -> bool:
        return self.has_more and self._fetch is not None and _last_id(self.data) is not None

    def next_page_info(self) -> dict[str, str] | None:
        after = _last_id(self.data)
        return {"after": after} if self.has_next_page() and after else None

    def get_next_page(self) -> SyncCursorPage[T]:
        info = self.next_page_info()
        if info is None or self._fetch is None:
            raise RuntimeError("No next page; check has_next_page() first.")
        return self._fetch(info["after"])

    def iter_pages(self) -> Iterator[SyncCursorPage[T]]:
        page = self
        while True:
            yield page
            if not page.has_next_page():
                return
            page = page.get_next_page()

    def __iter__(self) -> Iterator[T]:
        for page in self.iter_pages():
            yield from page.data

    def __repr__(self) -> str:
        return f"{type(self).__name__}(data=[{len(self.data)} items], has_more={self.has_more})"


class AsyncCursorPage(Generic[T]):
    data: list[T]
    has_more: bool

    def __init__(
        self,
        *,
        data: list[T],
        has_more: bool,
        fetch: Callable[[str | None], Awaitable[AsyncCursorPage[T]]] | None,
    ) -> None:
        self.data = data
        self.has_more = has_more
        self._fetch = fetch

    def has_next_page(self) -> bool:
        return self.has_more and self._fetch is not None and _last_id(self.data) is not None

    def next_page_info(self) -> dict[str, str] | None:
        after = _last_id(self.data)
        return {"after": after} if self.has_next_page() and after else None

    async def get_next_page(self) -> AsyncCursorPage[T]:
        info = self.next_page_info()
        if info is None or self._fetch is None:
            raise RuntimeError("No next page; check has_next_page() first.")
        return await self._fetch(info["after"])

    async def iter_pages(self) -> AsyncIterator[AsyncCursorPage[T]]:
        page = self
        while True:
            yield page
            if not page.has_next_page():
                return
            page = await page.get_next_page()

    async def __aiter__(self) -> AsyncIterator[T]:
        async for page in self.iter_pages():
            for item in page.data:
                yield item

    def __repr__(self) -> str:
        return f"{type(self).__name__}(data=[{len(self.data)} items], has_more={self.has_more})"


class AsyncPaginator(Generic[T]):
    """What async `list()` returns: `await` it for the first page, or `async for` over every item."""

    def __init__(self, fetch: Callable[[str | None], Awaitable[AsyncCursorPage[T]]]) -> None:
        self._fetch = fetch

    def __await__(self) -> Generator[Any, None, AsyncCursorPage[T]]:
        return self._fetch(None).__await__()

    async def __aiter__(self) -> AsyncIterator[T]:
        page = await self._fetch(None)
        async for item in page:
            yield item
