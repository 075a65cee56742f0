"""/v1/fine_tuning/estimates: a pre-flight memory estimate for a fine-tuning job (an ftserve extension)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentOrg, SessionDep, SettingsDep, StorageDep
from api.protocol import CreateEstimateRequest, ErrorResponse, EstimateObject
from api.services import estimates as service

router = APIRouter(
    prefix="/v1/fine_tuning/estimates",
    tags=["fine-tuning"],
    responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}},
)


@router.post("", response_model=EstimateObject)
async def create_estimate(
    body: CreateEstimateRequest,
    org: CurrentOrg,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> EstimateObject:
    """How much GPU memory the job this body describes would reserve, itemised, and which live GPU classes
    could run it. Nothing is created."""
    return await service.create_estimate(
        session=session, settings=settings, storage=storage, org=org, request=body
    )
