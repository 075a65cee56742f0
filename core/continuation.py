"""Continue training: a job whose `model` is a fine-tuned model (`ft:...`) or one of its checkpoints
(`ft:...:ckpt-step-N`) of the same organization trains further from that model's weights.

The job's `model` stays what the user sent (as OpenAI shows it). What the job continues from is recorded once,
at create time, in its hyperparameters under `CONTINUED_FROM` (no column of its own): the base model, the parent
job and the storage prefix of the adapter it starts from, and the parent's LoRA shape, which the new job keeps.
`base_model_of(job)` is the registry model every base-model need resolves through (tokenizer, chat template,
memory estimate, usage, the new model's name); `requested_hyperparameters(job)` is what the user asked for,
without the record. How the worker trains from the parent: gpu_worker/parent_adapter.py, docs/training.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from core import jobs
from core.errors import InvalidRequestError, NotFoundError
from core.models import FineTunedModel, FineTuningJob, JobCheckpoint

CONTINUED_FROM = "continued_from"
FINE_TUNED_PREFIX = "ft:"
CHECKPOINT_SUFFIX = ":ckpt-step-"
MAX_MODEL_NAME = 256  # the job's `model` column
# The LoRA shape a continued job takes from its parent; giving another value is refused.
LORA_SHAPE = ("lora_rank", "lora_alpha", "target_modules")


def is_fine_tuned_name(model: str) -> bool:
    return model.startswith(FINE_TUNED_PREFIX)


@dataclass(frozen=True)
class ParentModel:
    """The fine-tuned model (or checkpoint) a job continues from."""

    model: str  # the name the user sent
    base_model: str  # the registry model under every adapter of the chain
    job_id: str
    adapter_prefix: str  # storage prefix of the adapter (or the checkpoint) to start from
    checkpoint_step: int | None
    lora: dict[str, Any]  # LORA_SHAPE, as the parent job trained its own LoRA
    served_lora_rank: int  # the rank of the parent's stored adapter (its LoRA plus every ancestor's)

    def record(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "base_model": self.base_model,
            "job_id": self.job_id,
            "adapter_prefix": self.adapter_prefix,
            "checkpoint_step": self.checkpoint_step,
            "lora": dict(self.lora),
            "served_lora_rank": self.served_lora_rank,
        }


def parent_of(job: FineTuningJob) -> dict[str, Any] | None:
    """The job's `CONTINUED_FROM` record, or None for a job on a base model."""
    record = (job.hyperparameters or {}).get(CONTINUED_FROM)
    return record if isinstance(record, dict) else None


def base_model_of(job: FineTuningJob) -> str:
    """The registry model the job trains on: its `model`, or its parent's base model when it continues one."""
    record = parent_of(job)
    return str(record["base_model"]) if record else job.model


def requested_hyperparameters(job: FineTuningJob) -> dict[str, Any]:
    """The hyperparameters as validated at create time, without the continuation record."""
    return {k: v for k, v in (job.hyperparameters or {}).items() if k != CONTINUED_FROM}


def served_lora_rank(job: FineTuningJob) -> int | None:
    """The rank of the adapter the job stores and serves: its own LoRA's, plus its parent's stored adapter's
    when it continues one (the two are concatenated, gpu_worker/parent_adapter.py). None before it resolved."""
    rank = (job.resolved_hyperparameters or {}).get("lora_rank")
    if not isinstance(rank, int):
        return None
    record = parent_of(job)
    return rank + int(record["served_lora_rank"]) if record else rank


def resolve_parent(session: Session, *, organization_id: str, model: str) -> ParentModel:
    """The succeeded job's model or checkpoint named `model`, of this organization. Another organization's
    model, a deleted one, an expired checkpoint and an unknown name are all 404 `model_not_found`; a job that
    has not succeeded is a 400."""
    not_found = NotFoundError(
        f"The model '{model[:300]}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )
    if len(model) > MAX_MODEL_NAME:
        raise not_found
    head, _, step_text = model.partition(CHECKPOINT_SUFFIX)
    checkpoint_step = int(step_text) if step_text.isdigit() else None
    if step_text and checkpoint_step is None:
        raise not_found
    job_id = head.rsplit(":", 1)[-1]
    job = session.exec(
        select(FineTuningJob).where(
            FineTuningJob.id == job_id, FineTuningJob.organization_id == organization_id
        )
    ).first()
    if job is None:
        raise not_found
    if job.status != jobs.SUCCEEDED:
        raise InvalidRequestError(
            f"The job {job.id} behind '{model[:300]}' is {job.status}: only a succeeded job's model and "
            "checkpoints can be trained further.",
            param="model",
            code="model_not_ready",
        )
    parent = session.exec(
        select(FineTunedModel).where(
            FineTunedModel.id == head,
            FineTunedModel.organization_id == organization_id,
            col(FineTunedModel.deleted_at).is_(None),
        )
    ).first()
    if parent is None or parent.job_id != job.id:
        raise not_found
    prefix = parent.adapter_prefix
    if checkpoint_step is not None:
        checkpoint = session.exec(
            select(JobCheckpoint).where(
                JobCheckpoint.fine_tuned_model_checkpoint == model,
                JobCheckpoint.organization_id == organization_id,
                col(JobCheckpoint.deleted_at).is_(None),
            )
        ).first()
        if checkpoint is None:
            raise not_found
        prefix = checkpoint.storage_prefix
    resolved = job.resolved_hyperparameters or {}
    lora = {name: resolved.get(name) for name in LORA_SHAPE}
    served = served_lora_rank(job)
    if served is None or None in lora.values():
        raise InvalidRequestError(
            f"The job {job.id} recorded no LoRA shape; its model cannot be trained further.",
            param="model",
            code="model_not_ready",
        )
    return ParentModel(
        model=model,
        base_model=base_model_of(job),
        job_id=job.id,
        adapter_prefix=prefix,
        checkpoint_step=checkpoint_step,
        lora=lora,
        served_lora_rank=served,
    )


def take_parent_shape(parent: ParentModel, hyperparameters: dict[str, Any], *, param: str) -> None:
    """Give the new job its parent's LoRA shape (in place); a conflicting value is a 400 naming the field."""
    for name in LORA_SHAPE:
        given = hyperparameters.get(name, "auto")
        wanted = parent.lora[name]
        if given != "auto" and given != wanted:
            raise InvalidRequestError(
                f"{name} is {given!r}, but '{parent.model[:300]}' was trained with {name} {wanted!r}: a job "
                f"that continues a model keeps its LoRA shape (leave {name} out, or 'auto').",
                param=f"{param}.{name}",
                code="invalid_hyperparameter",
            )
        hyperparameters[name] = wanted
    if hyperparameters.get("quantization") == "4bit":
        raise InvalidRequestError(
            "quantization '4bit' cannot continue a fine-tuned model: its adapter is merged into the base "
            "weights, which 4-bit weights cannot hold exactly.",
            param=f"{param}.quantization",
            code="invalid_hyperparameter",
        )
    hyperparameters[CONTINUED_FROM] = parent.record()
