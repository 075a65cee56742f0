"""The organization API: usage in time buckets, API keys, the audit log."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .._models import BaseModel

__all__ = [
    "Cost",
    "FineTuningUsageResult",
    "CompletionsUsageResult",
    "UsageBucket",
    "UsagePage",
    "ApiKey",
    "ApiKeyDeleted",
    "AuditLog",
]


class Cost(BaseModel):
    value: float
    currency: str


class FineTuningUsageResult(BaseModel):
    object: Literal["organization.usage.fine_tuning.result"] = "organization.usage.fine_tuning.result"
    trained_tokens: int
    gpu_seconds: float
    gpu_class: str
    num_attempts: int
    cost: Cost
    model: str | None = None
    job_id: str | None = None


class CompletionsUsageResult(BaseModel):
    object: Literal["organization.usage.completions.result"] = "organization.usage.completions.result"
    input_tokens: int
    output_tokens: int
    num_model_requests: int
    cost: Cost
    model: str | None = None
    api_key_id: str | None = None


class UsageBucket(BaseModel):
    object: Literal["bucket"] = "bucket"
    start_time: int
    end_time: int
    results: list[FineTuningUsageResult | CompletionsUsageResult] = Field(default_factory=list)


class UsagePage(BaseModel):
    object: Literal["page"] = "page"
    data: list[UsageBucket]
    has_more: bool
    next_page: str | None = None

    @property
    def results(self) -> list[FineTuningUsageResult | CompletionsUsageResult]:
        """Every bucket's results, in order."""
        return [result for bucket in self.data for result in bucket.results]


class ApiKey(BaseModel):
    object: Literal["organization.api_key"] = "organization.api_key"
    id: str
    name: str | None = None
    redacted_value: str
    created_at: int
    last_used_at: int | None = None
    scopes: list[str]
    inference_token_quota: int | None = None
    value: str | None = None
    """The secret: only on the key `create` returned. It cannot be shown again."""


class ApiKeyDeleted(BaseModel):
    object: Literal["organization.api_key.deleted"] = "organization.api_key.deleted"
    id: str
    deleted: bool


class AuditLog(BaseModel):
    """`type` names a key of this object holding what it is about, e.g. log.model_extra["api_key.created"]."""

    object: Literal["organization.audit_log"] = "organization.audit_log"
    id: str
    type: str
    effective_at: int
    actor: dict[str, Any]

    @property
    def details(self) -> dict[str, Any]:
        """What the entry is about: {"id": ..., "data": {...}}."""
        return dict((self.model_extra or {}).get(self.type) or {})
