"""Fine-tuning jobs: create, list, retrieve, cancel, pause, resume, events, checkpoints."""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from api.protocol import (
    CreateFineTuningJobRequest,
    CursorListResponse,
    FineTuningJobCheckpointObject,
    FineTuningJobError,
    FineTuningJobEventObject,
    FineTuningJobObject,
    ListResponse,
    ResumeFineTuningJobRequest,
)
from api.services.idempotency import check_idempotency_key, key_expired, key_holder, key_reused, release_key
from api.services.job_requests import (
    base_model_for,
    check_grader_fields,
    check_grader_models,
    fine_tune_file,
    grader_of,
    method_and_hyperparameters,
)
from api.services.pagination import paginate
from core import ids, jobs
from core.continuation import CONTINUED_FROM, base_model_of
from core.errors import ConflictError, InvalidRequestError, NotFoundError, QuotaExceededError
from core.models import FineTuningJob, JobCheckpoint, JobEvent, Organization, now_s
from core.settings import Settings
from core.storage import Storage
from core.training_data import format_refusal
from core.usage import MAX_COST, MAX_TRAINED_TOKENS, cap_reached, check_org_budget, job_usage

OPENAI_HYPERPARAMETERS = ("batch_size", "learning_rate_multiplier", "n_epochs")
VRAM_BREAKDOWN = (
    "weights_mb", "trainable_state_mb", "gradients_mb", "activations_mb", "logits_mb",
    "optimizer_workspace_mb", "overhead_mb", "margin_mb",
)  # fmt: skip
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
SUFFIX_FORBIDDEN = set(":/ \t\r\n")
# Where a job's training metrics are, for the refusal of an integration that would have sent them elsewhere.
METRICS_INSTEAD = (
    "The job's training metrics are its 'metrics' events (GET /v1/fine_tuning/jobs/{id}/events), its "
    "checkpoints' metrics (GET /v1/fine_tuning/jobs/{id}/checkpoints) and, once it succeeds, the results.csv "
    "file named in its result_files."
)


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if not metadata:
        return
    if len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidRequestError(f"metadata holds at most {MAX_METADATA_PAIRS} pairs.", param="metadata")
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY or len(value) > MAX_METADATA_VALUE:
            raise InvalidRequestError(
                f"metadata keys hold at most {MAX_METADATA_KEY} characters and values {MAX_METADATA_VALUE}.",
                param=f"metadata.{key[:64]}",
            )


def _check_integrations(integrations: list[dict[str, Any]] | None) -> None:
    """ftserve has no integrations: each entry is refused, never stored and ignored. The request model already
    refuses a non-list and entries that are not objects; here each entry needs a string `type`."""
    for index, entry in enumerate(integrations or []):
        where = f"integrations[{index}]"
        kind = entry.get("type")
        if not isinstance(kind, str) or not kind:
            got = "it is missing" if "type" not in entry else f"got {repr(kind)[:64]}"
            raise InvalidRequestError(
                f"Invalid value for '{where}.type': each integration is an object with a string 'type' "
                f"({got}).",
                param=f"{where}.type",
                code="invalid_value",
            )
        if kind == "wandb":
            message = (
                "The 'wandb' integration is not supported: ftserve does not send runs to Weights & Biases. "
                "Leave out 'integrations' (or send an empty list). "
            )
        else:
            message = (
                f"Unknown integration type {kind[:64]!r}: ftserve supports no integrations. "
                "Leave out 'integrations' (or send an empty list). "
            )
        raise InvalidRequestError(
            message + METRICS_INSTEAD, param=f"{where}.type", code="unsupported_integration"
        )


def request_hash(request: CreateFineTuningJobRequest) -> str:
    """SHA-256 of the validated request in a canonical form: key order, whitespace, unknown fields and
    explicit nulls do not change it."""
    canonical = json.dumps(
        request.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(job: FineTuningJob, *, digest: str) -> FineTuningJobObject:
    """The earlier job of this key, if the request is the same one."""
    if job.request_hash != digest:
        raise key_reused(kind="job", object_id=job.id, request="request body", original="body")
    return job_object(job)


def create_job(
    *,
    session: Session,
    settings: Settings,
    org: Organization,
    request: CreateFineTuningJobRequest,
    idempotency_key: str | None = None,
    storage: Storage | None = None,
) -> tuple[FineTuningJobObject, bool]:
    """Create a job; returns it and whether it is a replay.

    With an Idempotency-Key, the same key and body within 24 h return the job that the first request created
    (as it is now), and create nothing; a different body is refused. The key is looked up before the checks
    below, so a replay is answered even where a new create would now be refused (the quota that the job
    itself fills, a deleted training file). Only a created job records its key: a refused request can be
    retried with the same key once fixed."""
    organization_id = org.id
    key = check_idempotency_key(idempotency_key)
    digest = request_hash(request) if key is not None else ""
    expired: FineTuningJob | None = None
    if key is not None:
        earlier = key_holder(session, FineTuningJob, organization_id=organization_id, key=key)
        if earlier is not None and not key_expired(earlier.created_at):
            return _replay(earlier, digest=digest), True
        expired = earlier

    method_type, hyperparameters, param = method_and_hyperparameters(request)
    # An ft: model continues that model's training (core.continuation); the job keeps the name it was given.
    base_model_for(
        session, settings, org=org, model=request.model, hyperparameters=hyperparameters, param=param
    )
    if request.suffix is not None and SUFFIX_FORBIDDEN & set(request.suffix):
        raise InvalidRequestError("suffix may not contain ':', '/' or whitespace.", param="suffix")
    _check_metadata(request.metadata)
    _check_integrations(request.integrations)
    files = [
        (
            fine_tune_file(session, org=org, file_id=request.training_file, param="training_file"),
            "training_file",
        ),
        (
            fine_tune_file(session, org=org, file_id=request.validation_file, param="validation_file"),
            "validation_file",
        ),
    ]
    for row, param in files:
        refusal = None if row is None else format_refusal(row.data_format, row.data_layout, method_type)
        if row is not None and refusal is not None:
            raise InvalidRequestError(
                f"File {row.id} cannot train a {method_type} job: {refusal}",
                param=param,
                code="invalid_file_format",
            )

    grader = grader_of(hyperparameters)
    if grader is not None:
        check_grader_models(settings, grader)
    if grader is not None and storage is not None:
        for row, param in files:
            if row is not None:
                check_grader_fields(storage, row, grader, param)

    _check_active_jobs_quota(session, settings=settings, org=org)
    check_org_budget(session, settings, org)
    job = FineTuningJob(
        id=ids.job_id(),
        organization_id=organization_id,
        model=request.model,
        training_file=request.training_file,
        validation_file=request.validation_file,
        method_type=method_type,
        hyperparameters=hyperparameters,
        suffix=request.suffix,
        seed=request.seed if request.seed is not None else secrets.randbelow(2_147_483_647),
        job_metadata=request.metadata,
        integrations=request.integrations,
        status=jobs.VALIDATING,
        priority=request.priority or 0,
        idempotency_key=key,
        request_hash=digest or None,
        max_trained_tokens=request.max_trained_tokens,
        max_cost=request.max_cost,
    )
    if expired is not None and key is not None:
        # The key's 24 h are over: its old job gives it up (unless a concurrent request already took it).
        release_key(session, FineTuningJob, holder=expired, key=key)
    session.add(job)
    jobs.append_event(session, job_id=job.id, message=f"Created fine-tuning job: {job.id}")
    try:
        session.commit()
    except IntegrityError:
        # A concurrent request with the same key committed its job first (the unique index on
        # organization + key): answer as a replay of that one.
        session.rollback()
        if key is None:
            raise
        winner = key_holder(session, FineTuningJob, organization_id=organization_id, key=key)
        if winner is None or key_expired(winner.created_at):
            raise
        return _replay(winner, digest=digest), True
    return job_object(job), False


def _check_active_jobs_quota(session: Session, *, settings: Settings, org: Organization) -> None:
    """ORG_MAX_ACTIVE_JOBS caps the jobs not yet finished, queued ones included (the scheduler's
    ORG_MAX_RUNNING_JOBS only caps how many run at once)."""
    if not settings.org_max_active_jobs:
        return
    active = session.exec(
        select(func.count()).where(
            FineTuningJob.organization_id == org.id, col(FineTuningJob.status).in_(jobs.ACTIVE)
        )
    ).one()
    if active >= settings.org_max_active_jobs:
        raise QuotaExceededError(
            f"The organization has {active} unfinished jobs, its quota is {settings.org_max_active_jobs}. "
            "Wait for one to finish, or cancel one."
        )


# OpenAI's reinforcement hyperparameters beyond the three every method has
RL_HYPERPARAMETERS = ("compute_multiplier", "eval_interval", "eval_samples")


def _hyperparameters_out(job: FineTuningJob) -> dict[str, Any]:
    """What the user asked for, with "auto" replaced by the resolved value once the job has run."""
    out: dict[str, Any] = dict.fromkeys(OPENAI_HYPERPARAMETERS, "auto")
    if job.method_type == "dpo":
        out["beta"] = "auto"
    if job.method_type == "reinforcement":
        out.update(dict.fromkeys(RL_HYPERPARAMETERS, "auto"), reasoning_effort="default")
    # the grader is the method's; a continued job's parent is its `model` (and `continued_from`)
    out.update({k: v for k, v in job.hyperparameters.items() if k not in ("grader", CONTINUED_FROM)})
    resolved = job.resolved_hyperparameters or {}
    for name, value in resolved.items():
        if out.get(name) == "auto":
            out[name] = value
    if job.method_type == "reinforcement" and resolved:  # OpenAI's names for ours
        for name, ours in (("eval_interval", "eval_every_steps"), ("eval_samples", "num_generations_eval")):
            if out.get(name) == "auto" and resolved.get(ours) is not None:
                out[name] = resolved[ours]
    if resolved.get("micro_batch_size"):  # how the effective batch was run: micro-batches x accumulation
        out["gradient_accumulation_steps"] = resolved.get("gradient_accumulation_steps", 1)
    return out


def _method_out(job: FineTuningJob, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    section: dict[str, Any] = {"hyperparameters": hyperparameters}
    if job.method_type == "reinforcement":
        section["grader"] = job.hyperparameters.get("grader")
    return {"type": job.method_type, job.method_type: section}


def job_object(job: FineTuningJob) -> FineTuningJobObject:
    hyperparameters = _hyperparameters_out(job)
    return FineTuningJobObject(
        id=job.id,
        created_at=job.created_at,
        error=FineTuningJobError(**job.error) if job.error else None,
        fine_tuned_model=job.fine_tuned_model,
        finished_at=job.finished_at,
        # The spec requires this (deprecated) object of every job, never null: a DPO job's is its method's.
        hyperparameters=hyperparameters,
        model=job.model,
        organization_id=job.organization_id,
        result_files=job.result_files,
        status=job.status,
        trained_tokens=job.trained_tokens,
        training_file=job.training_file,
        validation_file=job.validation_file,
        integrations=job.integrations,
        seed=job.seed,
        estimated_finish=job.estimated_finish if job.status == jobs.RUNNING else None,
        method=_method_out(job, hyperparameters),
        metadata=job.job_metadata,
        user_provided_suffix=job.suffix,
        base_model=base_model_of(job),
        attempt=job.attempt,
        step=job.step,
        total_steps=job.total_steps,
        token_counts=job.token_counts,
        max_trained_tokens=job.max_trained_tokens,
        max_cost=job.max_cost,
        **_scheduling_view(job),
    )


def _scheduling_view(job: FineTuningJob) -> dict[str, Any]:
    """The scheduling extensions: the memory estimate (itemised), the GPU class the job runs on, and, while
    it waits in the queue, its position, a start-time forecast and why it waits."""
    record = job.vram_estimate or {}
    estimate: dict[str, Any] | None = None
    if isinstance(record.get("gpu"), dict):
        gpu = record["gpu"]
        estimate = {
            "peak_mb": gpu.get("peak_mb"),
            "breakdown": {k: gpu.get(k) for k in VRAM_BREAKDOWN},
            "profile": gpu.get("profile"),
            "cpu_ram_mb": (record.get("cpu") or {}).get("reservation_mb"),
        }
    elif "error" in record:
        estimate = {"error": record["error"]}
    queued = job.status == jobs.QUEUED
    return {
        "priority": job.priority,
        "estimated_vram_mb": job.estimated_vram_mb,
        "vram_estimate": estimate,
        "gpu_class": job.gpu_name,
        "queue_position": job.queue_position if queued else None,
        "estimated_start_at": job.estimated_start_at if queued else None,
        "queue_reason": job.wait_reason if queued else None,
    }


def _job(session: Session, *, org: Organization, job_id: str) -> FineTuningJob:
    job = session.exec(
        select(FineTuningJob).where(FineTuningJob.id == job_id, FineTuningJob.organization_id == org.id)
    ).first()
    if job is None:
        raise NotFoundError(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
    return job


def retrieve_job(*, session: Session, org: Organization, job_id: str) -> FineTuningJobObject:
    return job_object(_job(session, org=org, job_id=job_id))


def list_jobs(
    *, session: Session, org: Organization, after: str | None, limit: int, metadata: dict[str, str]
) -> ListResponse[FineTuningJobObject]:
    filters: list[Any] = [FineTuningJob.organization_id == org.id]
    metadata_col: Any = FineTuningJob.job_metadata
    for key, value in metadata.items():
        filters.append(metadata_col[key].as_string() == value)
    rows, has_more = paginate(session, model=FineTuningJob, filters=filters, after=after, limit=limit)
    return ListResponse[FineTuningJobObject](data=[job_object(r) for r in rows], has_more=has_more)


def _control(
    *,
    session: Session,
    org: Organization,
    job_id: str,
    verb: str,
    from_status: set[str],
    to_status: str,
    message: str,
    **fields: Any,
) -> FineTuningJobObject:
    job = _job(session, org=org, job_id=job_id)
    if not jobs.transition(
        session, job_id=job_id, from_status=from_status, to_status=to_status, message=message, **fields
    ):
        session.rollback()
        current = _job(session, org=org, job_id=job_id).status
        allowed = ", ".join(sorted(from_status))
        raise ConflictError(
            f"Cannot {verb} job {job_id}: it is {current}; only jobs that are {allowed} can be.",
            param="fine_tuning_job_id",
        )
    session.commit()
    session.refresh(job)
    return job_object(job)


def cancel_job(*, session: Session, org: Organization, job_id: str) -> FineTuningJobObject:
    return _control(
        session=session,
        org=org,
        job_id=job_id,
        verb="cancel",
        from_status=set(jobs.ACTIVE),
        to_status=jobs.CANCELLED,
        message="Job cancelled",
        finished_at=now_s(),
        estimated_finish=None,
    )


def pause_job(*, session: Session, org: Organization, job_id: str) -> FineTuningJobObject:
    return _control(
        session=session,
        org=org,
        job_id=job_id,
        verb="pause",
        from_status={jobs.QUEUED, jobs.RUNNING},
        to_status=jobs.PAUSED,
        message="Pause requested: the job checkpoints and stops",
    )


def resume_job(
    *,
    session: Session,
    org: Organization,
    job_id: str,
    settings: Settings | None = None,
    request: ResumeFineTuningJobRequest | None = None,
) -> FineTuningJobObject:
    """Paused → queued. A body changes the caps (a field sent as null removes that cap); a job whose cap is still
    reached is refused (400 naming the cap), and so is any resume while the organization's budget is spent."""
    job = _job(session, org=org, job_id=job_id)
    caps: dict[str, Any] = {}
    if request is not None:
        caps = {
            name: getattr(request, name) for name in request.model_fields_set & {MAX_TRAINED_TOKENS, MAX_COST}
        }
    message = "Job resumed: queued to continue from its last checkpoint"
    if job.status == jobs.PAUSED:
        if settings is not None:
            check_org_budget(session, settings, org)
        used = job_usage(session, job.id)
        tokens = max(job.trained_tokens or 0, used.trained_tokens)
        reached = cap_reached(
            max_trained_tokens=caps.get(MAX_TRAINED_TOKENS, job.max_trained_tokens),
            max_cost=caps.get(MAX_COST, job.max_cost),
            trained_tokens=tokens,
            cost=used.cost,
        )
        if reached is not None:
            cap, limit, spent = reached
            raise InvalidRequestError(
                f"Job {job_id} has used {spent:g} of its {cap} of {limit:g}: resume it with a higher {cap} "
                f'(or null for none), e.g. {{"{cap}": {_higher(cap, spent)}}}.',
                param=cap,
                code="cap_reached",
            )
        if caps:
            message += " (caps now " + ", ".join(f"{k}={v}" for k, v in sorted(caps.items())) + ")"
    return _control(
        session=session,
        org=org,
        job_id=job_id,
        verb="resume",
        from_status={jobs.PAUSED},
        to_status=jobs.QUEUED,
        message=message,
        **caps,
    )


def _higher(cap: str, spent: float) -> str:
    return str(int(spent) * 2 or 1) if cap == MAX_TRAINED_TOKENS else f"{max(spent * 2, 0.01):.2f}"


def list_events(
    *, session: Session, org: Organization, job_id: str, after: str | None, limit: int
) -> ListResponse[FineTuningJobEventObject]:
    _job(session, org=org, job_id=job_id)
    rows, has_more = paginate(
        session, model=JobEvent, filters=[JobEvent.job_id == job_id], after=after, limit=limit
    )
    data = [
        FineTuningJobEventObject(
            id=r.id,
            created_at=r.created_at,
            level=r.level,
            message=r.message,
            type=r.type,
            data=r.data or {},  # rows may hold null; the spec's `data` is an object
        )
        for r in rows
    ]
    return ListResponse[FineTuningJobEventObject](data=data, has_more=has_more)


def list_checkpoints(
    *, session: Session, org: Organization, job_id: str, after: str | None, limit: int
) -> CursorListResponse[FineTuningJobCheckpointObject]:
    _job(session, org=org, job_id=job_id)
    filters = [JobCheckpoint.job_id == job_id, col(JobCheckpoint.deleted_at).is_(None)]
    rows, has_more = paginate(session, model=JobCheckpoint, filters=filters, after=after, limit=limit)
    data = [
        FineTuningJobCheckpointObject(
            id=r.id,
            created_at=r.created_at,
            fine_tuned_model_checkpoint=r.fine_tuned_model_checkpoint,
            fine_tuning_job_id=r.job_id,
            # The spec's metrics are numbers: one the step did not have is left out, not sent as null.
            metrics={k: v for k, v in (r.metrics or {}).items() if v is not None},
            step_number=r.step_number,
        )
        for r in rows
    ]
    return CursorListResponse[FineTuningJobCheckpointObject](
        data=data,
        has_more=has_more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )
