"""/v1/models: base and fine-tuned models. Ids contain ':' (ft:base:org:suffix:job), so routes take paths."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from api.deps import CurrentOrg, SessionDep, SettingsDep
from api.protocol import ErrorResponse, ListResponse, ModelDeleted, ModelObject
from api.services import audit
from api.services import models as service
from api.services.inference import get_inference

router = APIRouter(
    prefix="/v1/models",
    tags=["models"],
    responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)


@router.get("", response_model=ListResponse[ModelObject])
def list_models(org: CurrentOrg, session: SessionDep, settings: SettingsDep) -> ListResponse[ModelObject]:
    return service.list_models(session=session, settings=settings, org=org)


@router.get("/{model_id:path}", response_model=ModelObject)
def retrieve_model(model_id: str, org: CurrentOrg, session: SessionDep, settings: SettingsDep) -> ModelObject:
    return service.retrieve_model(session=session, settings=settings, org=org, model_id=model_id)


@router.delete("/{model_id:path}", response_model=ModelDeleted)
async def delete_model(
    model_id: str, request: Request, org: CurrentOrg, session: SessionDep, settings: SettingsDep
) -> ModelDeleted:
    deleted = await run_in_threadpool(
        service.delete_model, session=session, settings=settings, org=org, model_id=model_id
    )
    # Then unload it (and its checkpoints) from every replica: from now on requests for it get a 404.
    await get_inference(request).forget_model(model_id)
    await run_in_threadpool(audit.record, request, session, type="model.deleted", object_id=model_id)
    return deleted
