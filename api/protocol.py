"""OpenAI wire models: every request and response body that mirrors OpenAI's API lives here.

Shapes follow OpenAI's published API reference and OpenAPI spec to the letter: our responses are checked
against the subset vendored as tests/support/openai_openapi_subset.yaml by
tests/contract/test_openai_schemas.py (docs/api.md lists the endpoints). A field the spec has as optional and
not nullable is omitted when there is no value (`omitted_if_none`), never sent as null; a required one is
always sent. Our extensions are extra fields that the official SDK keeps in `model_extra` and otherwise
ignores.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

T = TypeVar("T")


class OpenAIBaseModel(BaseModel):
    # Newer SDKs may send fields we do not know yet; ignore them rather than 422.
    model_config = ConfigDict(extra="ignore")


def _is_none(value: Any) -> bool:
    return value is None


def _not_null(schema: dict[str, Any]) -> None:
    """Our OpenAPI document says what is sent: the value's type, without the null that is never sent."""
    branches = [branch for branch in schema.pop("anyOf", []) if branch != {"type": "null"}]
    if len(branches) == 1:
        schema.update(branches[0])
    elif branches:
        schema["anyOf"] = branches


def omitted_if_none(description: str | None = None) -> Any:
    """A field that OpenAI's spec has as optional and not nullable: None leaves it out of the body."""
    return Field(None, exclude_if=_is_none, description=description, json_schema_extra=_not_null)


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
    expires_at: int | None = omitted_if_none("Only for a file uploaded with `expires_after`.")
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None = omitted_if_none("Only for a file that failed validation: why.")
    # Extensions: what the validator found.
    data_format: str | None = Field(
        None,
        description="chat, prompt_completion, preference, sharegpt, alpaca, kto or reinforcement (docs/data.md)",
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


class ValidationWarning(OpenAIBaseModel):
    """A known field that training ignores (an id, metadata, ...), once per field for the whole file."""

    field: str
    code: str
    line: int  # the first line (or JSON array element) that has it
    count: int  # how many examples have it
    message: str


class FileTokenCounts(OpenAIBaseModel):
    """Extension: a file's tokens with one base model's tokenizer and chat template, counted as the worker
    tokenises it (core/token_counts.py). Preference examples count prompt+chosen and prompt+rejected: an example's
    length is the longer pair, `total_tokens` adds both."""

    model: str
    examples: int
    total_tokens: int
    trained_tokens: int  # the loss-bearing tokens among them (assistant replies, completions)
    longest_example_tokens: int
    longest_example_line: int  # 1-based line of the (first) longest example
    max_seq_length: int | None = None  # what over_limit counts against: the request's, or the context
    over_limit: int = 0  # examples longer than max_seq_length (a job would fail on them)
    over_limit_lines: list[int] = Field(default_factory=list)  # the first 20 of them
    exact: bool = True  # false where transformers rebuilds the tokenizer from its class: close, not exact


class FileValidationReport(OpenAIBaseModel):
    """Extension: the full validation report of an upload (the first 100 errors)."""

    object: Literal["file.validation_report"] = "file.validation_report"
    file_id: str
    status: Literal["uploaded", "processed", "error"]
    data_format: str | None = None
    example_count: int | None = None
    # Bytes of the longest valid example: an upper bound of its tokens, which sizes an "auto" max_seq_length.
    longest_example_bytes: int | None = None
    error_count: int = 0
    errors: list[ValidationLineError] = Field(default_factory=list)
    # The layout the examples came in (core.training_data.LAYOUTS, docs/data.md), and the known fields that
    # training ignores. Null / empty for files validated before ftserve kept them.
    layout: str | None = None
    warnings: list[ValidationWarning] = Field(default_factory=list)
    # With ?model=: the file's tokens for that base model (null without it, or for a file that failed validation,
    # whose content is not kept).
    tokens: FileTokenCounts | None = None


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


class ReinforcementSection(MethodSection):
    # Kept loose here: core.graders checks it and names the bad field.
    grader: dict[str, Any] | None = None


class FineTuneMethod(OpenAIBaseModel):
    # Extensions: "kto", "orpo" and "simpo", each with its own section like OpenAI's "dpo".
    type: Literal["supervised", "dpo", "kto", "orpo", "simpo", "reinforcement"]
    supervised: MethodSection | None = None
    dpo: MethodSection | None = None
    kto: MethodSection | None = None
    orpo: MethodSection | None = None
    simpo: MethodSection | None = None
    reinforcement: ReinforcementSection | None = None


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
    # Extension (the SDK's extra_body): higher runs sooner; -100..100, default 0.
    priority: int | None = Field(None, ge=-100, le=100, strict=True)
    # Extensions (docs/usage.md): the job pauses once it has trained this many tokens or cost this much.
    max_trained_tokens: int | None = Field(None, ge=1, le=10**15, strict=True)
    max_cost: float | None = Field(None, gt=0, le=1e12, allow_inf_nan=False, strict=True)


class ResumeFineTuningJobRequest(OpenAIBaseModel):
    """Extension: an optional body of `POST /v1/fine_tuning/jobs/{id}/resume` that changes the job's caps
    (null removes one); a job paused at a cap resumes only once that cap is above what it has used."""

    max_trained_tokens: int | None = Field(None, ge=1, le=10**15, strict=True)
    max_cost: float | None = Field(None, gt=0, le=1e12, allow_inf_nan=False, strict=True)


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
    hyperparameters: dict[str, Any]  # required by the spec (not nullable): every method's, as in `method`
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
    # The registry model trained on: `model` itself, or the base model under the fine-tuned model a job
    # continues (its `model` is then that ft: name or checkpoint, as sent).
    base_model: str | None = None
    attempt: int = 0
    step: int | None = None
    total_steps: int | None = None
    # The job's files counted with its model's tokenizer when it was queued: {"model", "max_seq_length",
    # "training": {...}, "validation": {...}}, each as FileTokenCounts; None when the model's tokenizer can't be.
    token_counts: dict[str, Any] | None = None
    # Scheduling extensions: what the job reserves on a GPU, where it runs, and, while queued, its place,
    # a start-time forecast and why it waits.
    priority: int = 0
    estimated_vram_mb: int | None = None
    vram_estimate: dict[str, Any] | None = None
    gpu_class: str | None = None
    queue_position: int | None = None
    estimated_start_at: int | None = None
    queue_reason: str | None = None
    # Caps (docs/usage.md): the job pauses once either is reached.
    max_trained_tokens: int | None = None
    max_cost: float | None = None


class FineTuningJobEventObject(OpenAIBaseModel):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] = Field(default_factory=dict)  # an object, never null: {} when there is nothing


class FineTuningJobCheckpointObject(OpenAIBaseModel):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, float | int]  # numbers only: a metric the step did not have is left out
    step_number: int


# --- Graders (OpenAI's /v1/fine_tuning/alpha/graders) ------------------------------------------------------


class ValidateGraderRequest(OpenAIBaseModel):
    grader: dict[str, Any]  # checked by core.graders, which names the bad field


class ValidateGraderResponse(OpenAIBaseModel):
    grader: dict[str, Any]


class RunGraderRequest(OpenAIBaseModel):
    grader: dict[str, Any]
    model_sample: str
    item: Any = None  # the data line the grader's {{ item.* }} references


class RunGraderResponse(OpenAIBaseModel):
    reward: float
    metadata: dict[str, Any]
    sub_rewards: dict[str, float] = Field(default_factory=dict)
    model_grader_token_usage_per_model: dict[str, Any] = Field(default_factory=dict)


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


# --- Webhook endpoints (issue #6; the official SDK's `client.webhooks.*` shapes, plus ours) -----------------


class CreateWebhookEndpointRequest(OpenAIBaseModel):
    url: str = Field(min_length=1, max_length=2048)
    events: list[str] | str | None = Field(
        None, description='Event types to deliver: a list, or "all" (the default, future types included).'
    )
    event_types: list[str] | None = Field(None, description="The official SDK's name for `events`.")
    name: str | None = Field(None, max_length=128)
    description: str | None = Field(None, max_length=512)
    enabled: bool = True


class UpdateWebhookEndpointRequest(OpenAIBaseModel):
    url: str | None = Field(None, min_length=1, max_length=2048)
    events: list[str] | str | None = None
    event_types: list[str] | None = None
    name: str | None = Field(None, max_length=128)
    description: str | None = Field(None, max_length=512)
    enabled: bool | None = None


class RotateWebhookSecretRequest(OpenAIBaseModel):
    # OpenAI defaults to false; ftserve keeps the old secret signing for 24 h unless told otherwise.
    keep_old_secret_active_for_24_hours: bool = True


class WebhookTestRequest(OpenAIBaseModel):
    event_type: str = Field(min_length=1)


class WebhookEndpointObject(OpenAIBaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    created_at: int
    updated_at: int | None = None
    url: str
    name: str
    event_types: list[str]
    signing_secret_hint: str | None = None
    # Extensions.
    events: list[str] | Literal["all"]
    description: str | None = None
    enabled: bool
    disabled_reason: str | None = None
    previous_secret_expires_at: int | None = Field(
        None, description="Until then the previous secret also signs every delivery (after a rotation)."
    )


class WebhookEndpointWithSecretObject(WebhookEndpointObject):
    signing_secret: str = Field(description="Shown only at creation and rotation; store it now.")


class WebhookEndpointDeleted(OpenAIBaseModel):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool = True


class WebhookDeliveryAttemptObject(OpenAIBaseModel):
    """One HTTP attempt to deliver one event to one endpoint."""

    id: str
    object: Literal["webhook_endpoint.delivery_attempt"] = "webhook_endpoint.delivery_attempt"
    webhook_endpoint_id: str
    event_id: str = Field(description="The `webhook-id` header: the same on every attempt of the event.")
    event_type: str
    attempt: int
    status: Literal["succeeded", "failed"]
    response_status_code: int | None = None
    latency_ms: int | None = None
    error: str | None = None
    response_body: str | None = Field(
        None, description="The start of the receiver's answer, at most 256 chars."
    )
    created_at: int
    next_retry_at: int | None = None
    delivery_status: Literal["pending", "delivered", "failed", "cancelled"]


class WebhookEndpointTestResultObject(OpenAIBaseModel):
    object: Literal["webhook_endpoint.test"] = "webhook_endpoint.test"
    webhook_endpoint_id: str
    event_type: str
    status_code: int
    success: Literal[True] = True
    latency_ms: int | None = None
    response_body: str | None = None


class WebhookEventTypeList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[str]


# --- Inference: chat completions and completions (issue #5) ---------------------------------------------------
# Requests are checked here, then forwarded to vLLM; responses come back from vLLM and are normalised to
# OpenAI's schema in api/services/inference.py. Unknown arguments are refused, as OpenAI does, so nothing
# reaches vLLM that would change how prompts are formatted (chat_template, ...).


class StrictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatMessageIn(OpenAIBaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, tool_call_id, ...

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(StrictRequest):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class _SamplingFields(StrictRequest):
    model: str = Field(min_length=1, max_length=512)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    max_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = Field(None)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    user: str | None = Field(None, max_length=512)
    # vLLM's sampling extras (harmless, and commonly asked for).
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    min_tokens: int | None = Field(None, ge=0)


class ChatCompletionCreate(_SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    # Accepted and not forwarded: they do not change what the model generates here.
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    # Refused with a clear message when used (no audio, prediction or web search here).
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None


class CompletionCreate(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = Field(None, ge=1)
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    suffix: str | None = None


# --- Memory estimates (POST /v1/fine_tuning/estimates, an ftserve extension) --------------------------------


class CreateEstimateRequest(OpenAIBaseModel):
    """The job-create body, minus what an estimate does not need: `training_file` (its example count sizes
    the "auto" batch), or `n_examples` when there is no file yet."""

    model: str = Field(min_length=1)
    training_file: str | None = Field(None, min_length=1)
    n_examples: int | None = Field(None, ge=1, le=100_000_000, strict=True)
    max_seq_length: int | None = Field(None, ge=16, le=1_048_576, strict=True)
    hyperparameters: dict[str, Any] | None = Field(
        None, description="Deprecated: use method.*.hyperparameters."
    )
    method: FineTuneMethod | None = None
    # Accepted so that a job-create body can be sent unchanged; they do not change the estimate.
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None
    priority: int | None = None
    max_trained_tokens: int | None = None
    max_cost: float | None = None


class GpuFit(OpenAIBaseModel):
    gpu_class: str  # the device name workers report, e.g. "NVIDIA H100 80GB HBM3" or "A10-24GB"
    total_mb: int
    devices: int  # how many live devices of this class there are
    free_now: int  # how many of them could take the job right now


class EstimateObject(OpenAIBaseModel):
    object: Literal["fine_tuning.estimate"] = "fine_tuning.estimate"
    model: str
    method: str
    estimated_vram_mb: int  # what the scheduler reserves on a GPU: the peak plus the margin
    peak_vram_mb: int
    breakdown: dict[str, int]
    gpu_class: str | None  # where the job would go now (best fit), else the smallest class that can hold it
    fits: list[GpuFit]  # every live GPU class that can hold the job
    # True: some live GPU could hold it; False: GPUs are live and none could (a job would fail at once);
    # None: no live GPU worker, or the registry is unreachable (a job would wait).
    placeable: bool | None
    cpu_ram_mb: int  # the estimate for a CPU-only worker (host RAM)
    parameters: int
    trainable_parameters: int
    tokens_per_micro_batch: int
    # From the training file, counted with the model's tokenizer (FileTokenCounts), when both are at hand.
    tokens: FileTokenCounts | None = None
    # What the job would train on: trained (loss-bearing) tokens per epoch x n_epochs; None without `tokens`.
    trained_tokens: int | None = None
    hyperparameters: dict[str, Any]  # resolved: what the job would train with
    profile: str
    notes: list[str] = Field(default_factory=list)
    # What the job would cost at this server's prices (docs/usage.md); None only where nothing could be priced.
    estimated_cost: EstimatedCost | None = None


class EstimatedCost(OpenAIBaseModel):
    """Extension: the expected cost of a job, and its parts. `value` sums the parts that are known."""

    currency: str
    value: float | None
    trained_tokens: int | None  # x price_per_million_trained_tokens
    trained_tokens_cost: float | None
    gpu_class: str | None  # the class it would run on (the estimate's gpu_class, or "cpu")
    gpu_seconds: float | None  # from the measured throughput of that class
    gpu_cost: float | None  # x price_per_gpu_hour of that class
    throughput: dict[str, Any] | None = None  # {"gpu_class": the table entry used, "param_tokens_per_second"}
    notes: list[str] = Field(default_factory=list)


# --- Exports (POST /v1/fine_tuning/jobs/{id}/exports, an ftserve extension; docs/export.md) ----------------


class CreateExportRequest(OpenAIBaseModel):
    format: Literal["adapter", "merged", "gguf"]
    # A checkpoint of the job: its id (ftckpt-...), its model name (ft:...:ckpt-step-N) or its step number.
    # Default: the job's final adapter.
    checkpoint: str | int | None = None

    @field_validator("checkpoint", mode="before")
    @classmethod
    def _checkpoint(cls, value: Any) -> Any:
        if isinstance(value, bool) or not (value is None or isinstance(value, str | int)):
            raise ValueError("give a checkpoint's id (ftckpt-...), model name (ft:...:ckpt-step-N) or step")
        return value


class ExportError(OpenAIBaseModel):
    code: str
    message: str


class ExportObject(OpenAIBaseModel):
    id: str
    object: Literal["fine_tuning.job.export"] = "fine_tuning.job.export"
    job_id: str
    format: Literal["adapter", "merged", "gguf"]
    status: Literal["queued", "running", "succeeded", "failed"]
    model: str  # what is exported: the fine-tuned model, or the checkpoint's model name
    checkpoint_step: int | None = None
    file_id: str | None = None  # the File to download (GET /v1/files/{id}/content), once succeeded
    bytes: int | None = None
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None
    error: ExportError | None = None
    checks: dict[str, Any] = Field(default_factory=dict)  # what was checked before the file was offered


# --- Evals (OpenAI's /v1/evals; docs/api.md "Evaluations") -----------------------------------------------------
# Data source configs, data sources and testing criteria are kept as objects: core.evals checks them so that a
# bad one is a 400 naming the exact field.


class CreateEvalRequest(OpenAIBaseModel):
    name: str | None = None
    data_source_config: dict[str, Any]
    testing_criteria: list[Any]
    metadata: dict[str, str] | None = None


class UpdateEvalRequest(OpenAIBaseModel):
    name: str | None = None
    metadata: dict[str, str] | None = None


class EvalObject(OpenAIBaseModel):
    id: str
    object: Literal["eval"] = "eval"
    created_at: int
    name: str
    data_source_config: dict[str, Any]
    testing_criteria: list[dict[str, Any]]
    metadata: dict[str, str] | None = None


class EvalDeleted(OpenAIBaseModel):
    object: Literal["eval.deleted"] = "eval.deleted"
    deleted: bool = True
    eval_id: str


class CreateEvalRunRequest(OpenAIBaseModel):
    name: str | None = None
    data_source: dict[str, Any]
    metadata: dict[str, str] | None = None


class EvalAPIError(OpenAIBaseModel):
    code: str
    message: str


class EvalResultCounts(OpenAIBaseModel):
    total: int  # the run's items; passed + failed + errored counts those graded so far
    errored: int
    failed: int
    passed: int


class EvalPerTestingCriteriaResult(OpenAIBaseModel):
    testing_criteria: str
    passed: int
    failed: int
    mean_score: float | None = None  # extension: the criterion's mean score over the items graded


class EvalRunObject(OpenAIBaseModel):
    id: str
    object: Literal["eval.run"] = "eval.run"
    eval_id: str
    name: str
    model: str
    status: Literal["queued", "in_progress", "completed", "failed", "canceled"]
    created_at: int
    data_source: dict[str, Any]
    metadata: dict[str, str] | None = None
    error: EvalAPIError | None = None
    result_counts: EvalResultCounts
    per_testing_criteria_results: list[EvalPerTestingCriteriaResult]
    per_model_usage: list[dict[str, Any]] = Field(default_factory=list)
    report_url: str  # the run on the dashboard
    # Extensions: the report (a File, GET /v1/files/{id}/content) once completed, and when it ran.
    report_file_id: str | None = None
    started_at: int | None = None
    finished_at: int | None = None


class EvalRunDeleted(OpenAIBaseModel):
    object: Literal["eval.run.deleted"] = "eval.run.deleted"
    deleted: bool = True
    run_id: str


class EvalOutputItemObject(OpenAIBaseModel):
    id: str
    object: Literal["eval.run.output_item"] = "eval.run.output_item"
    created_at: int
    eval_id: str
    run_id: str
    datasource_item_id: int
    datasource_item: dict[str, Any]
    status: Literal["pass", "fail", "error"]
    results: list[dict[str, Any]]
    sample: dict[str, Any]
