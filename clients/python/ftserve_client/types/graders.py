"""Reinforcement graders (OpenAI's shapes) and what /fine_tuning/alpha/graders/run and /validate answer.

The server runs string_check, text_similarity, score_model and multi graders; python and label_model graders
are typed so that OpenAI's graders parse, and the server refuses them with a 400.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeAlias

from pydantic import Field

from .._models import BaseModel

__all__ = [
    "Grader",
    "GraderRunErrors",
    "GraderRunMetadata",
    "GraderRunResponse",
    "GraderValidateResponse",
    "LabelModelGrader",
    "MultiGrader",
    "PythonGrader",
    "ScoreModelGrader",
    "ScoreModelGraderInput",
    "ScoreModelGraderSamplingParams",
    "StringCheckGrader",
    "TextSimilarityGrader",
]

SimilarityMetric: TypeAlias = Literal[
    "cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5",
    "rouge_l",
]  # fmt: skip


class StringCheckGrader(BaseModel):
    """1.0 when `input` and `reference` (templates) compare as `operation` says, else 0.0."""

    type: Literal["string_check"] = "string_check"
    name: str | None = None
    input: str
    reference: str
    operation: Literal["eq", "ne", "like", "ilike"]


class TextSimilarityGrader(BaseModel):
    """A 0-1 similarity of `input` to `reference`. This server computes fuzzy_match, bleu and rouge_*
    (rouge needs the server's training extras); cosine, gleu and meteor are refused."""

    type: Literal["text_similarity"] = "text_similarity"
    name: str | None = None
    input: str
    reference: str
    evaluation_metric: SimilarityMetric
    pass_threshold: float | None = None


class ScoreModelGraderInput(BaseModel):
    """One templated message sent to the grader model."""

    role: Literal["user", "assistant", "system", "developer"]
    content: str
    type: Literal["message"] | None = None


class ScoreModelGraderSamplingParams(BaseModel):
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    max_completion_tokens: int | None = None
    max_completions_tokens: int | None = None
    """openai-python's spelling of max_completion_tokens; the server takes either."""
    reasoning_effort: str | None = None


class ScoreModelGrader(BaseModel):
    """A served model grades: the first number in its answer (or its JSON `result`), clamped to `range`."""

    type: Literal["score_model"] = "score_model"
    name: str | None = None
    model: str
    input: list[ScoreModelGraderInput]
    range: list[float] | None = None
    """[min, max]; [0, 1] when not given."""
    sampling_params: ScoreModelGraderSamplingParams | None = None


class MultiGrader(BaseModel):
    """Named sub-graders combined by `calculate_output`, a formula over their names."""

    type: Literal["multi"] = "multi"
    name: str | None = None
    graders: dict[str, Grader]
    calculate_output: str


class PythonGrader(BaseModel):
    """OpenAI's; refused here (the server never runs user code)."""

    type: Literal["python"] = "python"
    name: str | None = None
    source: str
    image_tag: str | None = None


class LabelModelGrader(BaseModel):
    """OpenAI's; refused here."""

    type: Literal["label_model"] = "label_model"
    name: str | None = None
    model: str
    input: list[dict[str, Any]]
    labels: list[str]
    passing_labels: list[str]


Grader: TypeAlias = Annotated[
    StringCheckGrader
    | TextSimilarityGrader
    | ScoreModelGrader
    | MultiGrader
    | PythonGrader
    | LabelModelGrader,
    Field(discriminator="type"),
]
MultiGrader.model_rebuild()


class GraderRunErrors(BaseModel):
    """OpenAI's error flags of a run; here model_grader_parse_error is the one set (a grader model's answer
    without a number)."""

    formula_parse_error: bool = False
    invalid_variable_error: bool = False
    model_grader_parse_error: bool = False
    model_grader_refusal_error: bool = False
    model_grader_server_error: bool = False
    model_grader_server_error_details: str | None = None
    other_error: bool = False
    python_grader_runtime_error: bool = False
    python_grader_runtime_error_details: str | None = None
    python_grader_server_error: bool = False
    python_grader_server_error_type: str | None = None
    sample_parse_error: bool = False
    truncated_observation_error: bool = False
    unresponsive_reward_error: bool = False


class GraderRunMetadata(BaseModel):
    name: str
    type: str
    errors: GraderRunErrors
    execution_time: float
    scores: dict[str, Any] = Field(default_factory=dict)
    """The grader's score, and each sub-grader's by name."""
    token_usage: int | None = None
    sampled_model_name: str | None = None


class GraderRunResponse(BaseModel):
    reward: float
    metadata: GraderRunMetadata
    sub_rewards: dict[str, Any] = Field(default_factory=dict)
    model_grader_token_usage_per_model: dict[str, Any] = Field(default_factory=dict)


class GraderValidateResponse(BaseModel):
    grader: Grader | None = None
