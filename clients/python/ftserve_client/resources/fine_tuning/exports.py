"""/v1/fine_tuning/jobs/{id}/exports: the adapter zip, a merged 16-bit model or a GGUF file of a job, made and
checked by a worker, downloaded as a File. `download()` waits for the export and writes the file."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..._exceptions import FtserveError
from ..._resource import AsyncAPIResource, SyncAPIResource
from ...pagination import AsyncPaginator, SyncCursorPage
from ...types.exports import ExportFormat, FineTuningJobExport

if TYPE_CHECKING:
    from ...resources.files import AsyncBinaryContent, BinaryContent

__all__ = ["Exports", "AsyncExports", "ExportFailedError"]

# (bytes written so far, total bytes or None)
ProgressCallback = Callable[[int, "int | None"], object]


class ExportFailedError(FtserveError):
    """The export failed (or a check of it did): nothing was offered. `export` says why (`error`, `checks`)."""

    def __init__(self, export: FineTuningJobExport) -> None:
        reason = export.error.message if export.error else "no reason given"
        super().__init__(f"Export {export.id} ({export.format}) failed: {reason}")
        self.export = export


def _body(format: ExportFormat, checkpoint: str | int | None) -> dict[str, object]:
    body: dict[str, object] = {"format": format}
    if checkpoint is not None:
        body["checkpoint"] = checkpoint
    return body


def _target(path: str | Path, filename: str) -> Path:
    """A directory gets the file under its own name; anything else is the file's path."""
    target = Path(path)
    return target / filename if target.is_dir() else target


class Exports(SyncAPIResource):
    def create(
        self, fine_tuning_job_id: str, *, format: ExportFormat, checkpoint: str | int | None = None
    ) -> FineTuningJobExport:
        """Queue an export of the job's adapter: `format` "adapter", "merged" or "gguf". `checkpoint` (an
        ftckpt- id, a checkpoint model name or a step number) exports that checkpoint instead."""
        return self._client._post(
            f"fine_tuning/jobs/{fine_tuning_job_id}/exports",
            FineTuningJobExport,
            body=_body(format, checkpoint),
        )

    def retrieve(self, fine_tuning_job_id: str, export_id: str) -> FineTuningJobExport:
        return self._client._get(
            f"fine_tuning/jobs/{fine_tuning_job_id}/exports/{export_id}", FineTuningJobExport
        )

    def list(
        self, fine_tuning_job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> SyncCursorPage[FineTuningJobExport]:
        """Newest first."""
        return self._client._get_api_list(
            f"fine_tuning/jobs/{fine_tuning_job_id}/exports",
            FineTuningJobExport,
            params={"after": after, "limit": limit},
        )

    def wait(
        self,
        fine_tuning_job_id: str,
        export_id: str,
        *,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        on_update: Callable[[FineTuningJobExport], object] | None = None,
    ) -> FineTuningJobExport:
        """Poll until the export succeeded or failed, and return it (check `.status`). `on_update` sees every
        poll. Raises TimeoutError after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            export = self.retrieve(fine_tuning_job_id, export_id)
            if on_update is not None:
                on_update(export)
            if export.done:
                return export
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Export {export_id} still {export.status} after {timeout}s")
            time.sleep(poll_interval)

    def download(
        self,
        fine_tuning_job_id: str,
        export_id: str,
        path: str | Path,
        *,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        on_update: Callable[[FineTuningJobExport], object] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Path:
        """Wait for the export, then stream its file to `path` (into it, under the file's name, if `path` is a
        directory). Returns where it was written. Raises ExportFailedError if the export failed."""
        export = self.wait(
            fine_tuning_job_id, export_id, poll_interval=poll_interval, timeout=timeout, on_update=on_update
        )
        if export.status != "succeeded" or export.file_id is None:
            raise ExportFailedError(export)
        target = _target(path, self._client.files.retrieve(export.file_id).filename)
        content: BinaryContent = self._client.files.content(export.file_id)
        written = 0
        try:
            with open(target, "wb") as handle:
                for chunk in content.iter_bytes():
                    handle.write(chunk)
                    written += len(chunk)
                    if on_progress is not None:
                        on_progress(written, export.bytes)
        finally:
            content.close()
        return target


class AsyncExports(AsyncAPIResource):
    async def create(
        self, fine_tuning_job_id: str, *, format: ExportFormat, checkpoint: str | int | None = None
    ) -> FineTuningJobExport:
        return await self._client._post(
            f"fine_tuning/jobs/{fine_tuning_job_id}/exports",
            FineTuningJobExport,
            body=_body(format, checkpoint),
        )

    async def retrieve(self, fine_tuning_job_id: str, export_id: str) -> FineTuningJobExport:
        return await self._client._get(
            f"fine_tuning/jobs/{fine_tuning_job_id}/exports/{export_id}", FineTuningJobExport
        )

    def list(
        self, fine_tuning_job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> AsyncPaginator[FineTuningJobExport]:
        return self._client._get_api_list(
            f"fine_tuning/jobs/{fine_tuning_job_id}/exports",
            FineTuningJobExport,
            params={"after": after, "limit": limit},
        )

    async def wait(
        self,
        fine_tuning_job_id: str,
        export_id: str,
        *,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        on_update: Callable[[FineTuningJobExport], object] | None = None,
    ) -> FineTuningJobExport:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            export = await self.retrieve(fine_tuning_job_id, export_id)
            if on_update is not None:
                on_update(export)
            if export.done:
                return export
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Export {export_id} still {export.status} after {timeout}s")
            await asyncio.sleep(poll_interval)

    async def download(
        self,
        fine_tuning_job_id: str,
        export_id: str,
        path: str | Path,
        *,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        on_update: Callable[[FineTuningJobExport], object] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Path:
        export = await self.wait(
            fine_tuning_job_id, export_id, poll_interval=poll_interval, timeout=timeout, on_update=on_update
        )
        if export.status != "succeeded" or export.file_id is None:
            raise ExportFailedError(export)
        target = _target(path, (await self._client.files.retrieve(export.file_id)).filename)
        content: AsyncBinaryContent = await self._client.files.content(export.file_id)
        written = 0
        try:
            with open(target, "wb") as handle:
                async for chunk in content.iter_bytes():
                    handle.write(chunk)
                    written += len(chunk)
                    if on_progress is not None:
                        on_progress(written, export.bytes)
        finally:
            await content.close()
        return target
