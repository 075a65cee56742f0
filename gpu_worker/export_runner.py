"""One attempt of one export, top to bottom. The worker runs it as a child process, on the CPU:

    python -m gpu_worker.export_runner --export-id ftexp-... --attempt 2

1. Check the export is still queued for this attempt, and move it to running ("Export gguf started").
2. Download the adapter files of the job's final adapter, or of the checkpoint asked for.
3. Build the export and check it (gpu_worker.export).
4. Check the organization's export quota, stream the file into storage under a new File id, and publish it in one
   transaction: the export succeeded with its file_id, the File row, the job's event. A failure at any step fails
   the export with the reason (and what the checks found); nothing is offered.

Every write is fenced by attempt and worker, so an attempt whose worker was given up for lost publishes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core import exports, ids
from core.continuation import base_model_of
from core.db import make_engine, session_scope
from core.model_registry import get_base_model
from core.models import File, FineTunedModel, FineTuningJob, JobCheckpoint, JobExport, now_s
from core.settings import Settings, get_settings
from core.storage import ObjectNotFound, Storage, make_storage_from_settings
from gpu_worker.db_reporter import checkpoint_is_complete, ride_out_db_outage
from gpu_worker.job_runner import _terminate_with_parent

log = logging.getLogger("ftserve.export_runner")

MAX_ERROR_MESSAGE = 1000


class SourceUnavailable(Exception):
    """What the export was asked for is no longer in storage (the model or checkpoint was deleted)."""


def _source_prefix(session: Session, export: JobExport) -> str:
    if export.checkpoint_step is None:
        model = session.exec(
            select(FineTunedModel).where(
                FineTunedModel.job_id == export.job_id,
                col(FineTunedModel.checkpoint_step).is_(None),
                col(FineTunedModel.deleted_at).is_(None),
            )
        ).first()
        if model is None:
            raise SourceUnavailable(f"The fine-tuned model of job {export.job_id} no longer exists.")
        return model.adapter_prefix.rstrip("/")
    checkpoint = session.exec(
        select(JobCheckpoint).where(
            JobCheckpoint.job_id == export.job_id,
            JobCheckpoint.step_number == export.checkpoint_step,
            col(JobCheckpoint.deleted_at).is_(None),
        )
    ).first()
    if checkpoint is None:
        raise SourceUnavailable(f"The checkpoint at step {export.checkpoint_step} no longer exists.")
    return checkpoint.storage_prefix.rstrip("/")


def download_adapter(storage: Storage, prefix: str, dest: Path, *, checkpoint: bool) -> Path:
    """The adapter and tokenizer files under `prefix` (not a checkpoint's optimizer state), into `dest`."""
    from gpu_worker.export import ADAPTER_FILES, TOKENIZER_FILES

    if checkpoint and not checkpoint_is_complete(storage, prefix):
        raise SourceUnavailable("The checkpoint is incomplete in storage.")
    dest.mkdir(parents=True, exist_ok=True)
    for name in (*ADAPTER_FILES, *TOKENIZER_FILES):
        key = f"{prefix}/{name}"
        try:
            with open(dest / name, "wb") as fh:
                for chunk in storage.iter_chunks(key):
                    fh.write(chunk)
        except ObjectNotFound:
            (dest / name).unlink(missing_ok=True)
            if name in ADAPTER_FILES:
                raise SourceUnavailable(f"The adapter's {name} is missing from storage.") from None
    return dest


class ExportAttempt:
    def __init__(
        self, settings: Settings, engine: Engine, storage: Storage, export_id: str, attempt: int
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.storage = storage
        self.export_id = export_id
        self.attempt = attempt
        self.owner: str | None = None
        self.work_dir = settings.data_dir / "work" / "exports" / export_id / str(attempt)

    def run(self) -> int:
        export = ride_out_db_outage("starting the export", self._start)
        if export is None:
            return 0
        shutil.rmtree(self.work_dir, ignore_errors=True)
        self.work_dir.mkdir(parents=True)
        try:
            self._make(export)
        except Exception as exc:  # whatever went wrong fails this export, never the worker
            from gpu_worker.export import ExportFailed

            if isinstance(exc, ExportFailed):
                error, checks = {"code": exc.code, "message": exc.message}, exc.checks
            elif isinstance(exc, SourceUnavailable):
                error, checks = {"code": "source_unavailable", "message": str(exc)}, {}
            else:
                log.exception("export %s attempt %d failed", self.export_id, self.attempt)
                error = {"code": "export_error", "message": f"Export failed: {type(exc).__name__}: {exc}"}
                checks = {}
            error["message"] = error["message"][:MAX_ERROR_MESSAGE]
            ride_out_db_outage("failing the export", lambda: self._fail(export, error, checks))
        finally:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        return 0

    def _start(self) -> JobExport | None:
        with session_scope(self.engine) as session:
            export = session.exec(select(JobExport).where(JobExport.id == self.export_id)).first()
            if export is None or export.status != exports.QUEUED or export.attempt != self.attempt:
                log.info("export %s attempt %d is no longer to run", self.export_id, self.attempt)
                return None
            self.owner = export.worker_id
            source = (
                f"checkpoint at step {export.checkpoint_step}"
                if export.checkpoint_step is not None
                else "adapter"
            )
            started = exports.transition(
                session, export, from_status=exports.QUEUED, to_status=exports.RUNNING, attempt=self.attempt,
                owner=self.owner, started_at=now_s(),
                message=f"Export {export.format} started ({export.id}, from the {source}, on worker {self.owner})",
            )  # fmt: skip
            return export if started else None

    def _make(self, export: JobExport) -> None:
        from gpu_worker.export import build_export

        with Session(self.engine) as session:
            job = session.exec(select(FineTuningJob).where(FineTuningJob.id == export.job_id)).one()
            prefix = _source_prefix(session, export)
        base = get_base_model(self.settings, base_model_of(job))
        adapter = download_adapter(
            self.storage, prefix, self.work_dir / "source", checkpoint=export.checkpoint_step is not None
        )
        result = build_export(
            export.format,
            adapter_dir=adapter,
            base_dir=base.path,
            work_dir=self.work_dir,
            stem=exports.filename_stem(export.job_id, export.checkpoint_step),
            max_lora_rank=self.settings.vllm_max_lora_rank,
        )
        size = result.path.stat().st_size
        with Session(self.engine) as session:
            used = exports.used_bytes(session, export.organization_id)
        quota = self.settings.org_max_export_bytes
        if quota and used + size > quota:
            from gpu_worker.export import ExportFailed

            raise ExportFailed(
                "quota_exceeded",
                f"The export is {size:,} bytes; with the organization's other exports ({used:,} bytes) it would "
                f"pass the export quota of {quota:,} bytes. Delete export files to make room.",
                result.checks,
            )
        file_id = ids.file_id()
        key = f"files/{file_id}"
        digest = self._upload(result.path, key)
        try:
            published = ride_out_db_outage(
                "publishing the export",
                lambda: self._succeed(export, file_id, key, result.filename, size, digest, result.checks),
            )
        except BaseException:
            self.storage.delete(key)
            raise
        if not published:  # no longer this attempt's: offer nothing
            self.storage.delete(key)

    def _upload(self, path: Path, key: str) -> str:
        """Stream the file into storage (a temporary object until committed); returns its SHA-256."""
        digest = hashlib.sha256()
        writer = self.storage.open_writer(key)
        try:
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(8 << 20), b""):
                    digest.update(chunk)
                    writer.write(chunk)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        return digest.hexdigest()

    def _succeed(
        self, export: JobExport, file_id: str, key: str, filename: str, size: int, digest: str,
        checks: dict[str, Any],
    ) -> bool:  # fmt: skip
        with session_scope(self.engine) as session:
            done = exports.transition(
                session, export, from_status=exports.RUNNING, to_status=exports.SUCCEEDED, attempt=self.attempt,
                owner=self.owner, file_id=file_id, bytes=size, checks=checks, finished_at=now_s(),
                worker_id=None, lease_expires_at=None,
                message=f"Export {export.format} succeeded: {file_id} ({filename}, {size:,} bytes)",
                event_data={"file_id": file_id, "bytes": size},
            )  # fmt: skip
            if done:
                session.add(
                    File(
                        id=file_id,
                        organization_id=export.organization_id,
                        filename=filename,
                        purpose=exports.FILE_PURPOSE,
                        bytes=size,
                        sha256=digest,
                        status="processed",
                        storage_key=key,
                    )
                )
            return done

    def _fail(self, export: JobExport, error: dict[str, Any], checks: dict[str, Any]) -> None:
        with session_scope(self.engine) as session:
            exports.transition(
                session, export, from_status=exports.RUNNING, to_status=exports.FAILED, attempt=self.attempt,
                owner=self.owner, error=error, checks=checks, finished_at=now_s(), worker_id=None,
                lease_expires_at=None, level="error",
                message=f"Export {export.format} failed: {error['message']}", event_data={"error": error},
            )  # fmt: skip


def fail_after_exit(engine: Engine, export_id: str, attempt: int, owner: str, why: str) -> None:
    """The worker's settling of an export whose process died (killed for memory, timed out): failed, with why.
    A no-op when the runner settled it itself."""

    def settle() -> None:
        with session_scope(engine) as session:
            export = session.exec(select(JobExport).where(JobExport.id == export_id)).first()
            if export is None:
                return
            message = f"The export process {why}."
            for status in (exports.QUEUED, exports.RUNNING):
                exports.transition(
                    session, export, from_status=status, to_status=exports.FAILED, attempt=attempt, owner=owner,
                    error={"code": "export_error", "message": message}, finished_at=now_s(), worker_id=None,
                    lease_expires_at=None, level="error", message=f"Export {export.format} failed: {message}",
                )  # fmt: skip

    ride_out_db_outage("settling an exited export", settle)


def requeue_after_stop(engine: Engine, export_id: str, attempt: int, owner: str) -> None:
    """The worker stopped the export's process on its way down: back to the queue, for another worker."""

    def settle() -> None:
        with session_scope(engine) as session:
            export = session.exec(select(JobExport).where(JobExport.id == export_id)).first()
            if export is None:
                return
            for status in (exports.QUEUED, exports.RUNNING):
                exports.transition(
                    session, export, from_status=status, to_status=exports.QUEUED, attempt=attempt, owner=owner,
                    worker_id=None, lease_expires_at=None, started_at=None,
                    message=f"Export {export.format} ({export.id}): worker {owner} stopping; export re-queued",
                )  # fmt: skip

    ride_out_db_outage("re-queueing an export", settle)


def run_export(settings: Settings, export_id: str, attempt: int) -> int:
    engine = make_engine(settings.resolved_database_url)
    try:
        return ExportAttempt(settings, engine, make_storage_from_settings(settings), export_id, attempt).run()
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Make one attempt of one export.")
    parser.add_argument("--export-id", required=True)
    parser.add_argument("--attempt", type=int, required=True)
    args = parser.parse_args(argv)
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s [{args.export_id}#{args.attempt}] %(name)s: %(message)s",
    )
    _terminate_with_parent(
        threading.Event()
    )  # an orphan dies with its worker; the lease re-queues the export
    return run_export(settings, args.export_id, args.attempt)


if __name__ == "__main__":
    sys.exit(main())
