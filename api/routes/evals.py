"""/v1/evals: OpenAI's Evals API (`client.evals.*`, `client.evals.runs.*`, `client.evals.runs.output_items.*`).
Runs sample a model this server serves (a base model or an ft: model) and grade it; docs/api.md "Evaluations"."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request

from api.deps import CurrentOrg, SessionDep, SettingsDep
from api.protocol import (
    CreateEvalRequest,
    CreateEvalRunRequest,
    CursorListResponse,
    ErrorResponse,
    EvalDeleted,
    EvalObject,
    EvalOutputItemObject,
    EvalRunDeleted,
    EvalRunObject,
    UpdateEvalRequest,
)
from api.services import evals as service

router = APIRouter(
    prefix="/v1/evals",
    tags=["evals"],
    responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)

Order = Literal["asc", "desc"]


@router.post("", response_model=EvalObject)
def create_eval(body: CreateEvalRequest, org: CurrentOrg, session: SessionDep) -> EvalObject:
    """An eval: the item schema (`data_source_config`, type custom) and the graders (`testing_criteria`)."""
    return service.create_eval(session=session, org=org, request=body)


@router.get("", response_model=CursorListResponse[EvalObject])
def list_evals(
    org: CurrentOrg,
    session: SessionDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    order: Order = "asc",
) -> CursorListResponse[EvalObject]:
    return service.list_evals(session=session, org=org, after=after, limit=limit, order=order)


@router.get("/{eval_id}", response_model=EvalObject)
def retrieve_eval(eval_id: str, org: CurrentOrg, session: SessionDep) -> EvalObject:
    return service.retrieve_eval(session=session, org=org, eval_id=eval_id)


@router.post("/{eval_id}", response_model=EvalObject)
def update_eval(eval_id: str, body: UpdateEvalRequest, org: CurrentOrg, session: SessionDep) -> EvalObject:
    return service.update_eval(session=session, org=org, eval_id=eval_id, request=body)


@router.delete("/{eval_id}", response_model=EvalDeleted)
def delete_eval(eval_id: str, org: CurrentOrg, session: SessionDep) -> EvalDeleted:
    return service.delete_eval(session=session, org=org, eval_id=eval_id)


@router.post("/{eval_id}/runs", response_model=EvalRunObject)
def create_run(
    eval_id: str,
    body: CreateEvalRunRequest,
    org: CurrentOrg,
    session: SessionDep,
    settings: SettingsDep,
    request: Request,
) -> EvalRunObject:
    """Sample `data_source.model` on every item and grade it, in the background: poll the run (its
    result_counts grow as items are graded) or its output items. Two runs with different models compare them."""
    return service.create_run(
        session=session,
        settings=settings,
        org=org,
        eval_id=eval_id,
        request=body,
        ui_root=service.ui_root(request),
        runner=service.get_eval_runner(request),
    )


@router.get("/{eval_id}/runs", response_model=CursorListResponse[EvalRunObject])
def list_runs(
    eval_id: str,
    org: CurrentOrg,
    session: SessionDep,
    request: Request,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    order: Order = "asc",
    status: str | None = None,
) -> CursorListResponse[EvalRunObject]:
    return service.list_runs(
        session=session,
        org=org,
        eval_id=eval_id,
        after=after,
        limit=limit,
        order=order,
        status=status,
        ui_root=service.ui_root(request),
    )


@router.get("/{eval_id}/runs/{run_id}", response_model=EvalRunObject)
def retrieve_run(
    eval_id: str, run_id: str, org: CurrentOrg, session: SessionDep, request: Request
) -> EvalRunObject:
    return service.retrieve_run(
        session=session, org=org, eval_id=eval_id, run_id=run_id, ui_root=service.ui_root(request)
    )


@router.post("/{eval_id}/runs/{run_id}/cancel", response_model=EvalRunObject)
@router.post("/{eval_id}/runs/{run_id}", response_model=EvalRunObject)
def cancel_run(
    eval_id: str, run_id: str, org: CurrentOrg, session: SessionDep, request: Request
) -> EvalRunObject:
    """Cancel a queued or in-progress run (openai-python posts to .../cancel, OpenAI's reference to the run
    itself). A finished run is returned as it is."""
    return service.cancel_run(
        session=session, org=org, eval_id=eval_id, run_id=run_id, ui_root=service.ui_root(request)
    )


@router.delete("/{eval_id}/runs/{run_id}", response_model=EvalRunDeleted)
def delete_run(eval_id: str, run_id: str, org: CurrentOrg, session: SessionDep) -> EvalRunDeleted:
    return service.delete_run(session=session, org=org, eval_id=eval_id, run_id=run_id)


@router.get("/{eval_id}/runs/{run_id}/output_items", response_model=CursorListResponse[EvalOutputItemObject])
def list_output_items(
    eval_id: str,
    run_id: str,
    org: CurrentOrg,
    session: SessionDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    order: Order = "asc",
    status: str | None = None,
) -> CursorListResponse[EvalOutputItemObject]:
    return service.list_output_items(
        session=session,
        org=org,
        eval_id=eval_id,
        run_id=run_id,
        after=after,
        limit=limit,
        order=order,
        status=status,
    )


@router.get("/{eval_id}/runs/{run_id}/output_items/{output_item_id}", response_model=EvalOutputItemObject)
def retrieve_output_item(
    eval_id: str, run_id: str, output_item_id: str, org: CurrentOrg, session: SessionDep
) -> EvalOutputItemObject:
    return service.retrieve_output_item(
        session=session, org=org, eval_id=eval_id, run_id=run_id, output_item_id=output_item_id
    )
