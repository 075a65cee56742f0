"""One attempt of one fine-tuning job, top to bottom. The worker runs it as a child process:

    python -m gpu_worker.job_runner --job-id ftjob-... --attempt 2

1. Check the job is still `running` with this attempt (a cancel or re-placement may have come first).
2. Download the training (and validation) file into DATA_DIR/work/<job_id>/<attempt>.
3. Resolve the hyperparameters and write them onto the job.
4. Apply the placement the worker pinned it to (`pinning.apply_memory_cap`: CUDA_VISIBLE_DEVICES is
   already in its environment; the memory cap of a shared GPU) and record it in an event.
   Find the newest complete checkpoint of the job, if any, and download it to resume from.
5. Train, reporting through `DbReporter` (events, metrics, checkpoints, stop requests).
6. Finish: succeeded (adapter, results.csv, model row), paused, cancelled, re-queued (worker shutdown),
   or failed with a useful error.
7. Always release the job (worker_id = NULL, fenced by the attempt) so the scheduler may place it again.

The database or Redis being unreachable is never the job's fault: reads and fenced writes wait out an
outage of up to `DB_OUTAGE_S`; past that, the attempt hands its job back to the queue (the next attempt
resumes from the last complete checkpoint), or, if it cannot even write that, exits with
`EXIT_INFRASTRUCTURE` and the worker re-queues the job once the database answers again.

Every write is fenced by the attempt and by the worker the job was placed on (`owner`), so an attempt that
lost its job (cancelled, re-placed, or reaped when its worker was given up for lost) changes nothing, and
its adapter and checkpoints go under prefixes of its own attempt, never over another attempt's.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.exceptions
from sqlalchemy import exc as sa_exc
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core import ids, jobs
from core.continuation import base_model_of, parent_of, requested_hyperparameters, resolve_parent
from core.db import make_engine, session_scope
from core.errors import FtserveError
from core.graders import score_model_names
from core.hyperparameters import (
    ResolvedHyperparameters,
    hyperparameters_model,
    longest_example_bytes,
    resolve_hyperparameters,
)
from core.model_registry import get_base_model
from core.models import (
    File,
    FineTunedModel,
    FineTuningJob,
    InferenceReplica,
    JobCheckpoint,
    JobEvent,
    Organization,
    now_s,
)
from core.settings import Settings, get_settings
from core.storage import Storage, make_storage_from_settings
from core.token_counts import longest_exact_tokens
from core.usage import gpu_class_of, job_usage, record_training_usage
from gpu_worker.db_reporter import (
    REWARD_METRIC,
    DbReporter,
    JobCaps,
    checkpoint_is_complete,
    ride_out_db_outage,
)
from gpu_worker.reporting import StopRequest

log = logging.getLogger("ftserve.job_runner")

RESULTS_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
MAX_ERROR_MESSAGE = 1000
# The runner's exit code when the database or Redis stayed unreachable (EX_TEMPFAIL): the worker re-queues
# the job instead of failing it.
EXIT_INFRASTRUCTURE = 75
_INFRASTRUCTURE_ERRORS = (
    sa_exc.OperationalError,  # connect refused, server closed the connection, failover
    sa_exc.InterfaceError,  # a connection already closed under us
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
)


def is_infrastructure_error(exc: BaseException) -> bool:
    """The database or Redis unreachable, anywhere in the exception's chain: an outage, not the job's fault."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _INFRASTRUCTURE_ERRORS):
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__ or current.__context__
    return False


class JobFailure(Exception):
    """Ends the attempt with the job failed and this error object."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message[:MAX_ERROR_MESSAGE], "param": param}


def release(engine: Engine, job_id: str, attempt: int, owner: str | None = None) -> None:
    """Give the job's slot (and memory reservation) back; the scheduler places only jobs no runner holds."""
    statement = (
        update(FineTuningJob)
        .where(col(FineTuningJob.id) == job_id, col(FineTuningJob.attempt) == attempt)
        .values(worker_id=None, lease_expires_at=None)
    )
    if owner is not None:
        statement = statement.where(col(FineTuningJob.worker_id) == owner)
    with session_scope(engine) as session:
        session.execute(statement)


def _how_it_ended(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = "unknown signal"
    hint = "; out of memory?" if returncode == -signal.SIGKILL else ""  # the kernel's OOM killer sends it
    return f"was killed by signal {-returncode} ({name}{hint})"


def settle_after_exit(
    engine: Engine, job_id: str, attempt: int, returncode: int, *, stopping: bool, owner: str | None = None
) -> None:
    """Called by the worker when a runner process has exited. A runner that exits normally has settled its
    job; one that died (killed for memory, segfault) leaves it `running`, so the worker settles it: back to
    the queue if the worker was stopping it (its checkpoints remain) or the runner could not reach the
    database (`EXIT_INFRASTRUCTURE`), else failed with what happened. Waits out a database outage itself
    (every write here is a fenced compare-and-set, so a retry is harmless); past that, the lease runs out
    and the scheduler's reaper re-queues the job."""
    if returncode == 0:
        return

    def settle() -> None:
        with session_scope(engine) as session:
            if stopping or returncode == EXIT_INFRASTRUCTURE:
                why = "Worker stopping" if stopping else "The database was unreachable"
                jobs.transition(
                    session, job_id=job_id, from_status=[jobs.RUNNING], to_status=jobs.QUEUED,
                    attempt=attempt, owner=owner, estimated_finish=None, message=f"{why}: job re-queued",
                    worker_id=None, lease_expires_at=None,  # in the same write: never "queued" yet held
                )  # fmt: skip
            else:
                message = f"The training process {_how_it_ended(returncode)}."
                jobs.transition(
                    session, job_id=job_id, from_status=[jobs.RUNNING, jobs.PAUSED], to_status=jobs.FAILED,
                    attempt=attempt, owner=owner,
                    error={"code": "training_error", "message": message, "param": None},
                    finished_at=now_s(), estimated_finish=None, message=message, level="error",
                    worker_id=None, lease_expires_at=None,  # in the same write: never "failed" yet held
                )  # fmt: skip
        release(engine, job_id, attempt, owner)

    ride_out_db_outage("settling the job of an exited runner", settle)


def model_size(model_dir: Path) -> tuple[int | None, int | None]:
    """(parameters, context length) of a local HF model, from the safetensors headers and config.json,
    without loading any weights."""
    params = 0
    for path in model_dir.glob("*.safetensors"):
        with open(path, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(header_len))
        for name, tensor in header.items():
            if name != "__metadata__":
                count = 1
                for dim in tensor["shape"]:
                    count *= dim
                params += count
    try:
        config = json.loads((model_dir / "config.json").read_text())
        context = config.get("max_position_embeddings") or config.get("text_config", {}).get(
            "max_position_embeddings"
        )
    except (OSError, ValueError):
        context = None
    return (params or None), (int(context) if context else None)


def _error_param(exc: Exception) -> str:
    """Which file a data error is about. The trainer's messages start with the file's label."""
    head = str(exc).split(":", 1)[0]
    return "validation_file" if re.search(r"\bvalidation\b", head) else "training_file"


class Attempt:
    def __init__(
        self, settings: Settings, engine: Engine, storage: Storage, job_id: str, attempt: int,
        shutdown: threading.Event, on_tokens: Callable[[int, float], None] | None = None,
    ) -> None:  # fmt: skip
        self.on_tokens = on_tokens  # training throughput, for the worker's metrics (see progress_writer)
        self.settings = settings
        self.engine = engine
        self.storage = storage
        self.job_id = job_id
        self.attempt = attempt
        self.shutdown = shutdown
        self.work_dir = settings.data_dir / "work" / job_id / str(attempt)
        self.owner: str | None = None  # the worker the job was placed on; every write is fenced by it
        self.started = time.monotonic()  # the attempt holds its GPU from here: metered GPU-seconds
        self.reporter: DbReporter | None = None

    # -- 0. the whole attempt ------------------------------------------------------------------------------

    def run(self) -> int:
        """0 once the job is settled (or no longer this attempt's); EXIT_INFRASTRUCTURE when the database
        stayed unreachable, so that the worker re-queues the job rather than fail it."""
        try:
            job = ride_out_db_outage("loading the job", self._load_job)
            if job is None:
                return 0
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir.mkdir(parents=True)
            try:
                self._train(job)
            except JobFailure as failure:
                self._fail(failure.error)
            except Exception as exc:
                if is_infrastructure_error(exc):  # an outage longer than the ones we wait out
                    log.warning("job %s attempt %d: %s; handing the job back", self.job_id, self.attempt, exc)
                    self._hand_back(exc)
                    return 0
                log.exception("job %s attempt %d failed", self.job_id, self.attempt)
                self._fail(self._error_for(exc))
            finally:
                self._record_usage(job)
                shutil.rmtree(self.work_dir, ignore_errors=True)
        except Exception as exc:
            if not is_infrastructure_error(exc):
                raise
            log.warning("job %s attempt %d: cannot reach the database: %s", self.job_id, self.attempt, exc)
            return EXIT_INFRASTRUCTURE
        return 0

    def _error_for(self, exc: Exception) -> dict[str, Any]:
        from gpu_worker.data import TrainingDataError

        if isinstance(exc, TrainingDataError):
            param = _error_param(exc)
            return JobFailure(f"invalid_{param}", str(exc), param).error
        if isinstance(exc, FtserveError):
            return JobFailure(exc.code or "training_error", exc.message, exc.param).error
        return JobFailure("training_error", f"Training failed: {type(exc).__name__}: {exc}").error

    # -- 1. still ours? ------------------------------------------------------------------------------------

    def _load_job(self) -> FineTuningJob | None:
        with Session(self.engine, expire_on_commit=False) as session:
            job = session.exec(select(FineTuningJob).where(FineTuningJob.id == self.job_id)).first()
        if job is None or job.status != jobs.RUNNING or job.attempt != self.attempt:
            log.info("job %s attempt %d is no longer to run; exiting", self.job_id, self.attempt)
            return None
        self.owner = job.worker_id
        return job

    # -- 2-5. prepare and train ----------------------------------------------------------------------------

    def _download_file(self, file_id: str, kind: str) -> File:
        def read() -> File | None:
            with Session(self.engine, expire_on_commit=False) as session:
                return session.exec(select(File).where(File.id == file_id)).first()

        row = ride_out_db_outage(f"reading the {kind} file", read)
        if row is None or row.deleted_at is not None or row.status != "processed":
            raise JobFailure(
                f"invalid_{kind}_file", f"The {kind} file {file_id} is not available.", f"{kind}_file"
            )
        target = self.work_dir / f"{kind}.jsonl"
        with open(target, "wb") as fh:
            for chunk in self.storage.iter_chunks(row.storage_key):
                fh.write(chunk)
        return row

    def _resolve(
        self, job: FineTuningJob, n_examples: int, model_dir: Path, longest_example_bytes: int | None = None
    ) -> ResolvedHyperparameters:
        requested = hyperparameters_model(job.method_type)
        params, context = model_size(model_dir)
        resolved = resolve_hyperparameters(
            job.method_type,
            requested.model_validate(requested_hyperparameters(job)),
            n_examples=n_examples,
            base_model_params=params,
            base_model_max_length=context,
            longest_example_bytes=longest_example_bytes,
            longest_example_tokens=longest_exact_tokens(job.token_counts),  # as the scheduler sized it
            # the micro-batch the scheduler reserved memory for (it may have lowered it to fit the device)
            max_micro_batch=(job.vram_estimate or {}).get("micro_batch_size"),
            # early stopping holds out part of the training file only where there is no validation file
            has_validation_file=job.validation_file is not None,
        )

        def write() -> None:
            with session_scope(self.engine) as session:
                jobs.update_fenced(
                    session,
                    job_id=self.job_id,
                    attempt=self.attempt,
                    owner=self.owner,
                    resolved_hyperparameters=resolved.model_dump(mode="json"),
                    total_steps=resolved.total_steps,
                )

        ride_out_db_outage("writing the hyperparameters", write)
        return resolved

    def _resume_checkpoint(self) -> Path | None:
        """Download the newest checkpoint whose manifest checks out; skip any that doesn't."""

        def read() -> list[JobCheckpoint]:
            with Session(self.engine, expire_on_commit=False) as session:
                return list(
                    session.exec(
                        select(JobCheckpoint)
                        .where(JobCheckpoint.job_id == self.job_id, col(JobCheckpoint.deleted_at).is_(None))
                        .order_by(col(JobCheckpoint.step_number).desc())
                    ).all()
                )

        for row in ride_out_db_outage("reading the checkpoints", read):
            if not checkpoint_is_complete(self.storage, row.storage_prefix):
                log.warning(
                    "checkpoint at step %d of %s is incomplete; skipping it", row.step_number, self.job_id
                )
                # Say so on the job too: the user sees why it resumes from further back.
                with session_scope(self.engine) as session:
                    if jobs.update_fenced(
                        session, job_id=self.job_id, attempt=self.attempt, owner=self.owner
                    ):
                        jobs.append_event(
                            session,
                            job_id=self.job_id,
                            level="warn",
                            message=f"The checkpoint at step {row.step_number} is incomplete in storage "
                            "(a file missing or cut short); resuming from an earlier one.",
                            data={"step": row.step_number},
                        )
                continue
            local = self.work_dir / "resume" / f"step-{row.step_number}"
            self.storage.download_dir(row.storage_prefix, local)
            (local / "_COMPLETE.json").unlink(missing_ok=True)
            return local
        return None

    def _download_parent(self, job: FineTuningJob) -> Path | None:
        """Continued training: the adapter of the fine-tuned model (or checkpoint) the job starts from, looked up
        again (deleted or expired since the job was created: the job fails, naming `model`)."""
        from gpu_worker.parent_adapter import ParentAdapterError, download

        if parent_of(job) is None:
            return None

        def read() -> str:
            with Session(self.engine) as session:
                parent = resolve_parent(session, organization_id=job.organization_id, model=job.model)
            return parent.adapter_prefix

        try:
            prefix = ride_out_db_outage("reading the parent model", read)
            return download(self.storage, prefix, self.work_dir / "parent")
        except (FtserveError, ParentAdapterError) as exc:
            message = exc.message if isinstance(exc, FtserveError) else str(exc)
            raise JobFailure(
                "parent_model_unavailable", f"The model {job.model} cannot be continued: {message}", "model"
            ) from None

    def _apply_pinning(self) -> None:
        """Cap this process's CUDA memory at the job's reservation where the worker asked for it, and record the
        placement it trains on (CUDA_VISIBLE_DEVICES as this process got it, the cap, the fraction applied)."""
        from gpu_worker.pinning import apply_memory_cap

        applied = apply_memory_cap()
        if applied is None:  # a CPU worker, or a runner started without a worker: nothing pinned
            return
        where = f"GPU #{applied['gpu_index']} (CUDA_VISIBLE_DEVICES={applied['cuda_visible_devices']})"
        if applied["memory_fraction"] is not None:
            how = (
                f"; memory capped at its reservation, {applied['memory_cap_mb']} MiB "
                f"({100 * applied['memory_fraction']:.1f}% of {applied['device']})"
            )
        elif applied["device"] == "cpu":
            how = "; no CUDA device there: training on the CPU"
        else:
            how = f" ({applied['device']})"

        def write() -> None:
            with session_scope(self.engine) as session:
                if jobs.update_fenced(session, job_id=self.job_id, attempt=self.attempt, owner=self.owner):
                    jobs.append_event(
                        session, job_id=self.job_id, message=f"Pinned to {where}{how}", data=applied
                    )

        ride_out_db_outage("recording the placement", write)

    def _model_name(self, job: FineTuningJob) -> str:
        def read() -> str | None:
            with Session(self.engine) as session:
                org = session.exec(select(Organization).where(Organization.id == job.organization_id)).first()
                return org.name if org else None

        org_name = ride_out_db_outage("reading the organization", read) or job.organization_id
        return jobs.fine_tuned_model_name(
            base_model=base_model_of(job), org_name=org_name, suffix=job.suffix, job_id=job.id
        )

    def _train(self, job: FineTuningJob) -> None:
        from gpu_worker.config import TrainJobConfig

        base = get_base_model(self.settings, base_model_of(job))
        training = self._download_file(job.training_file, "training")
        validation = self._download_file(job.validation_file, "validation") if job.validation_file else None
        longest = longest_example_bytes([training, validation] if validation else [training])
        hyperparameters = self._resolve(job, training.example_count or 0, base.path, longest)
        # torch, transformers and (where it will train this model) unsloth: imported in the child only, unsloth first
        from gpu_worker import accel

        accel.import_unsloth_first(base.path, hyperparameters.max_seq_length)
        self._apply_pinning()  # before the model takes any GPU memory
        from gpu_worker.train import run_training

        resume = self._resume_checkpoint()
        parent = self._download_parent(job)
        model_name = self._model_name(job)
        reporter = DbReporter(
            engine=self.engine,
            storage=self.storage,
            job_id=self.job_id,
            attempt=self.attempt,
            organization_id=job.organization_id,
            model_name=model_name,
            owner=self.owner,
            shutdown=self.shutdown,
            on_tokens=self.on_tokens,
            caps=self._caps(job, hyperparameters),
            keep_checkpoints=hyperparameters.n_checkpoints,
            meter=lambda session: self._write_usage(session, job),
        )
        self.reporter = reporter
        if self.shutdown.is_set():  # stopped while downloading: nothing to checkpoint
            self._requeue(reporter)
            return
        config = TrainJobConfig(
            job_id=job.id,
            method=job.method_type,  # type: ignore[arg-type]
            base_model_path=base.path,
            chat_template=base.chat_template,  # the registry's custom training template, if it has one
            training_file=self.work_dir / "training.jsonl",
            validation_file=self.work_dir / "validation.jsonl" if validation else None,
            data_format=training.data_format,  # type: ignore[arg-type]
            output_dir=self.work_dir / "out",
            hyperparameters=hyperparameters,
            seed=job.seed,
            resume_from_checkpoint=resume,
            parent_adapter=parent,
            cache_dir=self.settings.data_dir / "cache" / "tokenized",  # retries and resumes skip tokenising
            grader=job.hyperparameters.get("grader") if job.method_type == "reinforcement" else None,
            grader_servers=self._grader_servers(job),
        )
        result = run_training(config, reporter)
        reporter.trained_tokens = result.trained_tokens  # the trainer's own count, as the job reports it
        reporter.flush(force=True)
        self._finish(job, result, reporter, model_name)

    def _grader_servers(self, job: FineTuningJob) -> dict[str, tuple[str, str | None]]:
        """The vLLM replicas that serve the models a reinforcement job's score_model graders call."""
        spec = job.hyperparameters.get("grader") if job.method_type == "reinforcement" else None
        models = score_model_names(spec) if spec else set()
        if not models:
            return {}
        with Session(self.engine) as session:
            replicas = session.exec(
                select(InferenceReplica).where(col(InferenceReplica.base_model).in_(models))
            ).all()
        servers: dict[str, tuple[str, str | None]] = {}
        for replica in sorted(replicas, key=lambda r: r.status != "healthy"):  # healthy ones first
            servers.setdefault(replica.base_model, (replica.url, replica.api_key))
        return servers

    def _caps(self, job: FineTuningJob, hyperparameters: ResolvedHyperparameters) -> JobCaps | None:
        if job.max_trained_tokens is None and job.max_cost is None:
            return None

        def prior() -> float:
            with Session(self.engine) as session:
                return job_usage(session, job.id, except_attempt=self.attempt).cost

        return JobCaps(
            settings=self.settings,
            max_trained_tokens=job.max_trained_tokens,
            max_cost=job.max_cost,
            gpu_class=gpu_class_of(job.gpu_name),
            prior_cost=ride_out_db_outage("reading the job's usage", prior),
            started=self.started,
            steps_per_epoch=hyperparameters.steps_per_epoch,
            total_steps=hyperparameters.total_steps,
        )

    def _write_usage(self, session: Session, job: FineTuningJob) -> None:
        """The attempt's usage so far: the tokens it trained (from where it started) and the time it has held its
        GPU. Written while it trains (DbReporter's meter) and once more as it ends; each write replaces the last."""
        reporter = self.reporter
        tokens = max(0, reporter.trained_tokens - reporter.start_tokens) if reporter is not None else 0
        record_training_usage(
            session, self.settings, organization_id=job.organization_id, job_id=job.id, attempt=self.attempt,
            model=base_model_of(job), gpu_class=gpu_class_of(job.gpu_name), trained_tokens=tokens,
            gpu_seconds=time.monotonic() - self.started,
        )  # fmt: skip

    def _record_usage(self, job: FineTuningJob) -> None:
        """Meter the attempt however it ended. Recorded even when the job is no longer ours: the GPU was used."""

        def write() -> None:
            with session_scope(self.engine) as session:
                self._write_usage(session, job)

        try:
            ride_out_db_outage("recording the attempt's usage", write)
        except Exception:  # metering must not change how the attempt ends
            log.exception("job %s attempt %d: could not record its usage", self.job_id, self.attempt)

    # -- 6. the end of the attempt -------------------------------------------------------------------------

    def _finish(self, job: FineTuningJob, result: Any, reporter: DbReporter, model_name: str) -> None:
        stopped: StopRequest | None = result.stopped
        step = result.global_step
        if stopped == "cancel":
            reporter.write_events(
                [{"message": f"Job cancelled at step {step}"}],
                statuses=[jobs.CANCELLED],
                estimated_finish=None,
            )
        elif stopped == "pause":
            if self.shutdown.is_set() and self._requeue(reporter, step):
                return
            # A resume may already have moved the job on to queued; the slot is released after this.
            reporter.write_events(
                [{"message": f"Paused at step {step}", "data": {"step": step}}],
                statuses=[jobs.PAUSED, jobs.QUEUED],
                estimated_finish=None,
            )
        else:
            self._succeed(job, result, reporter, model_name)

    def _back_to_queue(
        self, message: str, *, level: str = "info", event_data: dict[str, Any] | None = None
    ) -> bool:
        """CAS this attempt's job running → queued (fenced by attempt and owner)."""
        with session_scope(self.engine) as session:
            return jobs.transition(
                session,
                job_id=self.job_id,
                from_status=[jobs.RUNNING],
                to_status=jobs.QUEUED,
                attempt=self.attempt,
                owner=self.owner,
                estimated_finish=None,
                message=message,
                level=level,
                event_data=event_data,
            )

    def _requeue(self, reporter: DbReporter, step: int | None = None) -> bool:
        where = f" at step {step}" if step is not None else ""
        return self._back_to_queue(
            f"Worker stopping: job re-queued{where}", event_data={"step": step} if step is not None else None
        )

    def _succeed(self, job: FineTuningJob, result: Any, reporter: DbReporter, model_name: str) -> None:
        self._check_servable(job, Path(result.adapter_dir))
        adapter_prefix = f"jobs/{self.job_id}/attempt-{self.attempt}/adapter"
        self.storage.delete_prefix(adapter_prefix + "/")
        self.storage.upload_dir(Path(result.adapter_dir), adapter_prefix)
        results_id = ids.file_id()
        results_csv = self._results_csv(result.metrics_history)
        self.storage.put_bytes(f"files/{results_id}", results_csv)
        full_valid = {
            k: v for k, v in result.metrics.items() if k.startswith("full_valid_") and v is not None
        }
        with session_scope(self.engine) as session:
            done = jobs.transition(
                session,
                job_id=self.job_id,
                # A pause or resume that came after the last step: the job is finished all the same.
                from_status=[jobs.RUNNING, jobs.PAUSED, jobs.QUEUED],
                to_status=jobs.SUCCEEDED,
                attempt=self.attempt,
                owner=self.owner,
                fine_tuned_model=model_name,
                trained_tokens=result.trained_tokens,
                result_files=[results_id],
                step=result.global_step,
                finished_at=now_s(),
                estimated_finish=None,
            )
            if done:
                session.add(
                    File(
                        id=results_id,
                        organization_id=job.organization_id,
                        filename="results.csv",
                        purpose="fine-tune-results",
                        bytes=len(results_csv),
                        sha256=hashlib.sha256(results_csv).hexdigest(),
                        status="processed",
                        storage_key=f"files/{results_id}",
                    )
                )
                session.add(
                    FineTunedModel(
                        id=model_name,
                        organization_id=job.organization_id,
                        job_id=self.job_id,
                        base_model=base_model_of(job),
                        adapter_prefix=adapter_prefix + "/",
                    )
                )
                if full_valid:
                    self._add_to_last_checkpoint(session, full_valid)
                jobs.append_event(
                    session, job_id=self.job_id, message=f"New fine-tuned model created: {model_name}"
                )
                jobs.append_event(session, job_id=self.job_id, message="The job has successfully completed")
        if not done:  # cancelled (or re-placed) at the very end: publish nothing
            self.storage.delete(f"files/{results_id}")
            self.storage.delete_prefix(adapter_prefix + "/")
            log.info("job %s attempt %d finished training but is no longer ours", self.job_id, self.attempt)

    def _check_servable(self, job: FineTuningJob, adapter_dir: Path) -> None:
        """Fail the job with a clear error, rather than publish a model vLLM would refuse to load."""
        from core.adapters import AdapterRejected, validate_adapter

        try:
            validate_adapter(
                adapter_dir,
                max_lora_rank=self.settings.vllm_max_lora_rank,
                base_model_dir=get_base_model(self.settings, base_model_of(job)).path,
            )
        except AdapterRejected as exc:
            raise JobFailure(exc.code or "adapter_not_servable", exc.message) from None

    def _add_to_last_checkpoint(self, session: Session, metrics: dict[str, Any]) -> None:
        last = session.exec(
            select(JobCheckpoint)
            .where(JobCheckpoint.job_id == self.job_id, col(JobCheckpoint.deleted_at).is_(None))
            .order_by(col(JobCheckpoint.step_number).desc())
        ).first()
        if last is not None:
            last.metrics = {**last.metrics, **metrics}
            session.add(last)

    def _results_csv(self, fallback: list[dict[str, Any]]) -> bytes:
        """One row per metrics step across every attempt (the job's metrics events), the latest row winning
        for a step that a resumed attempt trained again."""
        with Session(self.engine) as session:
            events = session.exec(
                select(JobEvent)
                .where(JobEvent.job_id == self.job_id, JobEvent.type == "metrics")
                .order_by(col(JobEvent.seq))
            ).all()
        by_step: dict[int, dict[str, Any]] = {}
        for row in [e.data or {} for e in events] or fallback:
            if "step" in row and ("train_loss" in row or "valid_loss" in row):
                by_step.setdefault(int(row["step"]), {}).update(row)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        # reinforcement jobs add their reward columns (mean, std; each sub-grader's)
        rewards = sorted({k for row in by_step.values() for k in row if REWARD_METRIC.match(k)})
        writer.writerow(RESULTS_COLUMNS + tuple(rewards))
        for step in sorted(by_step):
            row = by_step[step]
            writer.writerow(
                [
                    step,
                    row.get("train_loss", ""),
                    row.get("train_mean_token_accuracy", ""),
                    row.get("valid_loss", ""),
                    row.get("valid_mean_token_accuracy", ""),
                    *(row.get(k, "") for k in rewards),
                ]
            )
        return out.getvalue().encode()

    def _fail(self, error: dict[str, Any]) -> None:
        def write() -> None:  # a fenced compare-and-set: a retry after a commit that happened changes nothing
            with session_scope(self.engine) as session:
                jobs.transition(
                    session,
                    job_id=self.job_id,
                    from_status=[jobs.RUNNING, jobs.PAUSED],
                    to_status=jobs.FAILED,
                    attempt=self.attempt,
                    owner=self.owner,
                    error=error,
                    finished_at=now_s(),
                    estimated_finish=None,
                    message=error["message"],
                    level="error",
                )

        ride_out_db_outage("failing the job", write)

    def _hand_back(self, exc: Exception) -> None:
        """The outage outlasted what training waits out: give the job back to the queue (not the user's
        fault, so not failed); the next attempt resumes from the last complete checkpoint."""
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]

        ride_out_db_outage(
            "handing the job back",
            lambda: self._back_to_queue(
                f"The database or Redis was unreachable ({reason}): job re-queued", level="warn"
            ),
        )


def run_attempt(
    settings: Settings,
    job_id: str,
    attempt: int,
    shutdown: threading.Event | None = None,
    on_tokens: Callable[[int, float], None] | None = None,
) -> int:
    engine = make_engine(settings.resolved_database_url)
    runner = Attempt(
        settings, engine, make_storage_from_settings(settings), job_id, attempt, shutdown or threading.Event(),
        on_tokens,
    )  # fmt: skip
    try:
        returncode = runner.run()
    except BaseException:
        with contextlib.suppress(Exception):
            release(engine, job_id, attempt, runner.owner)
        engine.dispose()
        raise
    try:
        ride_out_db_outage("releasing the job", lambda: release(engine, job_id, attempt, runner.owner))
    except Exception as exc:
        if not is_infrastructure_error(exc):
            raise
        returncode = EXIT_INFRASTRUCTURE  # the worker releases it (or the lease runs out)
    finally:
        engine.dispose()
    return returncode


def progress_writer(fd: int) -> Callable[[int, float], None]:
    """Reports training throughput to the worker, one JSON line per metrics row on the pipe `fd`:
    {"tokens": trained since the last line, "tokens_per_second": ...}. The worker owns the Prometheus series
    (it outlives its runners); a line never blocks training: if the pipe is full or gone, it is dropped."""
    os.set_blocking(fd, False)

    def write(tokens: int, tokens_per_second: float) -> None:
        line = json.dumps({"tokens": tokens, "tokens_per_second": round(tokens_per_second, 3)}) + "\n"
        try:
            os.write(fd, line.encode())  # well under PIPE_BUF: written whole or not at all
        except BlockingIOError:
            log.warning("the worker is not reading progress; dropped %d tokens from its count", tokens)
        except OSError:
            pass  # the worker is gone; the runner is being stopped by then

    return write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one attempt of a fine-tuning job.")
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--attempt", type=int, required=True)
    parser.add_argument(
        "--progress-fd", type=int, help="pipe to the worker for throughput (see progress_writer)"
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s [{args.job_id}#{args.attempt}] %(name)s: %(message)s",
    )
    # SIGTERM (worker shutdown): checkpoint at the next step and give the job back to the queue.
    shutdown = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: shutdown.set())
    _terminate_with_parent(shutdown)
    on_tokens = progress_writer(args.progress_fd) if args.progress_fd is not None else None
    return run_attempt(settings, args.job_id, args.attempt, shutdown, on_tokens)


def _terminate_with_parent(shutdown: threading.Event) -> None:
    """Have the kernel SIGTERM this runner when its worker dies (Linux), so an orphan checkpoints and hands
    its job back instead of training on with no one renewing its lease."""
    if sys.platform != "linux":
        return
    import ctypes
    import os

    parent = os.getppid()
    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if parent == 1 or os.getppid() != parent:  # the worker died before the request took effect
        shutdown.set()


if __name__ == "__main__":
    sys.exit(main())
