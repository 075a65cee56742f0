"""Wire models of the organization API (/v1/organization/*): usage, API keys and the audit log. Shaped like
OpenAI's administration API where it fits; what is ftserve's own is marked. docs/api.md documents them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from api.protocol import OpenAIBaseModel

# -- usage -----------------------------------------------------------------------------------------------------


class Cost(OpenAIBaseModel):
    value: float
    currency: str


class FineTuningUsageResult(OpenAIBaseModel):
    """Fine-tuning usage in one bucket, for one GPU class (and model or job, when grouped by them)."""

    object: Literal["organization.usage.fine_tuning.result"] = "organization.usage.fine_tuning.result"
    trained_tokens: int
    gpu_seconds: float
    gpu_class: str
    num_attempts: int  # attempts of jobs metered (an attempt is metered when it ends)
    cost: Cost
    model: str | None = None  # the base model trained, when grouped by model
    job_id: str | None = None  # when grouped by job_id


class CompletionsUsageResult(OpenAIBaseModel):
    """Inference usage in one bucket (per model or key, when grouped by them), as vLLM counted it."""

    object: Literal["organization.usage.completions.result"] = "organization.usage.completions.result"
    input_tokens: int
    output_tokens: int
    num_model_requests: int
    cost: Cost
    model: str | None = None  # when grouped by model
    api_key_id: str | None = None  # when grouped by api_key_id


UsageResult = FineTuningUsageResult | CompletionsUsageResult


class UsageBucket(OpenAIBaseModel):
    object: Literal["bucket"] = "bucket"
    start_time: int
    end_time: int
    results: list[UsageResult]


class UsagePage(OpenAIBaseModel):
    object: Literal["page"] = "page"
    data: list[UsageBucket]
    has_more: bool
    next_page: str | None = None


# -- API keys --------------------------------------------------------------------------------------------------

Scope = Literal["admin", "fine_tune", "inference"]


class CreateApiKeyRequest(OpenAIBaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=128)
    # Default: ["fine_tune", "inference"]. "admin" may also manage keys and read usage and the audit log.
    scopes: list[Scope] | None = Field(None, min_length=1, max_length=3)
    # Inference tokens (prompt + completion) the key may use per calendar month (UTC); null: no quota.
    inference_token_quota: int | None = Field(None, ge=1, le=10**15, strict=True)


class ApiKeyObject(OpenAIBaseModel):
    object: Literal["organization.api_key"] = "organization.api_key"
    id: str
    name: str | None = None
    redacted_value: str  # the first characters, e.g. "ftsk-AbCd…"
    created_at: int
    last_used_at: int | None = None
    scopes: list[str]  # ["admin"] for keys without scopes (every scope)
    inference_token_quota: int | None = None
    # The secret, only in the answer to the create: it is not stored and cannot be shown again.
    value: str | None = Field(None, exclude_if=lambda v: v is None)


class ApiKeyDeleted(OpenAIBaseModel):
    object: Literal["organization.api_key.deleted"] = "organization.api_key.deleted"
    id: str
    deleted: bool = True


# -- audit log -------------------------------------------------------------------------------------------------


class AuditLogActor(OpenAIBaseModel):
    type: str  # "api_key" (a request with that key) or "operator" (the server CLI)
    api_key: dict[str, Any] | None = None  # {"id", "type": "organization"}


class AuditLogObject(OpenAIBaseModel):
    """One entry; as in OpenAI's, the object it is about sits under a key named after its type:
    {"type": "api_key.created", ..., "api_key.created": {"id": "key-...", "data": {...}}}."""

    model_config = ConfigDict(extra="allow")

    object: Literal["organization.audit_log"] = "organization.audit_log"
    id: str
    type: str
    effective_at: int
    actor: AuditLogActor
