"""The worker's `TrainingReporter`: training progress becomes job events, progress fields, checkpoints in
storage and JobCheckpoint rows, and `should_stop` answers from the job's row.

Every write is fenced by the attempt and by the worker holding the job (`owner`): once the job is cancelled,
re-placed or reaped, this attempt's writes change nothing. Checkpoint objects live under a prefix of their
own attempt, so a late attempt can neither overwrite nor delete a checkpoint that another one published. Metrics events are buffered and committed at most every `flush_interval_s`, so a fast tiny
job does not turn into hundreds of commits per second; every row still becomes an event.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, select

from core import ids, jobs, webhooks
from core.db import session_scope
from core.hyperparameters import DEFAULT_N_CHECKPOINTS
from core.models import FineTuningJob, JobCheckpoint, now_s
from core.pricing import training_cost
from core.settings import Settings
from core.storage import ObjectNotFound, Storage
from core.usage import cap_message, cap_reached
from gpu_worker.reporting import StopRequest

log = logging.getLogger("ftserve.worker.reporter")
T = TypeVar("T")

MANIFEST = "_COMPLETE.json"
# The metric keys OpenAI shows on metrics events and checkpoints, and the two extra we report when known.
METRIC_KEYS = (
    "step",
    "total_steps",
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
    "epoch",
    "learning_rate",
    "train_reward_accuracy",  # DPO
    "train_reward_margin",
)
# Reinforcement: the grader's reward per step (mean, std), and each sub-grader's of a multi
REWARD_METRIC = re.compile(r"^(train|valid|full_valid)_reward_[A-Za-z0-9_]*(mean|std)$")
LIVE = (jobs.RUNNING, jobs.PAUSED)  # a paused attempt still finishes its step and writes its checkpoint
# The trainer announces its own stops; the runner reports them instead, because only it knows why (a pause,
# a cancel, or the worker shutting down), so these are not repeated as job events.
TRAINER_STOP_EVENT = re.compile(r"Training (paused|cancelled) at step \d+")


DB_OUTAGE_S = 60.0  # how long training waits out an unreachable database before the attempt fails


def ride_out_db_outage(what: str, call: Callable[[], T]) -> T:
    """`call()`, retried while the database is unreachable (restart, failover), for up to DB_OUTAGE_S.
    Only for idempotent or fenced writes and reads: a retried commit may already have happened."""
    deadline = time.monotonic() + DB_OUTAGE_S
    delay = 0.5
    while True:
        try:
            return call()
        except OperationalError as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: database unreachable (%s); retrying in %.1fs", what, exc.orig, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def checkpoint_prefix(job_id: str, step: int, attempt: int) -> str:
    return f"jobs/{job_id}/checkpoints/step-{step}/attempt-{attempt}"


def metrics_message(data: dict[str, Any]) -> str:
    """The event text, e.g. "Step 12/60: training loss=1.234, validation loss=1.301"."""
    total = data.get("total_steps")
    text = f"Step {data.get('step')}/{total}" if total else f"Step {data.get('step')}"
    parts = []
    if data.get("train_loss") is not None:
        parts.append(f"training loss={data['train_loss']:.3f}")
    if data.get("valid_loss") is not None:
        parts.append(f"validation loss={data['valid_loss']:.3f}")
    for split, name in (("train", "reward"), ("valid", "validation reward")):
        if data.get(f"{split}_reward_mean") is not None:
            std = data.get(f"{split}_reward_std")
            parts.append(
                f"{name}={data[f'{split}_reward_mean']:.3f}" + (f"±{std:.3f}" if std is not None else "")
            )
    return f"{text}: {', '.join(parts)}" if parts else text


def _clean_metrics(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in METRIC_KEYS:
        value = data.get(key)
        if value is None:
            continue
        out[key] = int(value) if key in ("step", "total_steps") else float(value)
    for key, value in data.items():
        if REWARD_METRIC.match(key) and isinstance(value, int | float) and math.isfinite(value):
            out[key] = float(value)
    return out


# -- checkpoints in storage ------------------------------------------------------------------------------------


def upload_checkpoint(storage: Storage, local_dir: Path, prefix: str, *, step: int) -> None:
    """Upload a checkpoint dir; the manifest goes last, so a prefix without one is never trusted."""
    storage.delete_prefix(prefix + "/")  # leftovers of an attempt that died mid-upload
    files = {
        p.relative_to(local_dir).as_posix(): p.stat().st_size
        for p in sorted(local_dir.rglob("*"))
        if p.is_file()
    }
    storage.upload_dir(local_dir, prefix)
    manifest = {"step": step, "files": files, "created_at": now_s()}
    storage.put_bytes(f"{prefix}/{MANIFEST}", json.dumps(manifest, indent=1).encode())


def checkpoint_is_complete(storage: Storage, prefix: str) -> bool:
    """True when the manifest exists and every file it lists is there with its size."""
    try:
        manifest = json.loads(storage.get_bytes(f"{prefix}/{MANIFEST}"))
        files: dict[str, int] = manifest["files"]
        return bool(files) and all(storage.size(f"{prefix}/{name}") == size for name, size in files.items())
    except (ObjectNotFound, ValueError, KeyError, TypeError):
        return False


def delete_checkpoint_objects(storage: Storage, prefix: str) -> None:
    storage.delete(f"{prefix}/{MANIFEST}")  # unpublish first: a half-deleted checkpoint is never complete
    storage.delete_prefix(prefix + "/")


# -- the reporter ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobCaps:
    """A job's caps (max_trained_tokens, max_cost) as this attempt checks them after every optimizer step."""

    settings: Settings
    max_trained_tokens: int | None
    max_cost: float | None
    gpu_class: str
    prior_cost: float  # what the job's earlier attempts cost
    started: float  # time.monotonic() when this attempt started: its GPU time so far is priced too
    steps_per_epoch: int
    total_steps: int


class DbReporter:
    def __init__(
        self,
        *,
        engine: Engine,
        storage: Storage,
        job_id: str,
        attempt: int,
        organization_id: str,
        model_name: str,
        owner: str | None = None,
        shutdown: threading.Event | None = None,
        flush_interval_s: float = 0.25,
        keep_checkpoints: int = DEFAULT_N_CHECKPOINTS,  # the job's n_checkpoints
        on_tokens: Callable[[int, float], None] | None = None,
        caps: JobCaps | None = None,
        meter: Callable[[Session], None] | None = None,
        meter_interval_s: float = 5.0,
    ) -> None:
        self.engine = engine
        self.storage = storage
        self.job_id = job_id
        self.attempt = attempt
        self.organization_id = organization_id
        self.model_name = model_name  # the future fine_tuned_model; checkpoints are named after it
        self.owner = owner  # the worker that holds the job (None: fence on the attempt alone)
        self.shutdown = shutdown or threading.Event()
        self.flush_interval_s = flush_interval_s
        self.keep_checkpoints = keep_checkpoints
        self.step = 0
        self.total_steps: int | None = None
        self.last_checkpoint_step: int | None = None
        self._pending: list[dict[str, Any]] = []  # events not yet committed, in order
        self._last_flush = 0.0
        self._rate_start: tuple[float, int] | None = None  # (time, step) of the first metrics row
        self._estimated_finish: int | None = None
        # Throughput for the worker's metrics: on_tokens(tokens trained since the last call, tokens/s).
        self.on_tokens = on_tokens
        self._tokens_mark: tuple[float, int] = (time.monotonic(), 0)  # (when, job's trained tokens then)
        self._training = False  # set by the first metrics row
        # Metering: the job's trained tokens (and step) where this attempt started, and the latest known; the
        # runner sets `trained_tokens` to the trainer's own count when training returns.
        self.start_step = 0
        self.start_tokens = 0
        self.trained_tokens = 0
        self.tokens_per_epoch: int | None = None
        self.caps = caps
        # Metering while the attempt runs: `meter(session)` writes its usage so far with the events, at most
        # every meter_interval_s, so a runner killed mid-training (OOM, node loss) leaves its usage behind.
        self.meter = meter
        self.meter_interval_s = meter_interval_s
        self._last_meter = -math.inf
        self._polls = 0  # should_stop is polled once per optimizer step

    # -- writes --------------------------------------------------------------------------------------------

    def write_events(
        self, events: list[dict[str, Any]], *, statuses: Collection[str] = LIVE, **fields: Any
    ) -> bool:
        """Commit `events` (and job `fields`) only while the job is still this attempt's and in `statuses`.
        The fenced UPDATE comes first: it is the fence, and on SQLite it takes the write lock up front.
        A database outage is waited out (a retried commit at worst repeats a progress event)."""
        return ride_out_db_outage("job events", lambda: self._write_events(events, statuses, fields))

    def _write_events(
        self, events: list[dict[str, Any]], statuses: Collection[str], fields: dict[str, Any]
    ) -> bool:
        with session_scope(self.engine) as session:
            if not jobs.update_fenced(
                session,
                job_id=self.job_id,
                attempt=self.attempt,
                statuses=statuses,
                owner=self.owner,
                **fields,
            ):
                return False
            for event in events:
                jobs.append_event(session, job_id=self.job_id, **event)
            if self.meter is not None and time.monotonic() - self._last_meter >= self.meter_interval_s:
                self.meter(session)  # same transaction as the events: no extra commit
                self._last_meter = time.monotonic()
        return True

    def flush(self, *, force: bool = False) -> None:
        if not self._pending and not force:
            return
        if not force and time.monotonic() - self._last_flush < self.flush_interval_s:
            return
        pending, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        progress: dict[str, Any] = {"step": self.step, "estimated_finish": self._estimated_finish}
        if self.total_steps is not None:
            progress["total_steps"] = self.total_steps
        self.write_events(pending, **progress)

    # -- TrainingReporter ----------------------------------------------------------------------------------

    def event(self, message: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        if TRAINER_STOP_EVENT.fullmatch(message):
            return
        if not self._training:  # the last event before training ("started", or "resumed" with its tokens)
            self._tokens_mark = (time.monotonic(), int((data or {}).get("trained_tokens", 0)))
            if (data or {}).get("trainable_tokens_per_epoch") is not None:
                self.tokens_per_epoch = int((data or {})["trainable_tokens_per_epoch"])
            if data and data.get("trained_tokens") is not None and data.get("step") is not None:  # resumed
                self.start_step, self.start_tokens = int(data["step"]), int(data["trained_tokens"])
                self.trained_tokens = self.start_tokens
        self._pending.append({"message": message, "level": level, "data": data})
        self.flush(force=True)

    def metrics(self, data: dict[str, Any]) -> None:
        row = _clean_metrics(data)
        if "step" not in row:
            return
        self.step = row["step"]
        self.total_steps = row.get("total_steps", self.total_steps)
        self._update_estimate()
        self._pending.append({"message": metrics_message(row), "type": "metrics", "data": row})
        self.flush()
        self._training = True
        if data.get("trained_tokens") is not None:
            self.trained_tokens = int(data["trained_tokens"])
            self._count_tokens(int(data["trained_tokens"]))

    def checkpoint(self, step: int, local_dir: Path, metrics: dict[str, Any]) -> None:
        self.flush(force=True)
        if not self._still_ours():
            return  # cancelled or re-placed: don't publish anything more
        prefix = checkpoint_prefix(self.job_id, step, self.attempt)
        upload_checkpoint(self.storage, Path(local_dir), prefix, step=step)
        name = jobs.checkpoint_model_name(self.model_name, step)
        row_metrics = {**_clean_metrics(metrics), "step": step}

        def publish() -> tuple[bool, str | None, list[str]]:
            """(published, the prefix it replaces, expired prefixes). Retried through an outage: a commit
            that did happen is upserted again onto the same row (at worst its event is repeated)."""
            with session_scope(self.engine) as session:
                if not jobs.update_fenced(
                    session, job_id=self.job_id, attempt=self.attempt, statuses=LIVE, owner=self.owner
                ):
                    return False, None, []
                replaced = self._upsert_checkpoint(session, step, name, prefix, row_metrics)
                jobs.append_event(
                    session,
                    job_id=self.job_id,
                    message=f"Checkpoint created at step {step}",
                    data={"step": step, "fine_tuned_model_checkpoint": name},
                )
                webhooks.record_event(
                    session,
                    organization_id=self.organization_id,
                    type=webhooks.CHECKPOINT_CREATED,
                    job_id=self.job_id,
                    data={"step_number": step, "fine_tuned_model_checkpoint": name},
                )
                return True, replaced, self._expire_old_checkpoints(session)

        published, replaced, expired = ride_out_db_outage("publishing a checkpoint", publish)
        if not published:
            delete_checkpoint_objects(self.storage, prefix)
            return
        self.last_checkpoint_step = step
        for old_prefix in expired + ([replaced] if replaced and replaced != prefix else []):
            delete_checkpoint_objects(self.storage, old_prefix)

    def should_stop(self) -> StopRequest | None:
        self.flush()
        row = self._status()
        if row is None or row[1] != self.attempt or (self.owner is not None and row[2] != self.owner):
            return "cancel"  # re-placed, or reaped after this worker was given up for lost
        if row[0] == jobs.PAUSED:
            return "pause"
        if row[0] != jobs.RUNNING:
            return "cancel"  # cancelled, or moved by someone else: stop without a checkpoint
        # The worker is shutting down: checkpoint like a pause; the runner then puts the job back in the queue.
        if self.shutdown.is_set():
            return "pause"
        self._polls += 1
        return self._check_caps()

    def _check_caps(self) -> StopRequest | None:
        """Pause the job at the first step where it reaches a cap (not at its last step: it is finished then).
        The trainer reports a step's tokens only after this poll, so they are computed as it counts them."""
        caps = self.caps
        if (
            caps is None
            or self.tokens_per_epoch is None
            or (caps.max_trained_tokens, caps.max_cost) == (None, None)
        ):
            return None
        step = self.start_step + self._polls
        if step >= caps.total_steps:
            return None
        tokens = round(self.tokens_per_epoch * step / max(1, caps.steps_per_epoch))
        cost = caps.prior_cost + training_cost(
            caps.settings,
            trained_tokens=max(0, tokens - self.start_tokens),
            gpu_seconds=time.monotonic() - caps.started,
            gpu_class=caps.gpu_class,
        )
        reached = cap_reached(
            max_trained_tokens=caps.max_trained_tokens,
            max_cost=caps.max_cost,
            trained_tokens=tokens,
            cost=cost,
        )
        if reached is None:
            return None
        cap, limit, used = reached
        message = cap_message(self.job_id, cap, limit, used, currency=caps.settings.price_currency, step=step)
        data = {"cap": cap, "limit": limit, "used": used, "step": step}
        self.flush(force=True)

        def pause() -> bool:
            with session_scope(self.engine) as session:
                return jobs.transition(
                    session, job_id=self.job_id, from_status=[jobs.RUNNING], to_status=jobs.PAUSED,
                    attempt=self.attempt, owner=self.owner, message=message, level="warn", event_data=data,
                )  # fmt: skip

        if ride_out_db_outage("pausing the job at its cap", pause):
            log.info("job %s reached its %s cap at step %d: paused", self.job_id, cap, step)
            return "pause"
        return self.should_stop()  # cancelled or moved meanwhile: answer from its status

    # -- helpers -------------------------------------------------------------------------------------------

    def _status(self) -> tuple[str, int, str | None] | None:
        """(status, attempt, worker): one cheap indexed SELECT."""

        def read() -> tuple[str, int, str | None] | None:
            with Session(self.engine) as session:
                row = session.exec(
                    select(FineTuningJob.status, FineTuningJob.attempt, FineTuningJob.worker_id).where(
                        FineTuningJob.id == self.job_id
                    )
                ).first()
            return None if row is None else (row[0], row[1], row[2])

        return ride_out_db_outage("job status", read)

    def _still_ours(self) -> bool:
        row = self._status()
        return (
            row is not None
            and row[1] == self.attempt
            and row[0] in LIVE
            and (self.owner is None or row[2] == self.owner)
        )

    def _count_tokens(self, trained_tokens: int) -> None:
        at, before = self._tokens_mark
        now = time.monotonic()
        self._tokens_mark = (now, trained_tokens)
        if self.on_tokens is not None and trained_tokens > before:
            self.on_tokens(trained_tokens - before, (trained_tokens - before) / max(now - at, 1e-3))

    def _update_estimate(self) -> None:
        now = time.time()
        if self._rate_start is None:
            self._rate_start = (now, self.step)
            return
        started, first_step = self._rate_start
        if self.total_steps and self.step > first_step:
            seconds_per_step = (now - started) / (self.step - first_step)
            self._estimated_finish = int(now + seconds_per_step * max(0, self.total_steps - self.step))

    def _upsert_checkpoint(
        self, session: Session, step: int, name: str, prefix: str, metrics: dict[str, Any]
    ) -> str | None:
        """Returns the prefix of the checkpoint this one replaces (to delete once committed), if any."""
        # A resumed attempt may save a step an earlier attempt also saved: that row now points at ours.
        existing = session.exec(
            select(JobCheckpoint).where(
                JobCheckpoint.job_id == self.job_id,
                JobCheckpoint.step_number == step,
                col(JobCheckpoint.deleted_at).is_(None),
            )
        ).first()
        if existing is not None:
            replaced = existing.storage_prefix
            existing.metrics, existing.attempt, existing.created_at = metrics, self.attempt, now_s()
            existing.storage_prefix = prefix
            session.add(existing)
            return replaced
        session.add(
            JobCheckpoint(
                id=ids.checkpoint_id(),
                job_id=self.job_id,
                organization_id=self.organization_id,
                step_number=step,
                attempt=self.attempt,
                metrics=metrics,
                fine_tuned_model_checkpoint=name,
                storage_prefix=prefix,
            )
        )
        return None

    def _expire_old_checkpoints(self, session: Session) -> list[str]:
        """Mark all but the newest `keep_checkpoints` deleted; returns their prefixes to delete after commit."""
        session.flush()
        rows = session.exec(
            select(JobCheckpoint)
            .where(JobCheckpoint.job_id == self.job_id, col(JobCheckpoint.deleted_at).is_(None))
            .order_by(col(JobCheckpoint.step_number).desc())
        ).all()
        expired = rows[self.keep_checkpoints :]
        for row in expired:
            row.deleted_at = now_s()
            session.add(row)
        return [row.storage_prefix for row in expired]
