"""/v1/fine_tuning/jobs/{job_id}/exports: a job's adapter, merged model or GGUF as a downloadable File (an
ftserve extension; docs/export.md)."""

from __future__ import annotations

from fastapi import APIRouter, Query

from api.deps import CurrentOrg, SessionDep, SettingsDep
from api.protocol import CreateExportRequest, CursorListResponse, ErrorResponse, ExportObject
from api.services import exports as service

router = APIRouter(
    prefix="/v1/fine_tuning/jobs/{job_id}/exports",
    tags=["fine-tuning"],
    responses={
        400: {"model": ErrorResponse},
        401: {"model": ErrorResponse},
        404: {"model": ErrorResponse},
        429: {"model": ErrorResponse, "description": "Over the organization's export quota"},
    },
)


@router.post("", response_model=ExportObject)
def create_export(
    job_id: str, body: CreateExportRequest, org: CurrentOrg, session: SessionDep, settings: SettingsDep
) -> ExportObject:
    """Export the job's adapter (or one of its checkpoints) as `adapter`, `merged` or `gguf`. The export is
    queued; once it succeeded, its `file_id` downloads through GET /v1/files/{file_id}/content."""
    return service.create_export(session=session, settings=settings, org=org, job_id=job_id, request=body)


@router.get("", response_model=CursorListResponse[ExportObject])
def list_exports(
    job_id: str,
    org: CurrentOrg,
    session: SessionDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
) -> CursorListResponse[ExportObject]:
    return service.list_exports(session=session, org=org, job_id=job_id, after=after, limit=limit)


@router.get("/{export_id}", response_model=ExportObject)
def retrieve_export(job_id: str, export_id: str, org: CurrentOrg, session: SessionDep) -> ExportObject:
    return service.retrieve_export(session=session, org=org, job_id=job_id, export_id=export_id)
