"""Fine-tuning jobs, their events and checkpoints."""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

from pydantic import Field

from .._models import BaseModel
from .graders import Grader

__all__ = [
    "JobStatus",
    "TERMINAL_STATUSES",
    "FineTuningJob",
    "FineTuningJobError",
    "FineTuningJobEvent",
    "FineTuningJobCheckpoint",
    "Hyperparameters",
    "Method",
    "MethodSection",
    "ReinforcementHyperparameters",
    "ReinforcementMethod",
]

JobStatus: TypeAlias = Literal[
    "validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"
]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

Auto: TypeAlias = Literal["auto"]


class Hyperparameters(BaseModel):
    """What the job asked for; "auto" values show the resolved number once the job has started."""

    n_epochs: Auto | int | None = None
    batch_size: Auto | int | None = None
    learning_rate_multiplier: Auto | float | None = None
    beta: Auto | float | None = None
    """dpo, kto, orpo and simpo."""
    # ftserve extensions of the preference methods; see docs/api.md.
    loss_type: Auto | Literal["sigmoid", "ipo", "hinge", "robust"] | None = None
    """dpo"""
    label_smoothing: Auto | float | None = None
    """dpo, with loss_type robust"""
    desirable_weight: Auto | float | None = None
    """kto"""
    undesirable_weight: Auto | float | None = None
    """kto"""
    gamma: Auto | float | None = None
    """simpo"""
    # ftserve extensions (LoRA and schedule); see docs/api.md.
    lora_rank: Auto | int | None = None
    lora_alpha: Auto | int | None = None
    lora_dropout: Auto | float | None = None
    target_modules: Auto | str | list[str] | None = None
    max_seq_length: Auto | int | None = None
    learning_rate: Auto | float | None = None
    warmup_ratio: Auto | float | None = None
    eval_every_steps: Auto | int | None = None
    checkpoint_every_steps: Auto | int | None = None
    micro_batch_size: Auto | int | None = None
    gradient_accumulation_steps: int | None = None
    quantization: Auto | Literal["none", "4bit"] | None = None
    early_stopping: Auto | bool | None = None


class ReinforcementHyperparameters(Hyperparameters):
    """OpenAI's reinforcement hyperparameters, and ftserve's num_generations and max_completion_tokens."""

    compute_multiplier: Auto | float | None = None
    eval_interval: Auto | int | None = None
    eval_samples: Auto | int | None = None
    reasoning_effort: Literal["default", "low", "medium", "high"] | None = None
    num_generations: Auto | int | None = None
    """Answers sampled per prompt (GRPO's group)."""
    max_completion_tokens: Auto | int | None = None


class MethodSection(BaseModel):
    hyperparameters: Hyperparameters | None = None


class ReinforcementMethod(BaseModel):
    grader: Grader | None = None
    hyperparameters: ReinforcementHyperparameters | None = None


class Method(BaseModel):
    type: Literal["supervised", "dpo", "kto", "orpo", "simpo", "reinforcement"]
    supervised: MethodSection | None = None
    dpo: MethodSection | None = None
    kto: MethodSection | None = None
    orpo: MethodSection | None = None
    simpo: MethodSection | None = None
    reinforcement: ReinforcementMethod | None = None


class FineTuningJobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: FineTuningJobError | None = None
    fine_tuned_model: str | None = None
    """Set when the job succeeds: `ft:{base}:{org}:{suffix}:{job_id}`."""
    finished_at: int | None = None
    hyperparameters: Hyperparameters | None = None
    model: str
    organization_id: str
    result_files: list[str] = Field(default_factory=list)
    status: JobStatus
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    integrations: list[dict[str, Any]] | None = None
    seed: int
    estimated_finish: int | None = None
    method: Method | None = None
    metadata: dict[str, str] | None = None
    user_provided_suffix: str | None = None
    # ftserve extensions.
    base_model: str | None = None
    """The registered base model under `model`; differs from it when the job continues an `ft:` model."""
    attempt: int = 0
    step: int | None = None
    """The last optimizer step the worker reported."""
    total_steps: int | None = None
    # ftserve scheduling extensions: what the job reserves on a GPU, where it runs, and while queued, its
    # place in the queue, a start-time forecast and why it waits.
    priority: int = 0
    estimated_vram_mb: int | None = None
    vram_estimate: dict[str, Any] | None = None
    gpu_class: str | None = None
    queue_position: int | None = None
    estimated_start_at: int | None = None
    queue_reason: str | None = None
    # ftserve caps: the job pauses once it has trained this many tokens or cost this much.
    max_trained_tokens: int | None = None
    max_cost: float | None = None

    @property
    def done(self) -> bool:
        """True once the job can change no more (succeeded, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES


class FineTuningJobEvent(BaseModel):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None
    """For `metrics` events: step, total_steps, train_loss, valid_loss, ..."""


class FineTuningJobCheckpoint(BaseModel):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, float | int | None]
    step_number: int
