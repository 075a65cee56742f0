"""Moving jobs along: `validating_files → queued` (re-check the files, estimate the memory), then
`queued → running` (place on the best-fitting live GPU and enqueue arq's `train` task on that worker's
queue), and telling queued jobs why they wait, where they stand and when they should start.

The DB is the truth and every move is a compare-and-set, so any number of schedulers can run these at once.
A placement is one guarded UPDATE: the job must still be queued and unheld, and the device must still have
room for it once every reservation committed so far is counted (PostgreSQL takes a per-worker advisory lock
first; SQLite's UPDATE holds the write lock from its first read). So two schedulers never place one job
twice, nor over-commit one GPU. Reads happen in their own short transactions and each CAS starts a fresh
one with its UPDATE.
"""

from __future__ import annotations

import logging
import statistics
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import func, text, update
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from core import jobs, metrics, webhooks
from core.continuation import base_model_of, requested_hyperparameters
from core.db import session_scope
from core.errors import FtserveError
from core.hyperparameters import MAX_AUTO_SEQ_LENGTH, longest_example_bytes
from core.model_registry import get_base_model
from core.models import File, FineTuningJob, Organization, now_s
from core.queue import TRAIN_TASK, WorkerInfo, arq_job_id, queue_name
from core.settings import Settings
from core.storage import Storage, make_storage_from_settings
from core.token_counts import (
    TokenizerUnavailableError,
    TrainingDataError,
    count_stored_file,
    longest_exact_tokens,
)
from core.vram import EstimateError, estimate_request, micro_batch_for_fleet, micro_batch_options
from scheduler.forecast import forecast_starts
from scheduler.placement import Device, Fleet, JobRequest, PlanResult, Waiting, gb, plan

log = logging.getLogger("ftserve.scheduler")


# -- validating_files → queued ---------------------------------------------------------------------------------


def _file_problem(
    session: Session, job: FineTuningJob, file_id: str, kind: str
) -> tuple[str | None, File | None]:
    """(why the file can't be trained on, or None; the row)."""
    row = session.exec(select(File).where(File.id == file_id)).first()
    if row is None or row.deleted_at is not None or row.organization_id != job.organization_id:
        return f"The {kind} file {file_id} no longer exists.", None
    if row.status != "processed":
        return f"The {kind} file {file_id} is not processed (status '{row.status}').", row
    return None, row


def count_job_tokens(
    settings: Settings, storage: Storage, job: FineTuningJob, rows: list[tuple[str, File]]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str | None]:
    """Count the job's files with its model's tokenizer: (the `token_counts` record or None, a problem that
    fails the job or None, a note for the event log or None). Examples longer than the job can hold fail it
    now, naming their lines, rather than minutes later on a worker. A model without a countable tokenizer (or a
    file the counter cannot render) leaves the sizing to the bytes bound and the checks to the worker."""
    model = base_model_of(job)
    base = get_base_model(settings, model)
    explicit = job.hyperparameters.get("max_seq_length")
    context = base.context_length()
    limit = (
        explicit if isinstance(explicit, int) else min(context or MAX_AUTO_SEQ_LENGTH, MAX_AUTO_SEQ_LENGTH)
    )
    record: dict[str, Any] = {"model": model, "max_seq_length": limit}
    try:
        for kind, row in rows:
            counts = count_stored_file(
                storage, row.storage_key, row.data_format or "chat", base, max_seq_length=limit
            )
            record[kind] = counts.as_dict()
    except (TokenizerUnavailableError, TrainingDataError) as exc:
        return None, None, f"Tokens not counted ({exc}); max_seq_length is sized from the file's bytes"
    for kind, _row in rows:
        counts_of = record[kind]
        if counts_of["over_limit"] and counts_of["exact"]:
            lines = ", ".join(str(n) for n in counts_of["over_limit_lines"])
            more = counts_of["over_limit"] - len(counts_of["over_limit_lines"])
            return (
                record,
                {
                    "code": "examples_too_long",
                    "param": f"{kind}_file",
                    "message": (
                        f"{counts_of['over_limit']} examples of the {kind} file are longer than max_seq_length "
                        f"{limit} tokens with {model}'s tokenizer (lines {lines}{f' and {more} more' if more else ''}; "
                        f"the longest, line {counts_of['longest_example_line']}, has "
                        f"{counts_of['longest_example_tokens']}). Shorten or split them, or raise max_seq_length."
                    ),
                },
                None,
            )
    return record, None, None


def estimate_fields(
    settings: Settings,
    job: FineTuningJob,
    n_examples: int,
    longest_example_bytes: int | None = None,
    longest_example_tokens: int | None = None,
) -> dict[str, Any]:
    """The job's memory estimate as columns. An estimate that can't be made (unreadable config) is recorded
    with its reason; the job then waits for an entirely free device. An unknown model raises."""
    try:
        estimates = estimate_request(
            settings,
            model=base_model_of(job),
            method_type=job.method_type,
            hyperparameters=requested_hyperparameters(job),
            n_examples=n_examples,
            longest_example_bytes=longest_example_bytes,
            longest_example_tokens=longest_example_tokens,
            has_validation_file=job.validation_file is not None,
        )
    except EstimateError as exc:
        return {"estimated_vram_mb": None, "vram_estimate": {"error": str(exc)}}
    return {"estimated_vram_mb": estimates.gpu.reservation_mb, "vram_estimate": estimates.record()}


def _estimate_message(fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    record = fields["vram_estimate"]
    if "error" in record:
        return f"Could not estimate GPU memory ({record['error']}); the job waits for a free GPU", record
    gpu = record["gpu"]
    message = (
        f"Estimated GPU memory: ~{gb(gpu['reservation_mb'])} GB (weights {gb(gpu['weights_mb'])} GB, "
        f"activations {gb(gpu['activations_mb'])} GB, logits {gb(gpu['logits_mb'])} GB, "
        f"{int(round(100 * (gpu['reservation_mb'] / max(1, gpu['peak_mb']) - 1)))}% margin)"
    )
    if (record.get("gradient_accumulation_steps") or 1) > 1:
        message += (
            f"; batch {record['batch_size']} as {record['gradient_accumulation_steps']} micro-batches of "
            f"{record['micro_batch_size']}"
        )
    return message, {"estimated_vram_mb": gpu["reservation_mb"], "breakdown": gpu}


def validate_job(engine: Engine, job_id: str, settings: Settings | None = None) -> str | None:
    """Re-check one `validating_files` job's files and estimate its memory; queue it or fail it. Returns the
    new status, or None when another process moved the job first."""
    settings = settings or Settings()
    with Session(engine) as session:
        job = session.exec(select(FineTuningJob).where(FineTuningJob.id == job_id)).first()
        if job is None or job.status != jobs.VALIDATING:
            return None
        checked = [("training", job.training_file)]
        if job.validation_file:
            checked.append(("validation", job.validation_file))
        results = [(kind, file_id, *_file_problem(session, job, file_id, kind)) for kind, file_id in checked]
    problem: dict[str, Any] | None = None
    for kind, _file_id, why, _row in results:
        if why:
            problem = {"code": f"invalid_{kind}_file", "message": why, "param": f"{kind}_file"}
            break
    estimate: dict[str, Any] = {}
    token_record: dict[str, Any] | None = None
    token_note: str | None = None
    if problem is None:
        training = results[0][3]
        assert training is not None
        try:
            rows = [row for _kind, _file_id, _why, row in results if row is not None]
            kinds = [(kind, row) for kind, _file_id, _why, row in results if row is not None]
            token_record, problem, token_note = count_job_tokens(
                settings, make_storage_from_settings(settings), job, kinds
            )
            if problem is None:
                estimate = estimate_fields(
                    settings, job, training.example_count or 0, longest_example_bytes(rows),
                    longest_exact_tokens(token_record),
                )  # fmt: skip
        except FtserveError as exc:  # the model left the registry since the job was created
            problem = {"code": exc.code or "model_not_found", "message": exc.message, "param": "model"}

    with session_scope(engine) as session:
        if problem is not None:
            moved = jobs.transition(
                session, job_id=job_id, from_status=[jobs.VALIDATING], to_status=jobs.FAILED, error=problem,
                finished_at=now_s(), message=problem["message"], level="error", token_counts=token_record,
            )  # fmt: skip
            return jobs.FAILED if moved else None
        if not jobs.transition(
            session, job_id=job_id, from_status=[jobs.VALIDATING], to_status=jobs.QUEUED,
            token_counts=token_record, **estimate,
        ):  # fmt: skip
            return None
        # Appended only by the process whose CAS won, in the same transaction: no duplicates.
        for kind, file_id, _problem, row in results:
            assert row is not None
            counted = (token_record or {}).get(kind)
            tokens = ""
            if counted:
                tokens = (
                    f", {counted['total_tokens']:,} tokens ({counted['trained_tokens']:,} trained), longest "
                    f"{counted['longest_example_tokens']:,} (line {counted['longest_example_line']})"
                )
            jobs.append_event(
                session,
                job_id=job_id,
                message=f"Validated {kind} file: {row.example_count} examples{tokens}",
                data={"file_id": file_id, "examples": row.example_count}
                | ({"tokens": counted} if counted else {}),
            )
        if token_note:
            jobs.append_event(session, job_id=job_id, message=token_note, level="warn")
        message, data = _estimate_message(estimate)
        jobs.append_event(session, job_id=job_id, message=message, data=data)
        jobs.append_event(session, job_id=job_id, message="Job queued")
    return jobs.QUEUED


def validate_pending(engine: Engine, settings: Settings | None = None, *, limit: int = 100) -> int:
    """Validate up to `limit` waiting jobs, oldest first. Returns how many this call moved."""
    with Session(engine) as session:
        job_ids = session.exec(
            select(FineTuningJob.id)
            .where(FineTuningJob.status == jobs.VALIDATING)
            .order_by(col(FineTuningJob.created_at), col(FineTuningJob.seq))
            .limit(limit)
        ).all()
    return sum(validate_job(engine, job_id, settings) is not None for job_id in job_ids)


# -- queued → running ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    job_id: str
    attempt: int
    worker_id: str
    gpu_index: int | None = None
    gpu_name: str | None = None
    reserved_mb: int | None = None


@dataclass
class Holdings:
    """What the DB says the workers hold: jobs placed and not yet released by their runners."""

    reserved_mb: dict[tuple[str, int], int] = field(default_factory=dict)  # (worker, device) → MiB
    jobs_by_worker: dict[str, int] = field(default_factory=dict)
    jobs_by_org: dict[str, int] = field(default_factory=dict)
    running: list[FineTuningJob] = field(default_factory=list)


def holdings(engine: Engine) -> Holdings:
    out = Holdings()
    with Session(engine, expire_on_commit=False) as session:
        rows = session.exec(select(FineTuningJob).where(col(FineTuningJob.worker_id).is_not(None))).all()
    for row in rows:
        worker = str(row.worker_id)
        out.jobs_by_worker[worker] = out.jobs_by_worker.get(worker, 0) + 1
        out.jobs_by_org[row.organization_id] = out.jobs_by_org.get(row.organization_id, 0) + 1
        if row.gpu_index is not None:
            key = (worker, row.gpu_index)
            out.reserved_mb[key] = out.reserved_mb.get(key, 0) + (row.reserved_mb or 0)
        out.running.append(row)
    return out


def worker_load(engine: Engine, worker_ids: Sequence[str]) -> dict[str, int]:
    """Jobs each worker holds (a cancelled job still occupies its slot until the runner notices and exits)."""
    load = holdings(engine).jobs_by_worker
    return {w: load[w] for w in worker_ids if w in load}


def queued_jobs(engine: Engine, *, limit: int) -> list[FineTuningJob]:
    """Queued jobs that no runner still holds, in placement order: priority, then age."""
    with Session(engine, expire_on_commit=False) as session:
        return list(
            session.exec(
                select(FineTuningJob)
                .where(FineTuningJob.status == jobs.QUEUED, col(FineTuningJob.worker_id).is_(None))
                .order_by(
                    col(FineTuningJob.priority).desc(), col(FineTuningJob.created_at), col(FineTuningJob.seq)
                )
                .limit(limit)
            ).all()
        )


def job_request(job: FineTuningJob) -> JobRequest:
    record = job.vram_estimate or {}
    cpu = record.get("cpu", {}).get("reservation_mb") if isinstance(record.get("cpu"), dict) else None
    return JobRequest(
        id=job.id,
        org=job.organization_id,
        gpu_mb=job.estimated_vram_mb,
        cpu_mb=cpu,
        priority=job.priority,
        waiting_since=float(job.created_at),
        needs=frozenset({"bnb_4bit"}) if job.hyperparameters.get("quantization") == "4bit" else frozenset(),
    )


def fit_micro_batches(
    requests: list[JobRequest], by_id: dict[str, FineTuningJob], workers: Sequence[WorkerInfo]
) -> tuple[list[JobRequest], dict[str, int]]:
    """A job whose micro-batch no live device could ever hold (by total memory) asks for the largest smaller
    one that fits, with more gradient accumulation: the same optimizer steps, in less memory
    (`core.vram.micro_batch_for_fleet`). Returns the requests to plan and, per lowered job, its new
    micro-batch size."""
    out: list[JobRequest] = []
    lowered: dict[str, int] = {}
    for request in requests:
        record = by_id[request.id].vram_estimate or {}
        capable = [w for w in workers if request.needs <= set(w.capabilities)]
        gpu_room = max((d.total_mb for w in capable for d in w.gpus if d.name != "cpu"), default=None)
        cpu_room = max((d.total_mb for w in capable for d in w.gpus if d.name == "cpu"), default=None)
        options = micro_batch_options(record, request.gpu_mb)
        chosen = micro_batch_for_fleet(options, gpu_room, cpu_room) if len(options) > 1 else None
        if chosen is None or chosen == options[0]:
            out.append(request)  # its own fits (or nothing does, and placement says why)
            continue
        micro, gpu_mb, cpu_mb = chosen
        out.append(replace(request, gpu_mb=gpu_mb, cpu_mb=cpu_mb))
        lowered[request.id] = micro
    return out, lowered


def _advisory_key(worker_id: str) -> int:
    return zlib.crc32(f"ftserve:worker:{worker_id}".encode()) & 0x7FFFFFFF


def claim(
    engine: Engine,
    job: FineTuningJob,
    worker: WorkerInfo,
    *,
    device: Device | None = None,
    reserve_mb: int | None = None,
    capacity_mb: int | None = None,
    lease_ttl_s: float = 30.0,
    micro_batch: int | None = None,
) -> int | None:
    """CAS queued→running with attempt+1 on `worker` (and `device`, reserving `reserve_mb` of its
    `capacity_mb`). Returns the new attempt, or None if another scheduler (or a cancel) got there first, or
    if the worker or device no longer has room once every committed reservation is counted. `micro_batch`:
    the smaller micro-batch `fit_micro_batches` chose for this job, recorded for the worker to train with."""
    attempt = job.attempt + 1
    now = now_s()
    extra: dict[str, Any] = {}
    record = dict(job.vram_estimate or {})
    if micro_batch is not None and record.get("micro_batch_size") != micro_batch:
        batch = int(record.get("batch_size") or micro_batch)
        record |= {
            "micro_batch_size": micro_batch,
            "gradient_accumulation_steps": batch // micro_batch,
            "lowered_from_micro_batch_size": record.get("micro_batch_size"),
        }
        extra = {"vram_estimate": record, "estimated_vram_mb": reserve_mb}
    held = aliased(FineTuningJob)
    with session_scope(engine) as session:
        if (
            engine.dialect.name == "postgresql"
        ):  # serialise claims per worker: the room checks below see them all
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _advisory_key(worker.id)})
        conditions = [
            col(FineTuningJob.id) == job.id,
            col(FineTuningJob.status) == jobs.QUEUED,
            col(FineTuningJob.attempt) == job.attempt,
            col(FineTuningJob.worker_id).is_(None),
        ]
        slots = (
            sa_select(func.count())
            .select_from(held)
            .where(col(held.worker_id) == worker.id)
            .scalar_subquery()
        )
        conditions.append(slots < worker.max_jobs)
        if device is not None and reserve_mb is not None and capacity_mb is not None:
            reserved = (
                sa_select(func.coalesce(func.sum(held.reserved_mb), 0))
                .where(col(held.worker_id) == worker.id, col(held.gpu_index) == device.index)
                .scalar_subquery()
            )
            conditions.append(reserved + reserve_mb <= capacity_mb)
        statement = (
            update(FineTuningJob)
            .where(*conditions)
            .values(
                status=jobs.RUNNING,
                attempt=attempt,
                worker_id=worker.id,
                gpu_index=device.index if device else None,
                gpu_name=device.name if device else None,
                reserved_mb=reserve_mb if device else None,
                lease_expires_at=time.time() + lease_ttl_s,
                wait_reason=None,
                queue_position=None,
                estimated_start_at=None,
                started_at=func.coalesce(FineTuningJob.started_at, now),
                updated_at=now,
                **extra,
            )
            .execution_options(synchronize_session=False)
        )
        if session.execute(statement).rowcount != 1:  # type: ignore[attr-defined]
            return None
        data: dict[str, Any] = {"worker_id": worker.id, "attempt": attempt}
        if extra:
            jobs.append_event(
                session,
                job_id=job.id,
                message=(
                    f"Micro-batch lowered from {record['lowered_from_micro_batch_size']} to {micro_batch} "
                    f"({record['gradient_accumulation_steps']} accumulation steps, same batch_size) so that it "
                    f"fits a device of this fleet"
                ),
                data={k: record[k] for k in ("micro_batch_size", "gradient_accumulation_steps")},
            )
        if device is not None:
            data |= {"gpu_index": device.index, "gpu_name": device.name, "reserved_mb": reserve_mb}
            jobs.append_event(
                session,
                job_id=job.id,
                message=(
                    f"Placed on {device.name} #{device.index} of worker {worker.id}: "
                    f"~{gb(reserve_mb or 0)} GB reserved of {gb(device.total_mb)} GB"
                ),
                data=data,
            )
        message = (
            "Fine-tuning job started"
            if attempt == 1
            else f"Resumed on worker {worker.id} (attempt {attempt})"
        )
        jobs.append_event(session, job_id=job.id, message=message, data=data)
        webhooks.record_event(
            session, organization_id=job.organization_id, type=webhooks.JOB_RUNNING, job_id=job.id
        )
    return attempt


def unclaim(engine: Engine, job_id: str, attempt: int, reason: str) -> bool:
    """Undo a claim whose enqueue failed: back to queued, fenced so a later attempt is never touched."""
    with session_scope(engine) as session:
        return jobs.transition(
            session,
            job_id=job_id,
            from_status=[jobs.RUNNING],
            to_status=jobs.QUEUED,
            attempt=attempt,
            worker_id=None,
            lease_expires_at=None,
            message=f"Could not start on a worker ({reason}); job queued again",
            level="warn",
        )


def reject(engine: Engine, job: FineTuningJob, message: str) -> bool:
    """Fail a queued job that no device of the fleet could ever hold."""
    error = {"code": "insufficient_gpu_memory", "message": message, "param": None}
    with session_scope(engine) as session:
        return jobs.transition(
            session, job_id=job.id, from_status=[jobs.QUEUED], to_status=jobs.FAILED, attempt=job.attempt,
            worker_id=None, error=error, finished_at=now_s(), wait_reason=None, queue_position=None,
            estimated_start_at=None, message=message, level="error",
        )  # fmt: skip


class Quotas:
    """Per-organization running-job limits: ORG_MAX_RUNNING_JOBS, overridden by name or id in ORG_QUOTAS."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.default = settings.org_max_running_jobs
        self.by_id: dict[str, int] = {}
        if settings.org_quotas:
            with Session(engine) as session:
                orgs = session.exec(select(Organization)).all()
            for org in orgs:
                for key in (org.id, org.name):
                    if key in settings.org_quotas:
                        self.by_id[org.id] = settings.org_quotas[key]

    def __call__(self, org_id: str) -> int:
        return self.by_id.get(org_id, self.default)


class FleetMemory:
    """The workers seen in the last `window_s` seconds. A worker can be missing from the registry for a moment
    (Redis flushed or restarted, the worker restarting); its jobs must not look impossible meanwhile. A job
    is rejected only when no device seen in the window could hold it, and only once the scheduler has
    watched the fleet for a whole window."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.started = time.monotonic()
        self.seen: dict[str, tuple[float, WorkerInfo]] = {}

    def observe(self, workers: Sequence[WorkerInfo]) -> None:
        now = time.monotonic()
        for worker in workers:
            self.seen[worker.id] = (now, worker)
        for worker_id, (at, _) in list(self.seen.items()):
            if now - at > self.window_s:
                del self.seen[worker_id]

    def largest(self, job: JobRequest) -> int | None:
        """The largest device seen that could ever hold `job`, or None if none (or not watched long enough,
        in which case nothing is called impossible yet)."""
        if time.monotonic() - self.started < self.window_s:
            return 0
        best = None
        for _, worker in self.seen.values():
            if not job.needs <= set(worker.capabilities):
                continue
            for device in worker.gpus:
                need = job.cpu_mb if device.name == "cpu" else job.gpu_mb
                if need is None or device.total_mb >= need:
                    best = max(best or 0, device.total_mb)
        return best


class QueueClock:
    """When a queued job began to wait, for ftserve_placement_latency_seconds. A first attempt has waited
    since the job was created (validation takes well under a second). A job re-queued (lost worker, worker
    shutdown, resume) keeps no time of that in the DB, so its wait counts from the first tick of this
    scheduler that saw it queued again (after a scheduler restart, from that restart)."""

    def __init__(self) -> None:
        self.first_seen: dict[tuple[str, int], float] = {}

    def observe(self, queue: Iterable[FineTuningJob]) -> None:
        now = time.time()
        self.first_seen = {(j.id, j.attempt): self.first_seen.get((j.id, j.attempt), now) for j in queue}

    def queued_since(self, job: FineTuningJob) -> float:
        if job.attempt == 0:
            return float(job.created_at)
        return self.first_seen.get((job.id, job.attempt), time.time())


async def place_queued(
    engine: Engine,
    redis: Any,
    workers: Sequence[WorkerInfo],
    *,
    settings: Settings | None = None,
    max_placements: int = 100,
    memory: FleetMemory | None = None,
    clock: QueueClock | None = None,
) -> list[Placement]:
    """Plan the queue onto the live fleet and carry out the placements. `redis` is an arq pool (ArqRedis).
    With a `clock`, each placement's wait goes into ftserve_placement_latency_seconds."""
    settings = settings or Settings()
    held = holdings(engine)
    queue = queued_jobs(engine, limit=settings.scheduler_window)
    if clock is not None:
        clock.observe(queue)
    if not queue:
        return []
    _fill_missing_estimates(engine, settings, queue)
    fleet = Fleet.from_registry(workers, reserved_mb=held.reserved_mb, held=held.jobs_by_worker)
    by_id = {job.id: job for job in queue}
    infos = {w.id: w for w in workers}
    requests, lowered = fit_micro_batches([job_request(job) for job in queue], by_id, workers)
    result = plan(
        requests,
        fleet,
        running_by_org=held.jobs_by_org,
        quota_for=Quotas(engine, settings),
        now=time.time(),
        reserve_after_s=settings.reserve_after_s,
        max_placements=max_placements,
    )
    if memory is not None:
        memory.observe(workers)
    for rejected in result.rejected:
        if memory is not None and memory.largest(rejected.job) is not None:
            # A device that could hold it was live recently (or it is too early to tell): wait for it.
            rejected = replace(rejected, code="no_room", text=_missing_device_message(rejected, memory))
            result.waiting.append(rejected)
            continue
        if reject(engine, by_id[rejected.job.id], rejected.message):
            log.info("rejected %s: %s", rejected.job.id, rejected.message)
    result.waiting.sort(key=lambda w: w.position)

    placed: list[Placement] = []
    for decision in result.placed:
        job, device = by_id[decision.job.id], decision.device
        info = infos[device.worker.id]
        # The device's capacity for our jobs: all of it, less what something else uses on it.
        reported = next((g for g in info.gpus if g.index == device.index), None)
        reserved_before = held.reserved_mb.get((info.id, device.index), 0)
        capacity = device.total_mb
        if reported is not None:
            capacity = min(device.total_mb, reported.free_mb + reserved_before)
        attempt = claim(
            engine, job, info, device=device, reserve_mb=decision.reserve_mb, capacity_mb=capacity,
            lease_ttl_s=settings.lease_ttl_s, micro_batch=lowered.get(job.id),
        )  # fmt: skip
        if attempt is None:
            continue  # someone else moved it, or the device filled up meanwhile: next tick sees the truth
        try:
            await redis.enqueue_job(
                TRAIN_TASK,
                job_id=job.id,
                attempt=attempt,
                _job_id=arq_job_id(job.id, attempt),
                _queue_name=queue_name(info.id),
            )
        except Exception as exc:  # noqa: BLE001 (any Redis failure: give the job back and retry next tick)
            log.warning("enqueue of %s attempt %d on %s failed: %s", job.id, attempt, info.id, exc)
            unclaim(engine, job.id, attempt, type(exc).__name__)
            break  # Redis is likely down: try again next tick
        if clock is not None:
            metrics.PLACEMENT_LATENCY.observe(max(0.0, time.time() - clock.queued_since(job)))
        log.info(
            "placed %s (attempt %d) on %s #%d of %s, %d MiB",
            job.id, attempt, device.name, device.index, info.id, decision.reserve_mb,
        )  # fmt: skip
        placed.append(Placement(job.id, attempt, info.id, device.index, device.name, decision.reserve_mb))
    _record_waits(engine, result, by_id)
    return placed


def _missing_device_message(waiting: Waiting, memory: FleetMemory) -> str:
    need = waiting.job.gpu_mb
    size = f" (~{gb(need)} GB)" if need is not None else ""
    return (
        f"No live GPU can hold it{size}. It waits while a larger worker seen in the last "
        f"{memory.window_s:.0f}s may come back, then fails."
    )


def _fill_missing_estimates(engine: Engine, settings: Settings, queue: list[FineTuningJob]) -> None:
    """Jobs queued before estimates existed (or whose estimate was cleared) get one now, once."""
    for job in queue:
        if job.vram_estimate is not None:
            continue
        with Session(engine) as session:
            row = session.exec(select(File).where(File.id == job.training_file)).first()
        try:
            fields = estimate_fields(
                settings, job, (row.example_count if row else 0) or 0,
                longest_example_tokens=longest_exact_tokens(job.token_counts),
            )  # fmt: skip
        except FtserveError as exc:
            fields = {"estimated_vram_mb": None, "vram_estimate": {"error": exc.message}}
        with session_scope(engine) as session:
            jobs.update_fenced(session, job_id=job.id, attempt=job.attempt, statuses=[jobs.QUEUED], **fields)
        job.estimated_vram_mb, job.vram_estimate = fields["estimated_vram_mb"], fields["vram_estimate"]


def _record_waits(engine: Engine, result: PlanResult, by_id: dict[str, FineTuningJob]) -> None:
    """Say why each waiting job waits: an event when the reason changes, never one per tick."""
    for position, waiting in enumerate(result.waiting, start=1):
        job = by_id.get(waiting.job.id)
        if job is None:
            continue
        changes: dict[str, Any] = {}
        if job.queue_position != position:
            changes["queue_position"] = position
        if job.wait_reason != waiting.message:
            changes["wait_reason"] = waiting.message
        if not changes:
            continue
        with session_scope(engine) as session:
            if not jobs.update_fenced(
                session, job_id=job.id, attempt=job.attempt, statuses=[jobs.QUEUED], **changes
            ):
                continue
            if "wait_reason" in changes:
                data = {"reason": waiting.code, "queue_position": position}
                if waiting.need_mb is not None:
                    data["needs_mb"] = waiting.need_mb
                jobs.append_event(session, job_id=job.id, message=waiting.message, data=data)


# -- start-time forecasts ----------------------------------------------------------------------------------------


def seconds_per_step(engine: Engine, model: str, *, default: float = 1.0) -> float:
    """Median seconds per step of the last 20 finished jobs on this base model."""
    with Session(engine) as session:
        rows = session.exec(
            select(FineTuningJob.started_at, FineTuningJob.finished_at, FineTuningJob.step)
            .where(
                FineTuningJob.model == model,
                FineTuningJob.status == jobs.SUCCEEDED,
                col(FineTuningJob.step) > 0,
                col(FineTuningJob.started_at).is_not(None),
            )
            .order_by(col(FineTuningJob.seq).desc())
            .limit(20)
        ).all()
    rates = [(finished - started) / step for started, finished, step in rows if started and finished]
    return max(0.01, statistics.median(rates)) if rates else default


def update_forecasts(
    engine: Engine, workers: Sequence[WorkerInfo], settings: Settings, *, limit: int = 100
) -> int:
    """Estimated start times of the first `limit` queued jobs: replay the plan forward in time over the
    running jobs' expected finishes. Written only where they moved by a minute or more."""
    held = holdings(engine)
    queue = queued_jobs(engine, limit=limit)
    if not queue or not workers:
        return 0
    now = time.time()
    rates: dict[str, float] = {}

    def rate(model: str) -> float:
        if model not in rates:
            rates[model] = seconds_per_step(engine, model)
        return rates[model]

    def remaining_s(job: FineTuningJob) -> float:
        if job.estimated_finish:
            return max(0.0, job.estimated_finish - now)
        total = job.total_steps or (job.vram_estimate or {}).get("total_steps") or 100
        return max(0.0, (total - job.step) * rate(base_model_of(job)))

    running = [
        (
            job.worker_id or "",
            job.gpu_index,
            job.reserved_mb or 0,
            now + remaining_s(job),
            job.organization_id,
        )
        for job in held.running
        if job.gpu_index is not None
    ]
    durations = {job.id: remaining_s(job) for job in queue}
    fleet = Fleet.from_registry(workers, reserved_mb=held.reserved_mb, held=held.jobs_by_worker)
    starts = forecast_starts(
        [job_request(job) for job in queue], fleet, running, durations, now=now,
        running_by_org=held.jobs_by_org, quota_for=Quotas(engine, settings),
    )  # fmt: skip
    written = 0
    for job in queue:
        start = starts.get(job.id)
        value = int(start) if start is not None else None
        old = job.estimated_start_at
        if value == old or (value is not None and old is not None and abs(value - old) < 60):
            continue
        with session_scope(engine) as session:
            written += jobs.update_fenced(
                session, job_id=job.id, attempt=job.attempt, statuses=[jobs.QUEUED], estimated_start_at=value
            )
    return written
