"""Evals (OpenAI's /v1/evals): an eval, its runs (one model each, graded) and each run's output items."""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

from pydantic import Field

from .._models import BaseModel

__all__ = [
    "Eval",
    "EvalDeleted",
    "EvalError",
    "EvalOutputItem",
    "EvalResultCounts",
    "EvalRun",
    "EvalRunDeleted",
    "EvalRunStatus",
    "EvalTestingCriteriaResult",
    "RUN_TERMINAL_STATUSES",
]

EvalRunStatus: TypeAlias = Literal["queued", "in_progress", "completed", "failed", "canceled"]
RUN_TERMINAL_STATUSES = frozenset({"completed", "failed", "canceled"})


class Eval(BaseModel):
    id: str
    object: Literal["eval"] = "eval"
    created_at: int
    name: str
    data_source_config: dict[str, Any]
    testing_criteria: list[dict[str, Any]]
    metadata: dict[str, str] | None = None


class EvalDeleted(BaseModel):
    object: Literal["eval.deleted"] = "eval.deleted"
    deleted: bool
    eval_id: str


class EvalError(BaseModel):
    code: str
    message: str


class EvalResultCounts(BaseModel):
    total: int
    """The run's items; passed + failed + errored are those graded so far."""
    errored: int
    failed: int
    passed: int


class EvalTestingCriteriaResult(BaseModel):
    testing_criteria: str
    passed: int
    failed: int
    mean_score: float | None = None
    """Extension: the criterion's mean score over the items graded."""


class EvalRun(BaseModel):
    id: str
    object: Literal["eval.run"] = "eval.run"
    eval_id: str
    name: str
    model: str
    status: EvalRunStatus
    created_at: int
    data_source: dict[str, Any]
    metadata: dict[str, str] | None = None
    error: EvalError | None = None
    result_counts: EvalResultCounts
    per_testing_criteria_results: list[EvalTestingCriteriaResult] = Field(default_factory=list)
    report_url: str
    report_file_id: str | None = None
    """Extension: once completed, the JSONL report (`client.files.content(report_file_id)`)."""
    started_at: int | None = None
    finished_at: int | None = None

    @property
    def done(self) -> bool:
        return self.status in RUN_TERMINAL_STATUSES

    @property
    def graded(self) -> int:
        counts = self.result_counts
        return counts.passed + counts.failed + counts.errored


class EvalRunDeleted(BaseModel):
    object: Literal["eval.run.deleted"] = "eval.run.deleted"
    deleted: bool
    run_id: str


class EvalOutputItem(BaseModel):
    id: str
    object: Literal["eval.run.output_item"] = "eval.run.output_item"
    created_at: int
    eval_id: str
    run_id: str
    datasource_item_id: int
    datasource_item: dict[str, Any]
    status: Literal["pass", "fail", "error"]
    results: list[dict[str, Any]]
    """One per criterion: {name, type, score, passed, sample}, and `error` where it could not be graded."""
    sample: dict[str, Any]
