"""Rows for scheduler and worker tests, written the way the API writes them: an org, processed files in
storage, jobs in `validating_files`."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core import ids, jobs
from core.db import session_scope
from core.keys import get_or_create_org
from core.models import File, FineTuningJob, JobEvent
from core.storage import Storage


def make_org(engine: Engine, name: str = "org-test") -> str:
    with session_scope(engine) as session:
        return get_or_create_org(session, name=name).id


def make_file(
    engine: Engine,
    storage: Storage,
    org_id: str,
    rows: list[dict[str, Any]],
    *,
    data_format: str = "chat",
    status: str = "processed",
) -> str:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    file_id = ids.file_id()
    storage.put_bytes(f"files/{file_id}", data)
    with session_scope(engine) as session:
        session.add(
            File(
                id=file_id,
                organization_id=org_id,
                filename="train.jsonl",
                purpose="fine-tune",
                bytes=len(data),
                status=status,
                data_format=data_format,
                example_count=len(rows),
                storage_key=f"files/{file_id}",
                sha256=hashlib.sha256(data).hexdigest(),
            )
        )
    return file_id


def make_job(
    engine: Engine,
    org_id: str,
    training_file: str,
    *,
    validation_file: str | None = None,
    model: str = "demo-tiny",
    method: str = "supervised",
    hyperparameters: dict[str, Any] | None = None,
    suffix: str | None = None,
    seed: int = 0,
    status: str = jobs.VALIDATING,
    priority: int = 0,
    created_at: int | None = None,
) -> str:
    job_id = ids.job_id()
    with session_scope(engine) as session:
        session.add(
            FineTuningJob(
                id=job_id,
                organization_id=org_id,
                model=model,
                training_file=training_file,
                validation_file=validation_file,
                method_type=method,
                hyperparameters=hyperparameters or {},
                suffix=suffix,
                seed=seed,
                status=status,
                priority=priority,
                **({"created_at": created_at} if created_at is not None else {}),
            )
        )
        jobs.append_event(session, job_id=job_id, message=f"Created fine-tuning job: {job_id}")
    return job_id


def get_job(engine: Engine, job_id: str) -> FineTuningJob:
    with Session(engine, expire_on_commit=False) as session:
        job = session.exec(select(FineTuningJob).where(FineTuningJob.id == job_id)).one()
        session.expunge(job)
        return job


def events(engine: Engine, job_id: str) -> list[JobEvent]:
    """Oldest first."""
    with Session(engine, expire_on_commit=False) as session:
        return list(
            session.exec(select(JobEvent).where(JobEvent.job_id == job_id).order_by(col(JobEvent.seq))).all()
        )


def messages(engine: Engine, job_id: str) -> list[str]:
    return [e.message for e in events(engine, job_id)]


def chat_rows(n: int, *, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"Code for item {i}?"},
                {"role": "assistant", "content": f"Item {i} has code {(i * 7919) % 1000:03d}."},
            ]
        }
        for i in range(start, start + n)
    ]
