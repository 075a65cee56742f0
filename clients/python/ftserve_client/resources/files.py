"""/v1/files: upload (streamed, with progress), list, retrieve, content, delete, validation report."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Literal

import httpx

from .._base_client import RequestOptions, idempotency_headers
from .._resource import AsyncAPIResource, SyncAPIResource
from .._uploads import FileTypes, MultipartUpload, ProgressCallback
from ..pagination import AsyncPaginator, SyncCursorPage
from ..types.files import FileDeleted, FileObject, FileValidationReport

__all__ = ["Files", "AsyncFiles", "BinaryContent", "AsyncBinaryContent"]


def _fields(purpose: str, expires_after_seconds: int | None) -> dict[str, str]:
    fields = {"purpose": purpose}
    if expires_after_seconds is not None:
        fields["expires_after[anchor]"] = "created_at"
        fields["expires_after[seconds]"] = str(expires_after_seconds)
    return fields


class BinaryContent:
    """A file's bytes. Read with `.content`/`.text`, or stream to disk with `write_to_file`."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response

    @property
    def content(self) -> bytes:
        return self.response.read()

    @property
    def text(self) -> str:
        self.response.read()
        return self.response.text

    def iter_bytes(self, chunk_size: int | None = None) -> Iterator[bytes]:
        return self.response.iter_bytes(chunk_size)

    def write_to_file(self, path: str | Path) -> None:
        with open(path, "wb") as handle:
            for chunk in self.response.iter_bytes():
                handle.write(chunk)

    def close(self) -> None:
        self.response.close()


class AsyncBinaryContent:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response

    async def read(self) -> bytes:
        return await self.response.aread()

    async def text(self) -> str:
        await self.response.aread()
        return self.response.text

    def iter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        return self.response.aiter_bytes(chunk_size)

    async def write_to_file(self, path: str | Path) -> None:
        with open(path, "wb") as handle:
            async for chunk in self.response.aiter_bytes():
                handle.write(chunk)

    async def close(self) -> None:
        await self.response.aclose()


class Files(SyncAPIResource):
    def create(
        self,
        *,
        file: FileTypes,
        purpose: Literal["fine-tune"] | str = "fine-tune",
        expires_after_seconds: int | None = None,
        on_progress: ProgressCallback | None = None,
        idempotency_key: str | None = None,
    ) -> FileObject:
        """Upload a JSONL training file. The server validates it line by line while it streams in; a
        rejected file raises `BadRequestError` whose `file_id` names the report (`validation_report`).

        `file` is a path, bytes, a binary file object, or `(filename, any of those)`.
        `on_progress(bytes_sent, total)` is called as chunks go out.

        Safe to retry: the call sends an `Idempotency-Key` (a new UUID per call unless you pass
        `idempotency_key`), the same on each of its automatic retries, so a retry after a lost response gets
        the file the first attempt created instead of a second copy. Paths, bytes and seekable file objects
        are re-sent from the start on a retry; a non-seekable stream is sent once (no automatic retry).
        """
        upload = MultipartUpload.from_file(file, _fields(purpose, expires_after_seconds), on_progress)
        response = self._client.request(
            RequestOptions(
                "POST",
                "files",
                content=upload.iter_body,
                headers={**upload.headers, **idempotency_headers(idempotency_key)},
                max_retries=None if upload.retryable else 0,
            )
        )
        return self._client._parse(FileObject, response)

    def list(
        self,
        *,
        purpose: str | None = None,
        limit: int | None = None,
        order: Literal["asc", "desc"] | None = None,
        after: str | None = None,
    ) -> SyncCursorPage[FileObject]:
        params = {"purpose": purpose, "limit": limit, "order": order, "after": after}
        return self._client._get_api_list("files", FileObject, params=params)

    def retrieve(self, file_id: str) -> FileObject:
        return self._client._get(f"files/{file_id}", FileObject)

    def content(self, file_id: str) -> BinaryContent:
        """The bytes as uploaded, streamed: `.content`, `.text` or `.write_to_file(path)`."""
        response = self._client.request(RequestOptions("GET", f"files/{file_id}/content", stream=True))
        return BinaryContent(response)

    def delete(self, file_id: str) -> FileDeleted:
        return self._client._delete(f"files/{file_id}", FileDeleted)

    def validation_report(self, file_id: str) -> FileValidationReport:
        """ftserve extension: every validation error of an upload (the first 100), with line numbers."""
        return self._client._get(f"files/{file_id}/validation", FileValidationReport)


class AsyncFiles(AsyncAPIResource):
    async def create(
        self,
        *,
        file: FileTypes,
        purpose: Literal["fine-tune"] | str = "fine-tune",
        expires_after_seconds: int | None = None,
        on_progress: ProgressCallback | None = None,
        idempotency_key: str | None = None,
    ) -> FileObject:
        upload = MultipartUpload.from_file(file, _fields(purpose, expires_after_seconds), on_progress)
        response = await self._client.request(
            RequestOptions(
                "POST",
                "files",
                content=upload.aiter_body,
                headers={**upload.headers, **idempotency_headers(idempotency_key)},
                max_retries=None if upload.retryable else 0,
            )
        )
        return self._client._parse(FileObject, response)

    def list(
        self,
        *,
        purpose: str | None = None,
        limit: int | None = None,
        order: Literal["asc", "desc"] | None = None,
        after: str | None = None,
    ) -> AsyncPaginator[FileObject]:
        params = {"purpose": purpose, "limit": limit, "order": order, "after": after}
        return self._client._get_api_list("files", FileObject, params=params)

    async def retrieve(self, file_id: str) -> FileObject:
        return await self._client._get(f"files/{file_id}", FileObject)

    async def content(self, file_id: str) -> AsyncBinaryContent:
        response = await self._client.request(RequestOptions("GET", f"files/{file_id}/content", stream=True))
        return AsyncBinaryContent(response)

    async def delete(self, file_id: str) -> FileDeleted:
        return await self._client._delete(f"files/{file_id}", FileDeleted)

    async def validation_report(self, file_id: str) -> FileValidationReport:
        return await self._client._get(f"files/{file_id}/validation", FileValidationReport)
