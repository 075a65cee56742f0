"""Exports of a fine-tuned adapter: the adapter zip, a merged 16-bit model, or a GGUF file (an ftserve extension)."""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

from pydantic import Field

from .._models import BaseModel

__all__ = ["ExportFormat", "ExportStatus", "FineTuningJobExport", "FineTuningJobExportError"]

ExportFormat: TypeAlias = Literal["adapter", "merged", "gguf"]
ExportStatus: TypeAlias = Literal["queued", "running", "succeeded", "failed"]


class FineTuningJobExportError(BaseModel):
    code: str
    message: str


class FineTuningJobExport(BaseModel):
    id: str
    object: Literal["fine_tuning.job.export"] = "fine_tuning.job.export"
    job_id: str
    format: ExportFormat
    status: ExportStatus
    model: str
    """What is exported: the fine-tuned model, or a checkpoint's model name."""
    checkpoint_step: int | None = None
    file_id: str | None = None
    """Once succeeded: the File to download (`client.files.content(file_id)`)."""
    bytes: int | None = None
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None
    error: FineTuningJobExportError | None = None
    checks: dict[str, Any] = Field(default_factory=dict)
    """What was checked before the file was offered, one record per check."""

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed")
