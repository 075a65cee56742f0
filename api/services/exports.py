"""Exports of a job's adapter (an ftserve extension; docs/export.md): request, list, retrieve.

The API only records the request (a `queued` row): the scheduler hands it to a worker, which makes the file, checks
it and publishes it as a File (core.exports, gpu_worker/export_runner.py)."""

from __future__ import annotations

import re

from sqlmodel import Session, col, select

from api.protocol import CreateExportRequest, CursorListResponse, ExportError, ExportObject
from api.services.pagination import paginate
from core import exports, ids, jobs
from core.errors import ConflictError, InvalidRequestError, NotFoundError, QuotaExceededError
from core.models import FineTunedModel, FineTuningJob, JobCheckpoint, JobExport, Organization
from core.settings import Settings

_STEP = re.compile(r"(?:step-)?(\d{1,9})")


def export_object(row: JobExport) -> ExportObject:
    return ExportObject(
        id=row.id,
        job_id=row.job_id,
        format=row.format,
        status=row.status,
        model=row.source_model,
        checkpoint_step=row.checkpoint_step,
        file_id=row.file_id,
        bytes=row.bytes,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        error=ExportError(**row.error) if row.error else None,
        checks=row.checks or {},
    )


def _job(session: Session, *, org: Organization, job_id: str) -> FineTuningJob:
    job = session.exec(
        select(FineTuningJob).where(FineTuningJob.id == job_id, FineTuningJob.organization_id == org.id)
    ).first()
    if job is None:
        raise NotFoundError(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
    return job


def _checkpoint(session: Session, job: FineTuningJob, wanted: str | int) -> JobCheckpoint:
    """The job's live checkpoint named by id, model name, or step (an int, "12" or "step-12"); a 400 if none."""
    rows = session.exec(
        select(JobCheckpoint)
        .where(JobCheckpoint.job_id == job.id, col(JobCheckpoint.deleted_at).is_(None))
        .order_by(col(JobCheckpoint.step_number))
    ).all()
    step: int | None = None
    if isinstance(wanted, int):
        step = wanted
    elif match := _STEP.fullmatch(wanted.strip()):
        step = int(match.group(1))
    for row in rows:
        if row.step_number == step or wanted in (row.id, row.fine_tuned_model_checkpoint):
            return row
    available = ", ".join(str(r.step_number) for r in rows) or "none"
    raise InvalidRequestError(
        f"Job {job.id} has no checkpoint {wanted!r} (its checkpoints are at steps: {available}).",
        param="checkpoint",
        code="checkpoint_not_found",
    )


def _final_model(session: Session, job: FineTuningJob) -> FineTunedModel:
    if job.status != jobs.SUCCEEDED:
        raise ConflictError(
            f"Cannot export job {job.id}: it is {job.status}; only succeeded jobs can be exported. A checkpoint of "
            "it can be: pass 'checkpoint' (GET /v1/fine_tuning/jobs/{id}/checkpoints lists them).",
            param="fine_tuning_job_id",
        )
    model = session.exec(
        select(FineTunedModel).where(
            FineTunedModel.job_id == job.id,
            col(FineTunedModel.checkpoint_step).is_(None),
            col(FineTunedModel.deleted_at).is_(None),
        )
    ).first()
    if model is None:
        raise ConflictError(
            f"Cannot export job {job.id}: its fine-tuned model was deleted.", param="fine_tuning_job_id"
        )
    return model


def _check_quotas(session: Session, *, settings: Settings, org: Organization) -> None:
    if settings.org_max_export_bytes:
        used = exports.used_bytes(session, org.id)
        if used >= settings.org_max_export_bytes:
            raise QuotaExceededError(
                f"The organization's export files take {used:,} bytes, its export quota is "
                f"{settings.org_max_export_bytes:,}. Delete export files (DELETE /v1/files/{{id}}) to export more."
            )
    if settings.org_max_active_exports:
        active = exports.active_count(session, org.id)
        if active >= settings.org_max_active_exports:
            raise QuotaExceededError(
                f"The organization has {active} exports in progress, its limit is "
                f"{settings.org_max_active_exports}. Wait for one to finish."
            )


def create_export(
    *, session: Session, settings: Settings, org: Organization, job_id: str, request: CreateExportRequest
) -> ExportObject:
    job = _job(session, org=org, job_id=job_id)
    if request.checkpoint is not None:
        checkpoint = _checkpoint(session, job, request.checkpoint)
        step: int | None = checkpoint.step_number
        source = checkpoint.fine_tuned_model_checkpoint
    else:
        step, source = None, _final_model(session, job).id
    _check_quotas(session, settings=settings, org=org)
    row = JobExport(
        id=ids.new_id("ftexp-"),
        organization_id=org.id,
        job_id=job.id,
        format=request.format,
        checkpoint_step=step,
        source_model=source,
    )
    session.add(row)
    what = f"the checkpoint at step {step}" if step is not None else "the fine-tuned model"
    jobs.append_event(
        session,
        job_id=job.id,
        message=f"Export {request.format} requested ({row.id}, of {what})",
        data={"export_id": row.id, "format": request.format, "status": exports.QUEUED},
    )
    session.commit()
    session.refresh(row)
    return export_object(row)


def _export(session: Session, *, job: FineTuningJob, export_id: str) -> JobExport:
    row = session.exec(select(JobExport).where(JobExport.id == export_id, JobExport.job_id == job.id)).first()
    if row is None:
        raise NotFoundError(f"No such export: {export_id}", param="export_id")
    return row


def retrieve_export(*, session: Session, org: Organization, job_id: str, export_id: str) -> ExportObject:
    job = _job(session, org=org, job_id=job_id)
    return export_object(_export(session, job=job, export_id=export_id))


def list_exports(
    *, session: Session, org: Organization, job_id: str, after: str | None, limit: int
) -> CursorListResponse[ExportObject]:
    job = _job(session, org=org, job_id=job_id)
    rows, has_more = paginate(
        session, model=JobExport, filters=[JobExport.job_id == job.id], after=after, limit=limit
    )
    data = [export_object(r) for r in rows]
    return CursorListResponse[ExportObject](
        data=data,
        has_more=has_more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )
