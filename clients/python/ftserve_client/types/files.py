"""Files: uploads for fine-tuning, their validation reports, deletion results."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .._models import BaseModel

__all__ = ["FileObject", "FileDeleted", "FileValidationReport", "ValidationLineError", "ValidationWarning"]


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    """Size of the upload in bytes."""
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None = None
    data_format: str | None = None
    """Extension: chat, prompt_completion, preference, sharegpt, alpaca or kto (docs/data.md)."""
    example_count: int | None = None
    """Extension: how many training examples the validator counted."""


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class ValidationLineError(BaseModel):
    line: int
    field: str | None = None
    code: str
    message: str


class ValidationWarning(BaseModel):
    """A known field that training ignores (an id, metadata, ...), once per field for the whole file."""

    field: str
    code: str
    line: int
    count: int
    message: str


class FileValidationReport(BaseModel):
    """Extension: every validation error of an upload (the first 100), with line numbers."""

    object: Literal["file.validation_report"] = "file.validation_report"
    file_id: str
    status: Literal["uploaded", "processed", "error"]
    data_format: str | None = None
    example_count: int | None = None
    error_count: int = 0
    errors: list[ValidationLineError] = Field(default_factory=list)
    layout: str | None = None
    """The layout the examples came in: openai_chat, trl_preference, text, ... (docs/data.md)."""
    warnings: list[ValidationWarning] = Field(default_factory=list)
