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
    data_format: str | None = Field(
        None, description="chat, prompt_completion, preference, sharegpt or alpaca"
    )
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


# --- Fine-tuning jobs ----------------------------------------------------------------------------------------


class MethodSection(OpenAIBaseModel):
    # Kept loose here: core.hyperparameters validates it and names the bad field.
    hyperparameters: dict[str, Any] | None = None


class FineTuneMethod(OpenAIBaseModel):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: MethodSection | None = None
    dpo: MethodSection | None = None
    reinforcement: dict[str, Any] | None = None


class CreateFineTuningJobRequest(OpenAIBaseModel):
    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    hyperparameters: dict[str, Any] | None = Field(
        None, description="Deprecated: use method.*.hyperparameters."
    )
    suffix: str | None = Field(None, min_length=1, max_length=64)
    seed: int | None = Field(None, ge=0, le=2_147_483_647)
    metadata: dict[str, str] | None = None
    method: FineTuneMethod | None = None
    integrations: list[dict[str, Any]] | None = None


class FineTuningJobError(OpenAIBaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJobObject(OpenAIBaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: FineTuningJobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: dict[str, Any] | None = None
    model: str
    organization_id: str
    result_files: list[str] = Field(default_factory=list)
    status: str
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    integrations: list[dict[str, Any]] | None = None
    seed: int
    estimated_finish: int | None = None
    method: dict[str, Any]
    metadata: dict[str, str] | None = None
    user_provided_suffix: str | None = None
    # Extensions.
    attempt: int = 0
    step: int | None = None
    total_steps: int | None = None


class FineTuningJobEventObject(OpenAIBaseModel):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None


class FineTuningJobCheckpointObject(OpenAIBaseModel):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, float | int | None]
    step_number: int


# --- Models --------------------------------------------------------------------------------------------------


class ModelObject(OpenAIBaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelDeleted(OpenAIBaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True
