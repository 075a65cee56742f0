"""OpenAI wire models: every request and response body that mirrors OpenAI's API lives here.

Shapes follow `shared/reference/openai_api.md` and the OpenAPI spec. Our extensions are extra fields that the
official SDK keeps in `model_extra` and otherwise ignores.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class OpenAIBaseModel(BaseModel):
    # Newer SDKs may send fields we do not know yet; ignore them rather than 422.
    model_config = ConfigDict(extra="ignore")


class ErrorDetail(OpenAIBaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(OpenAIBaseModel):
    error: ErrorDetail


class ListResponse(OpenAIBaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = False


class CursorListResponse(ListResponse[T], Generic[T]):
    first_id: str | None = None
    last_id: str | None = None


FilePurpose = Literal[
    "assistants",
    "assistants_output",
    "batch",
    "batch_output",
    "fine-tune",
    "fine-tune-results",
    "vision",
    "user_data",
    "evals",
]


class FileObject(OpenAIBaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None = None
    # Extensions: what the validator found.
    data_format: str | None = Field(None, description="chat, prompt_completion, preference, sharegpt or alpaca")
    example_count: int | None = None


class FileDeleted(OpenAIBaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class ValidationLineError(OpenAIBaseModel):
    line: int
    field: str | None = None
    code: str
    message: str


class FileValidationReport(OpenAIBaseModel):
    """Extension: the full validation report of an upload (the first 100 errors)."""

    object: Literal["file.validation_report"] = "file.validation_report"
    file_id: str
    status: Literal["uploaded", "processed", "error"]
    data_format: str | None = None
    example_count: int | None = None
    error_count: int = 0
    errors: list[ValidationLineError] = Field(default_factory=list)


def file_object(row: Any) -> FileObject:
    return FileObject(
        id=row.id,
        bytes=row.bytes,
        created_at=row.created_at,
        expires_at=row.expires_at,
        filename=row.filename,
        purpose=row.purpose,
        status=row.status,
        status_details=row.status_details,
        data_format=row.data_format,
        example_count=row.example_count,
    )
