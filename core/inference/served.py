"""Served adapters (`served_adapters`): the model names inference can serve, each a job's final adapter or one
of its checkpoints, resolved for an organization, versioned once copied, rejected when unservable, and
marked deleted with their model.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from core import jobs
from core.db import session_scope
from core.errors import InvalidRequestError, NotFoundError
from core.inference.replicas import placements_by_adapter
from core.models import AdapterPlacement, FineTunedModel, JobCheckpoint, ServedAdapter, now_s

PENDING, READY, REJECTED, DELETED = "pending", "ready", "rejected", "deleted"
CHECKPOINT_NAME = re.compile(r"^(?P<model>ft:.+):ckpt-step-(?P<step>\d+)$")


def resolve_adapter(session: Session, *, organization_id: str, model_id: str) -> ServedAdapter:
    """The servable adapter behind `model_id` for this organization, its row created on first use. Another
    organization's model, a deleted one and an expired checkpoint are all 'not found'."""
    not_found = NotFoundError(
        f"The model '{model_id}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )
    match = CHECKPOINT_NAME.match(model_id)
    parent_name = match.group("model") if match else model_id
    parent = session.exec(select(FineTunedModel).where(FineTunedModel.id == parent_name)).first()
    if parent is not None and (parent.organization_id != organization_id or parent.deleted_at is not None):
        raise not_found
    if match:
        checkpoint = session.exec(
            select(JobCheckpoint).where(
                JobCheckpoint.fine_tuned_model_checkpoint == model_id,
                JobCheckpoint.organization_id == organization_id,
                col(JobCheckpoint.deleted_at).is_(None),
            )
        ).first()
        if checkpoint is None:
            raise not_found
        source: dict[str, Any] = {
            "job_id": checkpoint.job_id,
            "storage_prefix": checkpoint.storage_prefix,
            "checkpoint_step": checkpoint.step_number,
        }
        base_model = _job_base_model(session, checkpoint.job_id)
    else:
        if parent is None:
            raise not_found
        source = {"job_id": parent.job_id, "storage_prefix": parent.adapter_prefix, "checkpoint_step": None}
        base_model = parent.base_model
    row = session.exec(select(ServedAdapter).where(ServedAdapter.id == model_id)).first()
    if row is not None and row.organization_id != organization_id:
        raise not_found
    if row is not None and row.status == DELETED:
        raise not_found
    if row is not None and row.status == REJECTED:
        raise InvalidRequestError(
            row.error or f"The model '{model_id}' cannot be served.", param="model", code="model_not_servable"
        )
    if row is None:
        row = ServedAdapter(
            id=model_id, organization_id=organization_id, base_model=base_model, status=PENDING, **source
        )
        session.add(row)
        try:
            session.commit()
        except IntegrityError:  # created by another process at the same moment
            session.rollback()
            row = session.exec(select(ServedAdapter).where(ServedAdapter.id == model_id)).one()
    return row


def _job_base_model(session: Session, job_id: str) -> str:
    from core.continuation import base_model_of
    from core.models import FineTuningJob

    job = session.exec(select(FineTuningJob).where(FineTuningJob.id == job_id)).one()
    return base_model_of(job)  # a continued job's `model` is the ft: model it started from


def set_adapter_version(engine: Engine, adapter_id: str, version: str, rel_path: str) -> None:
    with session_scope(engine) as session:
        session.execute(
            update(ServedAdapter)
            .where(col(ServedAdapter.id) == adapter_id, col(ServedAdapter.version).is_(None))
            .values(version=version, rel_path=rel_path)
        )


def reject_adapter(engine: Engine, adapter: ServedAdapter, reason: str) -> bool:
    """Mark an adapter unservable and tell its job, once. Returns whether this call did it."""
    with session_scope(engine) as session:
        changed = session.execute(
            update(ServedAdapter)
            .where(col(ServedAdapter.id) == adapter.id, col(ServedAdapter.status) != REJECTED)
            .values(status=REJECTED, error=reason)
        ).rowcount  # type: ignore[attr-defined]
        if changed:
            jobs.append_event(
                session,
                job_id=adapter.job_id,
                level="error",
                message=f"Model {adapter.id} cannot be served: {reason}",
                data={"event": "model.rejected", "model": adapter.id, "reason": reason},
            )
    return bool(changed)


def mark_deleted(engine: Engine, model_id: str) -> list[str]:
    """A deleted fine-tuned model: it and its checkpoints are no longer served. Returns the served names."""
    with session_scope(engine) as session:
        rows = session.exec(
            select(ServedAdapter).where(
                (col(ServedAdapter.id) == model_id)
                | col(ServedAdapter.id).startswith(model_id + ":ckpt-step-", autoescape=True)
            )
        ).all()
        for row in rows:
            row.status, row.deleted_at = DELETED, now_s()
            session.add(row)
        names = {row.id for row in rows}
        names |= set(placements_by_adapter(session, [model_id]))
        for adapter_id in session.exec(
            select(AdapterPlacement.adapter_id).where(
                col(AdapterPlacement.adapter_id).startswith(model_id + ":", autoescape=True)
            )
        ).all():
            names.add(adapter_id)
    return sorted(names)
