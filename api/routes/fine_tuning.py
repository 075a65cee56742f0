"""/v1/fine_tuning/jobs: OpenAI's fine-tuning jobs API."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response

from api.deps import CurrentOrg, IdempotencyKeyHeader, SessionDep, SettingsDep, StorageDep
from api.protocol import (
    CreateFineTuningJobRequest,
    CursorListResponse,
    ErrorResponse,
    FineTuningJobCheckpointObject,
    FineTuningJobEventObject,
    FineTuningJobObject,
    ListResponse,
    ResumeFineTuningJobRequest,
)
from api.services import audit
from api.services import fine_tuning as service
from api.services.idempotency import REPLAYED_HEADER

router = APIRouter(
    prefix="/v1/fine_tuning/jobs",
    tags=["fine-tuning"],
    responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)


def _metadata_filter(request: Request) -> dict[str, str]:
    """`metadata[key]=value` query parameters (OpenAI's deepObject style)."""
    return {
        name[len("metadata[") : -1]: value
        for name, value in request.query_params.items()
        if name.startswith("metadata[") and name.endswith("]") and len(name) > len("metadata[]")
    }


@router.post(
    "",
    response_model=FineTuningJobObject,
    responses={422: {"model": ErrorResponse, "description": "Idempotency-Key reused with another body"}},
)
def create_job(
    body: CreateFineTuningJobRequest,
    request: Request,
    org: CurrentOrg,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    storage: StorageDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> FineTuningJobObject:
    job, replayed = service.create_job(
        session=session,
        settings=settings,
        org=org,
        request=body,
        idempotency_key=idempotency_key,
        storage=storage,
    )
    if replayed:
        response.headers[REPLAYED_HEADER] = "true"
    else:
        audit.record(
            request, session, type="fine_tuning.job.created", object_id=job.id, data={"model": job.model}
        )
    return job


@router.get("", response_model=ListResponse[FineTuningJobObject])
def list_jobs(
    request: Request,
    org: CurrentOrg,
    session: SessionDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
) -> ListResponse[FineTuningJobObject]:
    return service.list_jobs(
        session=session, org=org, after=after, limit=limit, metadata=_metadata_filter(request)
    )


@router.get("/{job_id}", response_model=FineTuningJobObject)
def retrieve_job(job_id: str, org: CurrentOrg, session: SessionDep) -> FineTuningJobObject:
    return service.retrieve_job(session=session, org=org, job_id=job_id)


@router.post("/{job_id}/cancel", response_model=FineTuningJobObject)
def cancel_job(job_id: str, request: Request, org: CurrentOrg, session: SessionDep) -> FineTuningJobObject:
    job = service.cancel_job(session=session, org=org, job_id=job_id)
    audit.record(request, session, type="fine_tuning.job.cancelled", object_id=job_id)
    return job


@router.post("/{job_id}/pause", response_model=FineTuningJobObject)
def pause_job(job_id: str, request: Request, org: CurrentOrg, session: SessionDep) -> FineTuningJobObject:
    job = service.pause_job(session=session, org=org, job_id=job_id)
    audit.record(request, session, type="fine_tuning.job.paused", object_id=job_id)
    return job


@router.post(
    "/{job_id}/resume",
    response_model=FineTuningJobObject,
    responses={429: {"model": ErrorResponse, "description": "The organization's monthly budget is spent."}},
)
def resume_job(
    job_id: str,
    request: Request,
    org: CurrentOrg,
    session: SessionDep,
    settings: SettingsDep,
    body: ResumeFineTuningJobRequest | None = None,
) -> FineTuningJobObject:
    """Continue a paused job from its last checkpoint. Extension: a body changes its caps (`max_trained_tokens`,
    `max_cost`; null removes one): a job paused at a cap resumes only once that cap is above what it used."""
    job = service.resume_job(session=session, org=org, job_id=job_id, settings=settings, request=body)
    caps = body.model_dump(include=body.model_fields_set) if body is not None else {}
    audit.record(request, session, type="fine_tuning.job.resumed", object_id=job_id, data=caps or None)
    return job


@router.get("/{job_id}/events", response_model=ListResponse[FineTuningJobEventObject])
def list_events(
    job_id: str,
    org: CurrentOrg,
    session: SessionDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=1000),
) -> ListResponse[FineTuningJobEventObject]:
    return service.list_events(session=session, org=org, job_id=job_id, after=after, limit=limit)


@router.get("/{job_id}/checkpoints", response_model=CursorListResponse[FineTuningJobCheckpointObject])
def list_checkpoints(
    job_id: str,
    org: CurrentOrg,
    session: SessionDep,
    after: str | None = None,
    limit: int = Query(10, ge=1, le=100),
) -> CursorListResponse[FineTuningJobCheckpointObject]:
    return service.list_checkpoints(session=session, org=org, job_id=job_id, after=after, limit=limit)
