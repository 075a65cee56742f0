"""SQLModel tables. The database is the source of truth for everything but queues and liveness.

Every table has an integer `seq` primary key for stable cursor paging (many rows share a `created_at`
second) and a public string `id` with OpenAI's prefix.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def now_s() -> int:
    return int(time.time())


class Organization(SQLModel, table=True):
    __tablename__ = "organizations"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(index=True, unique=True, max_length=64)
    name: str = Field(index=True, unique=True, max_length=128)
    created_at: int = Field(default_factory=now_s)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(index=True, unique=True, max_length=64)
    organization_id: str = Field(index=True, foreign_key="organizations.id", max_length=64)
    # SHA-256 hex of the full key; the key itself is shown once and never stored.
    key_hash: str = Field(index=True, unique=True, max_length=64)
    # First characters, so a user can tell their keys apart in listings.
    display_prefix: str = Field(max_length=32)
    name: str | None = Field(default=None, max_length=128)
    created_at: int = Field(default_factory=now_s)
    revoked_at: int | None = None
    last_used_at: int | None = None
    # What the key may do (api/scopes.py): "admin", "fine_tune", "inference". None: everything (keys made
    # before scopes existed, and the server CLI's default).
    scopes: list[str] | None = Field(default=None, sa_column=Column(JSON))
    # Inference tokens (prompt + completion) the key may use per calendar month (UTC); None: no quota.
    inference_token_quota: int | None = Field(default=None, sa_column=Column(BigInteger))


class File(SQLModel, table=True):
    __tablename__ = "files"
    __table_args__ = (
        # One file per (organization, Idempotency-Key): two concurrent uploads with one key insert one row.
        Index("ix_files_org_idempotency_key", "organization_id", "idempotency_key", unique=True),
    )

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(index=True, unique=True, max_length=64)
    organization_id: str = Field(index=True, max_length=64)
    filename: str = Field(max_length=512)
    purpose: str = Field(index=True, max_length=32)
    bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    created_at: int = Field(default_factory=now_s)
    expires_at: int | None = None
    # uploaded → processed | error. Only `processed` files can be trained on.
    status: str = Field(default="uploaded", max_length=16)
    status_details: str | None = Field(default=None, sa_column=Column(Text))
    # Detected training-data format: chat | prompt_completion | preference | sharegpt | alpaca | kto.
    data_format: str | None = Field(default=None, max_length=32)
    # The layout the first valid example came in (core.training_data.LAYOUTS: trl_preference, text, ...). None:
    # validated before 0012.
    data_layout: str | None = Field(default=None, max_length=64)
    example_count: int | None = None
    # Bytes of the longest valid example line: no tokenizer makes more tokens than bytes, so this bounds the
    # longest example's tokens (an "auto" max_seq_length is sized from it). None: validated before 0010.
    longest_example_bytes: int | None = None
    # The first 100 validation errors: [{line, field, message, code}], kept for the report endpoint.
    validation_errors: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    validation_error_count: int = 0
    # Known fields that training ignores: [{field, code, line, count, message}], one per field. None: before 0012.
    validation_warnings: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    storage_key: str = Field(max_length=512)
    sha256: str | None = Field(default=None, max_length=64)
    deleted_at: int | None = Field(default=None, index=True)
    # -- Idempotency-Key on upload (processed files only): a retry with the same key, purpose and bytes
    # (`sha256`) within 24 h gets this file back. Given up once the file is deleted or expires, or after 24 h.
    idempotency_key: str | None = Field(default=None, max_length=255)


class FineTuningJob(SQLModel, table=True):
    __tablename__ = "fine_tuning_jobs"
    __table_args__ = (
        # One job per (organization, Idempotency-Key): two concurrent creates with one key insert one row.
        Index("ix_fine_tuning_jobs_org_idempotency_key", "organization_id", "idempotency_key", unique=True),
    )

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(index=True, unique=True, max_length=64)
    organization_id: str = Field(index=True, max_length=64)
    model: str = Field(max_length=256)
    training_file: str = Field(max_length=64)
    validation_file: str | None = Field(default=None, max_length=64)
    method_type: str = Field(default="supervised", max_length=16)
    # What the user asked for ("auto" kept), and what it resolved to once the job ran.
    hyperparameters: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    resolved_hyperparameters: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    suffix: str | None = Field(default=None, max_length=64)
    seed: int = 0
    job_metadata: dict[str, str] | None = Field(default=None, sa_column=Column("metadata", JSON))
    integrations: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    # validating_files → queued → running → succeeded | failed | cancelled, and paused.
    status: str = Field(default="validating_files", index=True, max_length=32)
    # Bumped each time the job is placed on a worker; every worker write is fenced by it.
    attempt: int = 0
    worker_id: str | None = Field(default=None, index=True, max_length=128)
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    fine_tuned_model: str | None = Field(default=None, max_length=512)
    result_files: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    trained_tokens: int | None = Field(default=None, sa_column=Column(BigInteger))
    step: int = 0
    total_steps: int | None = None
    created_at: int = Field(default_factory=now_s)
    started_at: int | None = None
    finished_at: int | None = None
    estimated_finish: int | None = None
    updated_at: int = Field(default_factory=now_s)
    # -- scheduling (issue #4) --
    # Higher runs first; an ftserve extension to the create body.
    priority: int = Field(default=0, index=True)
    # What the scheduler reserves for the job on a GPU (estimate + margin), and the itemised estimates
    # ({"gpu": ..., "cpu": ..., "total_steps": ...} or {"error": ...}): set when the job is queued.
    estimated_vram_mb: int | None = None
    vram_estimate: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    # The job's files counted with its model's tokenizer when it was queued (core.token_counts):
    # {"model", "max_seq_length", "training": TokenCounts.as_dict(), "validation": ...}; None when not countable.
    token_counts: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    # Where the current (or last) attempt was placed, and how much it holds there.
    gpu_index: int | None = None
    gpu_name: str | None = Field(default=None, max_length=128)
    reserved_mb: int | None = None
    # Renewed by the worker's heartbeat while it runs the attempt; the reaper re-queues an expired one.
    lease_expires_at: float | None = Field(default=None, index=True)
    lost_count: int = 0  # attempts abandoned by a lost worker (not preemptions)
    # For queued jobs: why they wait (the last message emitted), their place and a start-time forecast.
    wait_reason: str | None = Field(default=None, sa_column=Column(Text))
    queue_position: int | None = None
    estimated_start_at: int | None = None
    # -- Idempotency-Key on create: the key (cleared once it expires, 24 h) and the SHA-256 of the validated
    # request, so a retry with the same key and body gets this job back and a different body is refused.
    idempotency_key: str | None = Field(default=None, max_length=255)
    request_hash: str | None = Field(default=None, max_length=64)
    # -- caps (issue #21, extensions): the worker pauses the job once either is reached; a resume may raise them.
    max_trained_tokens: int | None = Field(default=None, sa_column=Column(BigInteger))
    max_cost: float | None = None


class JobEvent(SQLModel, table=True):
    __tablename__ = "fine_tuning_job_events"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(index=True, unique=True, max_length=64)
    job_id: str = Field(index=True, max_length=64)
    created_at: int = Field(default_factory=now_s)
    level: str = Field(default="info", max_length=8)
    message: str = Field(sa_column=Column(Text, nullable=False))
    type: str = Field(default="message", max_length=16)
    data: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class JobCheckpoint(SQLModel, table=True):
    __tablename__ = "fine_tuning_job_checkpoints"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(index=True, unique=True, max_length=64)
    job_id: str = Field(index=True, max_length=64)
    organization_id: str = Field(index=True, max_length=64)
    step_number: int
    attempt: int = 0
    created_at: int = Field(default_factory=now_s)
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    fine_tuned_model_checkpoint: str = Field(max_length=512)
    # Storage prefix of the complete checkpoint (published only after every object is written).
    storage_prefix: str = Field(max_length=512)
    deleted_at: int | None = None


class FineTunedModel(SQLModel, table=True):
    __tablename__ = "fine_tuned_models"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(index=True, unique=True, max_length=512)
    organization_id: str = Field(index=True, max_length=64)
    job_id: str = Field(index=True, max_length=64)
    base_model: str = Field(max_length=256)
    created_at: int = Field(default_factory=now_s)
    # Storage prefix of the adapter (or the checkpoint, for `...:ckpt-step-N` models).
    adapter_prefix: str = Field(max_length=512)
    checkpoint_step: int | None = None
    deleted_at: int | None = Field(default=None, index=True)


# --- Webhooks (issue #6) ----------------------------------------------------------------------------------------


class WebhookEndpoint(SQLModel, table=True):
    __tablename__ = "webhook_endpoints"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(index=True, unique=True, max_length=64)
    organization_id: str = Field(index=True, max_length=64)
    url: str = Field(sa_column=Column(Text, nullable=False))
    name: str = Field(default="", max_length=128)
    description: str | None = Field(default=None, max_length=512)
    # Subscribed event types; None means every type, present and future.
    events: list[str] | None = Field(default=None, sa_column=Column(JSON))
    enabled: bool = True
    # Why it was disabled: "disabled by user", or "endpoint answered 410 Gone".
    disabled_reason: str | None = Field(default=None, max_length=256)
    # Signing secrets, encrypted (core.webhooks.SecretBox): HMAC needs them back, so they cannot be hashed.
    secret_ciphertext: str = Field(sa_column=Column(Text, nullable=False))
    secret_hint: str = Field(max_length=32)
    # After a rotation the old secret also signs until this time (unix seconds).
    previous_secret_ciphertext: str | None = Field(default=None, sa_column=Column(Text))
    previous_secret_expires_at: int | None = None
    created_at: int = Field(default_factory=now_s)
    updated_at: int = Field(default_factory=now_s)


class WebhookEvent(SQLModel, table=True):
    """One event, shared by its deliveries. `payload` holds the exact bytes that are signed and sent."""

    __tablename__ = "webhook_events"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(index=True, unique=True, max_length=64)
    organization_id: str = Field(index=True, max_length=64)
    type: str = Field(max_length=64)
    job_id: str = Field(index=True, max_length=64)
    created_at: int = Field(default_factory=now_s)
    payload: str = Field(sa_column=Column(Text, nullable=False))


class WebhookDelivery(SQLModel, table=True):
    """The outbox: one row per (event, endpoint), written in the transaction of the change it reports."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "endpoint_id", name="uq_webhook_deliveries_event_endpoint"),
    )

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(index=True, unique=True, max_length=64)
    event_id: str = Field(index=True, max_length=64)
    endpoint_id: str = Field(index=True, max_length=64)
    organization_id: str = Field(max_length=64)
    # pending → delivered | failed (retries exhausted, or 410) | cancelled (endpoint disabled)
    status: str = Field(default="pending", index=True, max_length=16)
    attempts: int = 0
    next_attempt_at: float = Field(index=True)
    # A dispatcher holds the row while it sends; an expired lease (a killed scheduler) is claimable again.
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_expires_at: float | None = None
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, max_length=512)
    created_at: int = Field(default_factory=now_s)
    delivered_at: int | None = None


class WebhookDeliveryAttempt(SQLModel, table=True):
    """Every HTTP attempt, for `GET /v1/webhook_endpoints/{id}/deliveries`. Bodies are kept as short excerpts."""

    __tablename__ = "webhook_delivery_attempts"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(index=True, unique=True, max_length=64)
    delivery_id: str = Field(index=True, max_length=64)
    endpoint_id: str = Field(index=True, max_length=64)
    event_id: str = Field(index=True, max_length=64)
    event_type: str = Field(max_length=64)
    attempt: int
    # succeeded | failed
    status: str = Field(max_length=16)
    response_status_code: int | None = None
    latency_ms: int | None = None
    error: str | None = Field(default=None, max_length=512)
    response_body: str | None = Field(default=None, max_length=512)
    # When the next attempt is due, if there is one.
    next_retry_at: int | None = None
    created_at: int = Field(default_factory=now_s)


# --- Inference (issue #5): vLLM replicas, servable adapters, and where each adapter is loaded ----------------


class InferenceReplica(SQLModel, table=True):
    """One vLLM server for one base model. `managed` ones are started by `ftserve up`; the others are
    registered through settings (`FTSERVE_INFERENCE_REPLICAS`) or `ftserve inference add`."""

    __tablename__ = "inference_replicas"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(index=True, unique=True, max_length=64)
    base_model: str = Field(index=True, max_length=256)
    url: str = Field(index=True, unique=True, max_length=512)
    # Where ftserve writes adapter copies for this replica; vLLM reads them at the same absolute path
    # (the same host, or a volume mounted at the same path on both). Unused when agent_url is set.
    adapter_dir: str = Field(max_length=1024)
    # The `ftserve adapter-agent` beside this vLLM (split deployments): it copies adapters from object
    # storage to the vLLM host's own disk and says where they are.
    agent_url: str | None = Field(default=None, max_length=512)
    api_key: str | None = Field(default=None, max_length=512)
    max_adapters: int = 4
    max_lora_rank: int = 64
    # managed | settings | cli
    source: str = Field(default="cli", max_length=16)
    # unknown | healthy | unhealthy
    status: str = Field(default="unknown", max_length=16)
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    last_checked_at: int | None = None
    created_at: int = Field(default_factory=now_s)
    updated_at: int = Field(default_factory=now_s)


class ServedAdapter(SQLModel, table=True):
    """A model name that inference can serve: a job's final adapter (`ft:...`) or a checkpoint
    (`ft:...:ckpt-step-N`). `rel_path` is its immutable, versioned copy under a replica's adapter_dir."""

    __tablename__ = "served_adapters"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(index=True, unique=True, max_length=512)
    organization_id: str = Field(index=True, max_length=64)
    job_id: str = Field(index=True, max_length=64)
    base_model: str = Field(max_length=256)
    checkpoint_step: int | None = None
    storage_prefix: str = Field(max_length=512)
    # sha256 (first 16 hex) of adapter_model.safetensors: the version in the local path.
    version: str | None = Field(default=None, max_length=64)
    rel_path: str | None = Field(default=None, max_length=1024)
    # pending → ready | rejected | failed; deleted once the model is deleted.
    status: str = Field(default="pending", index=True, max_length=16)
    error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: int = Field(default_factory=now_s)
    ready_at: int | None = None
    deleted_at: int | None = None


class AdapterPlacement(SQLModel, table=True):
    """Adapter `adapter_id` is loaded on replica `replica_id` (as far as ftserve knows: the scheduler's health
    check drops rows the replica no longer lists, e.g. after a vLLM restart)."""

    __tablename__ = "adapter_placements"
    __table_args__ = (
        UniqueConstraint("adapter_id", "replica_id", name="uq_adapter_placements_adapter_replica"),
    )

    seq: int | None = Field(default=None, primary_key=True)
    adapter_id: str = Field(index=True, max_length=512)
    replica_id: str = Field(index=True, max_length=64)
    lora_path: str = Field(max_length=1024)
    loaded_at: int = Field(default_factory=now_s)
    # Milliseconds since the epoch of the last request served with it: the LRU key for eviction.
    last_used_ms: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))


# --- Exports (issue #18): a job's adapter, merged model or GGUF, made by a worker and offered as a File -------


class JobExport(SQLModel, table=True):
    """One export of a job's adapter (or one of its checkpoints). queued → running → succeeded | failed.

    The scheduler hands a queued export to a live worker (worker_id, a new attempt, a lease); the worker renews the
    lease while it runs and fences every write by attempt and worker, so an export whose worker was lost is handed
    out again and the lost attempt can publish nothing. `file_id` names the File once the export succeeded."""

    __tablename__ = "fine_tuning_job_exports"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(index=True, unique=True, max_length=64)
    organization_id: str = Field(index=True, max_length=64)
    job_id: str = Field(index=True, max_length=64)
    # adapter | merged | gguf
    format: str = Field(max_length=16)
    # None: the job's final adapter; else the step of the checkpoint exported.
    checkpoint_step: int | None = None
    # The model name of what is exported: ft:... or ft:...:ckpt-step-N.
    source_model: str = Field(max_length=512)
    # queued | running | succeeded | failed
    status: str = Field(default="queued", index=True, max_length=16)
    attempt: int = 0
    worker_id: str | None = Field(default=None, index=True, max_length=128)
    lease_expires_at: float | None = None
    file_id: str | None = Field(default=None, max_length=64)
    bytes: int | None = Field(default=None, sa_column=Column(BigInteger))
    # {"code", "message"} of a failed export.
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    # What was checked before the file was offered (gpu_worker/export.py), one record per check.
    checks: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: int = Field(default_factory=now_s)
    started_at: int | None = None
    finished_at: int | None = None
    updated_at: int = Field(default_factory=now_s)


# --- Usage, budgets and the audit log (issue #21) ---------------------------------------------------------------


class TrainingUsage(SQLModel, table=True):
    """What one attempt of a job used, written by the worker as the attempt ends (finished, paused, cancelled,
    failed or handed back). `cost` is priced when recorded, so a later price change does not rewrite history."""

    __tablename__ = "training_usage"
    __table_args__ = (
        UniqueConstraint("job_id", "attempt", name="uq_training_usage_job_attempt"),
        Index("ix_training_usage_org_created", "organization_id", "created_at"),
    )

    seq: int | None = Field(default=None, primary_key=True)
    organization_id: str = Field(max_length=64)
    job_id: str = Field(index=True, max_length=64)
    attempt: int
    model: str = Field(max_length=256)  # the base model trained
    gpu_class: str = Field(max_length=128)  # the GPU's name as its worker reports it, or "cpu"
    trained_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    gpu_seconds: float = 0.0
    cost: float = 0.0
    created_at: int = Field(default_factory=now_s)


class InferenceUsage(SQLModel, table=True):
    """One metered inference request: vLLM's `usage` of its answer."""

    __tablename__ = "inference_usage"
    __table_args__ = (
        Index("ix_inference_usage_org_created", "organization_id", "created_at"),
        Index("ix_inference_usage_key_created", "api_key_id", "created_at"),
    )

    seq: int | None = Field(default=None, primary_key=True)
    organization_id: str = Field(max_length=64)
    api_key_id: str = Field(max_length=64)
    model: str = Field(max_length=512)
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    created_at: int = Field(default_factory=now_s)


class OrganizationBudget(SQLModel, table=True):
    """An operator-set monthly budget of one organization (`ftserve budgets set`); None: the settings' default."""

    __tablename__ = "organization_budgets"

    seq: int | None = Field(default=None, primary_key=True)
    organization_id: str = Field(index=True, unique=True, max_length=64)
    monthly_cost: float | None = None
    monthly_trained_tokens: int | None = Field(default=None, sa_column=Column(BigInteger))
    updated_at: int = Field(default_factory=now_s)


class AuditLog(SQLModel, table=True):
    """Who did what: creates, cancels and deletes of jobs, files and models, and key changes."""

    __tablename__ = "audit_logs"
    __table_args__ = (Index("ix_audit_logs_org_effective", "organization_id", "effective_at"),)

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(index=True, unique=True, max_length=64)
    organization_id: str = Field(max_length=64)
    type: str = Field(max_length=64)  # e.g. fine_tuning.job.created, api_key.deleted
    effective_at: int = Field(default_factory=now_s)
    # api_key (a request) or operator (the server CLI)
    actor_type: str = Field(default="api_key", max_length=16)
    actor_api_key_id: str | None = Field(default=None, max_length=64)
    object_id: str | None = Field(default=None, max_length=512)
    data: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


# --- Evals (issue #18): base against fine-tuned models on held-out data, scored by graders -------------------


class Eval(SQLModel, table=True):
    """OpenAI's eval: what an item looks like (`data_source_config`) and how a sample is graded
    (`testing_criteria`, core.graders specs). Runs score one model each against it."""

    __tablename__ = "evals"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(index=True, unique=True, max_length=64)
    organization_id: str = Field(index=True, max_length=64)
    name: str = Field(default="", max_length=256)
    data_source_config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    testing_criteria: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    eval_metadata: dict[str, str] | None = Field(default=None, sa_column=Column("metadata", JSON))
    created_at: int = Field(default_factory=now_s)
    deleted_at: int | None = None


class EvalRun(SQLModel, table=True):
    """One model sampled on an eval's items and graded. queued → in_progress → completed | failed | canceled.

    The API runs it in the background (api/services/evals.py) under a lease it renews; a run whose lease expired
    (its API process died) is picked up again and resumes after its last stored output item."""

    __tablename__ = "eval_runs"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(index=True, unique=True, max_length=64)
    eval_id: str = Field(index=True, max_length=64)
    organization_id: str = Field(index=True, max_length=64)
    name: str = Field(default="", max_length=256)
    model: str = Field(max_length=512)
    data_source: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    run_metadata: dict[str, str] | None = Field(default=None, sa_column=Column("metadata", JSON))
    status: str = Field(default="queued", index=True, max_length=16)
    # {total, errored, failed, passed}, updated as items are graded.
    result_counts: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # [{testing_criteria, passed, failed, mean_score}], one per criterion.
    per_testing_criteria_results: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    report_file_id: str | None = Field(default=None, max_length=64)
    # {"code", "message"} of a failed run.
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    runner_id: str | None = Field(default=None, max_length=64)
    lease_expires_at: float | None = None
    created_at: int = Field(default_factory=now_s)
    started_at: int | None = None
    finished_at: int | None = None
    updated_at: int = Field(default_factory=now_s)


class EvalOutputItem(SQLModel, table=True):
    """One item of a run: the data line, the model's sample, and each criterion's score."""

    __tablename__ = "eval_output_items"
    __table_args__ = (UniqueConstraint("run_id", "datasource_item_id", name="uq_eval_output_items_run_item"),)

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(index=True, unique=True, max_length=64)
    run_id: str = Field(index=True, max_length=64)
    eval_id: str = Field(max_length=64)
    datasource_item_id: int
    datasource_item: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # pass | fail | error
    status: str = Field(max_length=16)
    # [{name, type, score, passed, sample?, error?}], one per criterion.
    results: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # {input, output, model, finish_reason, usage, error, seed, temperature, max_completion_tokens, top_p}
    sample: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: int = Field(default_factory=now_s)
