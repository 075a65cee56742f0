"""/v1/fine_tuning/alpha/graders: check a reinforcement grader, or score one sample with it (OpenAI's)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import CurrentOrg
from api.protocol import (
    ErrorResponse,
    RunGraderRequest,
    RunGraderResponse,
    ValidateGraderRequest,
    ValidateGraderResponse,
)
from api.services import graders as service

router = APIRouter(
    prefix="/v1/fine_tuning/alpha/graders",
    tags=["fine-tuning"],
    responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}},
)


@router.post("/validate", response_model=ValidateGraderResponse)
async def validate_grader(body: ValidateGraderRequest, org: CurrentOrg) -> ValidateGraderResponse:
    """Check a grader: 400 naming the bad field, else the grader back."""
    return service.validate(body)


@router.post("/run", response_model=RunGraderResponse)
async def run_grader(body: RunGraderRequest, org: CurrentOrg, request: Request) -> RunGraderResponse:
    """Score `model_sample` for `item` with the grader."""
    return await service.run(request, org, body)
