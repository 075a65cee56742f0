"""POST /v1/fine_tuning/estimates: how much GPU memory a job would need, and which live GPUs could run it,
before any job is created. Same body as a job create; the same estimator the scheduler places with
(core/vram.py) and the same rule for free memory (total less the reservations of the jobs placed there)."""

from __future__ import annotations

import logging
from typing import Any

from sqlmodel import Session, col, func, select

from api.protocol import CreateEstimateRequest, EstimatedCost, EstimateObject, FileTokenCounts, GpuFit
from api.services.job_requests import base_model_for, fine_tune_file, method_and_hyperparameters
from core.continuation import CONTINUED_FROM
from core.errors import InvalidRequestError
from core.hyperparameters import MAX_AUTO_SEQ_LENGTH, ResolvedHyperparameters, longest_example_bytes
from core.model_registry import get_base_model
from core.models import File, FineTuningJob, Organization
from core.pricing import CPU_CLASS, estimate_cost
from core.queue import WorkerInfo, live_workers
from core.settings import Settings
from core.storage import Storage
from core.token_counts import (
    TokenCounts,
    TokenizerUnavailableError,
    TrainingDataError,
    count_stored_file,
)
from core.training_data import format_refusal
from core.vram import DEFAULT_PROFILE, EstimateError, estimate_job, estimate_request, micro_batch_for_fleet

log = logging.getLogger("ftserve.api")


async def _fleet(settings: Settings) -> list[WorkerInfo] | None:
    """The live workers, or None when the registry (Redis) cannot be read."""
    if not settings.redis_url:
        return None
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return await live_workers(client)
    except Exception as exc:  # noqa: BLE001 (an estimate without the fleet is still an estimate)
        log.warning("estimate: cannot read the worker registry: %s", exc)
        return None
    finally:
        await client.aclose()


def _holdings(session: Session) -> tuple[dict[tuple[str, int], int], dict[str, int]]:
    """(reserved MiB per (worker, device), jobs held per worker), from the DB."""
    rows = session.exec(
        select(
            FineTuningJob.worker_id,
            FineTuningJob.gpu_index,
            func.sum(FineTuningJob.reserved_mb),
            func.count(),
        )
        .where(col(FineTuningJob.worker_id).is_not(None))
        .group_by(col(FineTuningJob.worker_id), col(FineTuningJob.gpu_index))
    ).all()
    reserved: dict[tuple[str, int], int] = {}
    held: dict[str, int] = {}
    for worker, index, mb, count in rows:
        held[str(worker)] = held.get(str(worker), 0) + int(count)
        if index is not None:
            reserved[(str(worker), int(index))] = int(mb or 0)
    return reserved, held


def _n_examples(
    session: Session, org: Organization, request: CreateEstimateRequest, method: str
) -> tuple[int, int | None, File | None]:
    """The training file's example count, its longest example in bytes (None without a file), and its row."""
    if request.training_file and request.n_examples:
        raise InvalidRequestError(
            "Give either training_file or n_examples, not both.", param="n_examples", code="invalid_value"
        )
    if request.n_examples:
        return request.n_examples, None, None
    if not request.training_file:
        raise InvalidRequestError(
            "An estimate needs training_file (a processed file) or n_examples (how many examples it will hold).",
            param="training_file",
            code="missing_required_parameter",
        )
    row = fine_tune_file(session, org=org, file_id=request.training_file, param="training_file")
    assert row is not None
    refusal = format_refusal(row.data_format, row.data_layout, method)
    if refusal is not None:
        raise InvalidRequestError(
            f"File {row.id} cannot train a {method} job: {refusal}",
            param="training_file",
            code="invalid_file_format",
        )
    return row.example_count or 0, longest_example_bytes([row]), row


def _tokens(
    settings: Settings, storage: Storage, model: str, row: File | None, max_seq_length: Any, notes: list[str]
) -> TokenCounts | None:
    """The training file counted with the model's tokenizer, or None (with a note) where it can't be."""
    if row is None or not row.data_format:
        return None
    base = get_base_model(settings, model)
    context = base.context_length()
    limit = (
        max_seq_length
        if isinstance(max_seq_length, int)
        else min(context or MAX_AUTO_SEQ_LENGTH, MAX_AUTO_SEQ_LENGTH)
    )
    try:
        return count_stored_file(storage, row.storage_key, row.data_format, base, max_seq_length=limit)
    except (TokenizerUnavailableError, TrainingDataError) as exc:
        notes.append(f"Tokens not counted ({exc}); max_seq_length is sized from the file's bytes.")
        return None


async def create_estimate(
    *,
    session: Session,
    settings: Settings,
    storage: Storage,
    org: Organization,
    request: CreateEstimateRequest,
) -> EstimateObject:
    method, hyperparameters, param = method_and_hyperparameters(request)
    if request.max_seq_length is not None:
        given = hyperparameters.get("max_seq_length", "auto")
        if given not in ("auto", request.max_seq_length):
            raise InvalidRequestError(
                f"max_seq_length is given twice, as {request.max_seq_length} and as {given} in {param}.",
                param="max_seq_length",
            )
        hyperparameters["max_seq_length"] = request.max_seq_length
    # An ft: model is estimated as the job continuing it would train: on its base model, with its LoRA shape.
    base_model = base_model_for(
        session, settings, org=org, model=request.model, hyperparameters=hyperparameters, param=param
    )
    hyperparameters.pop(CONTINUED_FROM, None)
    n_examples, longest, row = _n_examples(session, org, request, method)
    token_notes: list[str] = []
    tokens = _tokens(settings, storage, base_model, row, hyperparameters.get("max_seq_length"), token_notes)
    try:
        estimates = estimate_request(
            settings,
            model=base_model,
            method_type=method,
            hyperparameters=hyperparameters,
            n_examples=n_examples,
            longest_example_bytes=longest,
            longest_example_tokens=tokens.longest_example_tokens if tokens and tokens.exact else None,
            has_validation_file=request.validation_file is not None,
        )
    except EstimateError as exc:
        raise InvalidRequestError(
            f"Cannot size the model '{base_model}': {exc}", param="model", code="model_not_sizable"
        ) from None
    gpu, cpu = estimates.gpu, estimates.cpu
    hp = estimates.hyperparameters
    need = gpu.reservation_mb

    workers = await _fleet(settings)
    notes = list(gpu.notes) + token_notes
    if tokens is not None and tokens.over_limit:
        notes.append(
            f"{tokens.over_limit} examples are longer than {tokens.max_seq_length} tokens (lines "
            f"{', '.join(map(str, tokens.over_limit_lines))}): a job would fail on them."
        )
    fits: dict[tuple[str, int], dict[str, Any]] = {}
    best: tuple[int, int, str] | None = None  # (free, total, class) of the best fit now
    any_gpu = False
    if workers is None:
        notes.append("The worker registry is unreachable: fits lists nothing and placeable is unknown.")
    else:
        reserved, held = _holdings(session)
        four_bit = estimates.hyperparameters.quantization == "4bit"
        if four_bit:
            notes.append(
                "4-bit quantization runs only on workers that report bnb_4bit (bitsandbytes >= 0.50)."
            )
        any_gpu = any(device.name != "cpu" for worker in workers for device in worker.gpus)
        capable = [w for w in workers if not four_bit or "bnb_4bit" in w.capabilities]
        gpu_room = max((d.total_mb for w in capable for d in w.gpus if d.name != "cpu"), default=None)
        options = [(hp.micro_batch, need, cpu.reservation_mb), *estimates.fallbacks]
        chosen = micro_batch_for_fleet(options, gpu_room, None)
        if chosen is not None and chosen[0] != hp.micro_batch:
            # As the scheduler would place it: no live GPU holds the job's own micro-batch, a smaller one fits.
            notes.append(
                f"No live GPU holds micro-batches of {hp.micro_batch} (~{need / 1024:.1f} GB): the scheduler "
                f"would run micro-batches of {chosen[0]} x {hp.batch_size // chosen[0]} accumulation steps "
                f"(the same batch_size {hp.batch_size}) in ~{(chosen[1] or 0) / 1024:.1f} GB."
            )
            hp = hp.model_copy(
                update={
                    "micro_batch_size": chosen[0],
                    "gradient_accumulation_steps": hp.batch_size // chosen[0],
                }
            )
            gpu = estimate_job(estimates.arch, method, hp, profile=DEFAULT_PROFILE)
            need = gpu.reservation_mb
        for worker in workers:
            if four_bit and "bnb_4bit" not in worker.capabilities:
                continue
            room = worker.max_jobs - held.get(worker.id, 0) > 0
            for device in worker.gpus:
                if device.name == "cpu":
                    continue
                if device.total_mb < need:
                    continue
                entry = fits.setdefault(
                    (device.name, device.total_mb), {"gpu_class": device.name, "total_mb": device.total_mb,
                                                     "devices": 0, "free_now": 0}
                )  # fmt: skip
                entry["devices"] += 1
                free = min(device.total_mb - reserved.get((worker.id, device.index), 0), device.free_mb)
                if room and free >= need:
                    entry["free_now"] += 1
                    if best is None or (free, device.total_mb) < best[:2]:
                        best = (free, device.total_mb, device.name)
    classes = sorted(fits.values(), key=lambda f: (f["total_mb"], f["gpu_class"]))
    gpu_class = best[2] if best else (classes[0]["gpu_class"] if classes else None)
    placeable: bool | None = bool(classes) if any_gpu else None
    trained = _trained_tokens(tokens.trained_tokens, hp) if tokens else None
    processed = _trained_tokens(tokens.total_tokens, hp) if tokens else None
    if hp.method == "reinforcement":  # the trained tokens are the sampled ones: at most every group's longest
        sampled = (
            hp.steps_per_epoch * hp.batch_size * (hp.num_generations or 1) * (hp.max_completion_tokens or 0)
        )
        trained = sampled * hp.n_epochs
        processed = (processed or 0) * (hp.num_generations or 1) + trained
    cpu_only = workers is not None and not any_gpu and any(d.name == "cpu" for w in workers for d in w.gpus)
    cost = estimate_cost(
        settings,
        trained_tokens=trained,
        processed_tokens=processed,
        parameters=gpu.parameters,
        gpu_class=gpu_class or (CPU_CLASS if cpu_only else None),
    )
    return EstimateObject(
        model=request.model,
        method=method,
        estimated_vram_mb=need,
        peak_vram_mb=gpu.peak_mb,
        breakdown=gpu.breakdown(),
        gpu_class=gpu_class,
        fits=[GpuFit(**f) for f in classes],
        placeable=placeable,
        cpu_ram_mb=cpu.reservation_mb,
        parameters=gpu.parameters,
        trainable_parameters=gpu.trainable_parameters,
        tokens_per_micro_batch=gpu.tokens_per_micro_batch,
        tokens=FileTokenCounts(model=base_model, **tokens.as_dict()) if tokens else None,
        trained_tokens=trained,
        hyperparameters={
            "batch_size": hp.batch_size,
            "micro_batch_size": hp.micro_batch,
            "gradient_accumulation_steps": hp.gradient_accumulation_steps,
            "max_seq_length": hp.max_seq_length,
            "lora_rank": hp.lora_rank,
            "lora_alpha": hp.lora_alpha,
            "target_modules": hp.target_modules,
            "n_epochs": hp.n_epochs,
            "n_examples": hp.n_examples,
            "total_steps": hp.total_steps,
            "quantization": hp.quantization,
            "early_stopping": hp.early_stopping,
            "holdout_examples": hp.holdout_examples,
        },
        profile=gpu.profile,
        notes=notes,
        estimated_cost=EstimatedCost(
            currency=cost.currency,
            value=cost.value,
            trained_tokens=cost.trained_tokens,
            trained_tokens_cost=cost.trained_tokens_cost,
            gpu_class=cost.gpu_class,
            gpu_seconds=cost.gpu_seconds,
            gpu_cost=cost.gpu_cost,
            throughput=(
                {
                    "gpu_class": cost.throughput_class,
                    "param_tokens_per_second": cost.throughput_param_tokens_per_s,
                }
                if cost.throughput_class is not None
                else None
            ),
            notes=cost.notes,
        ),
    )


def _trained_tokens(per_file: int, hp: ResolvedHyperparameters) -> int:
    """Loss-bearing tokens over every epoch: an upper bound (early stopping may end sooner), with an
    early-stopping carve-out taken off by its share of the file's examples (which ones is the worker's draw)."""
    per_epoch = per_file * hp.n_examples / (hp.n_examples + hp.holdout_examples)
    return round(per_epoch) * hp.n_epochs
