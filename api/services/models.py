"""Models: registered base models (owned by "system") and the organization's fine-tuned models."""

from __future__ import annotations

from sqlmodel import Session, col, select

from api.protocol import ListResponse, ModelDeleted, ModelObject
from core.errors import InvalidRequestError, NotFoundError
from core.model_registry import load_registry
from core.models import FineTunedModel, Organization, now_s
from core.settings import Settings


def _fine_tuned(session: Session, *, org: Organization, model_id: str) -> FineTunedModel | None:
    return session.exec(
        select(FineTunedModel).where(
            FineTunedModel.id == model_id,
            FineTunedModel.organization_id == org.id,
            col(FineTunedModel.deleted_at).is_(None),
        )
    ).first()


def list_models(*, session: Session, settings: Settings, org: Organization) -> ListResponse[ModelObject]:
    data = [
        ModelObject(id=m.id, created=m.created, owned_by="system") for m in load_registry(settings).values()
    ]
    rows = session.exec(
        select(FineTunedModel)
        .where(FineTunedModel.organization_id == org.id, col(FineTunedModel.deleted_at).is_(None))
        .order_by(col(FineTunedModel.seq).desc())
    ).all()
    data += [ModelObject(id=r.id, created=r.created_at, owned_by=org.name) for r in rows]
    return ListResponse[ModelObject](data=data)


def retrieve_model(*, session: Session, settings: Settings, org: Organization, model_id: str) -> ModelObject:
    base = load_registry(settings).get(model_id)
    if base is not None:
        return ModelObject(id=base.id, created=base.created, owned_by="system")
    row = _fine_tuned(session, org=org, model_id=model_id)
    if row is None:
        raise NotFoundError(f"The model '{model_id}' does not exist", param="model", code="model_not_found")
    return ModelObject(id=row.id, created=row.created_at, owned_by=org.name)


def delete_model(*, session: Session, settings: Settings, org: Organization, model_id: str) -> ModelDeleted:
    if model_id in load_registry(settings):
        raise InvalidRequestError(
            f"'{model_id}' is a base model; only fine-tuned models can be deleted.", param="model"
        )
    row = _fine_tuned(session, org=org, model_id=model_id)
    if row is None:
        raise NotFoundError(f"The model '{model_id}' does not exist", param="model", code="model_not_found")
    row.deleted_at = now_s()
    session.add(row)
    session.commit()
    return ModelDeleted(id=model_id)
