"""Files: upload with streaming validation, list, retrieve, content, delete. Keyword-only functions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Literal

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from starlette.requests import Request

from api.protocol import (
    CursorListResponse,
    FileDeleted,
    FileObject,
    FileValidationReport,
    ValidationLineError,
    file_object,
)
from api.services.pagination import paginate
from api.services.uploads import check_purpose, receive_upload
from core import ids
from core.db import session_scope
from core.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError, QuotaExceededError
from core.models import File, Organization, now_s
from core.settings import Settings
from core.storage import Storage

EXPIRES_MIN_S, EXPIRES_MAX_S = 3600, 2_592_000


class FileValidationError(InvalidRequestError):
    """An upload that failed validation. Carries the file id, so the report can be fetched."""

    code = "invalid_file"

    def __init__(self, message: str, *, file_id: str) -> None:
        super().__init__(message, param="file")
        self.extra = {"file_id": file_id}


def _expires_at(fields: dict[str, str]) -> int | None:
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequestError("expires_after[anchor] must be 'created_at'.", param="expires_after.anchor")
    if (
        seconds is None
        or not (seconds.isascii() and seconds.isdigit())
        or not EXPIRES_MIN_S <= int(seconds) <= EXPIRES_MAX_S
    ):
        raise InvalidRequestError(
            f"expires_after[seconds] must be an integer from {EXPIRES_MIN_S} to {EXPIRES_MAX_S}.",
            param="expires_after.seconds",
        )
    return now_s() + int(seconds)


def _check_file_quotas(*, engine: Engine, settings: Settings, org: Organization) -> int:
    """Refuse a new upload when the org holds ORG_MAX_FILES files; return the storage bytes it has left.

    Checked before the upload streams in, so two concurrent uploads may both fit: a soft limit, by one
    upload at most per API process."""
    with Session(engine) as session:
        count, used = session.exec(
            select(func.count(), func.coalesce(func.sum(File.bytes), 0)).where(
                File.organization_id == org.id, col(File.deleted_at).is_(None)
            )
        ).one()
    if settings.org_max_files and count >= settings.org_max_files:
        raise QuotaExceededError(
            f"The organization holds {count} files, its quota is {settings.org_max_files}. Delete files to "
            "upload more.",
            param="file",
        )
    if not settings.org_max_storage_bytes:
        return settings.max_upload_bytes
    left = max(0, settings.org_max_storage_bytes - int(used))
    if left == 0:
        raise QuotaExceededError(
            f"The organization's files use its whole storage quota of {settings.org_max_storage_bytes:,} "
            "bytes. Delete files to upload more.",
            param="file",
        )
    return left


async def create_file(
    *, request: Request, engine: Engine, storage: Storage, settings: Settings, org: Organization
) -> FileObject:
    file_id = ids.file_id()
    key = f"files/{file_id}"
    storage_left = _check_file_quotas(engine=engine, settings=settings, org=org)
    try:
        result = await receive_upload(
            request=request,
            storage=storage,
            key=key,
            max_bytes=min(settings.max_upload_bytes, storage_left),
            max_line_bytes=settings.max_line_bytes,
            min_examples=settings.min_examples,
        )
    except PayloadTooLargeError:
        if storage_left >= settings.max_upload_bytes:
            raise
        raise QuotaExceededError(
            f"This upload would take the organization past its storage quota of "
            f"{settings.org_max_storage_bytes:,} bytes ({storage_left:,} left). Delete files to make room.",
            param="file",
        ) from None
    purpose = result.fields.get("purpose")
    try:
        if purpose is None:
            raise InvalidRequestError("Missing required form field 'purpose'.", param="purpose")
        check_purpose(purpose)
        expires_at = _expires_at(result.fields)
    except BaseException:
        storage.delete(key)
        raise

    report = result.report
    assert report is not None
    row = File(
        id=file_id,
        organization_id=org.id,
        filename=result.filename or "upload.jsonl",
        purpose=purpose,
        bytes=result.bytes,
        expires_at=expires_at,
        status="processed" if report.ok else "error",
        status_details=None if report.ok else report.summary(),
        data_format=report.data_format,
        example_count=report.example_count,
        validation_errors=[e.to_dict() for e in report.errors],
        validation_error_count=report.error_count,
        storage_key=key,
        sha256=result.sha256,
    )
    try:
        with session_scope(engine) as session:
            session.add(row)
    except BaseException:
        # No row, no object: never leave bytes that nothing lists.
        storage.delete(key)
        raise
    if not report.ok:
        more = f" {report.error_count} errors in total;" if report.error_count > 1 else ""
        raise FileValidationError(
            f"Invalid training file: {report.summary()}{more} full report: GET /v1/files/{file_id}/validation",
            file_id=file_id,
        )
    return file_object(row)


def _live_file(session: Session, *, org: Organization, file_id: str) -> File:
    row = session.exec(
        select(File).where(File.id == file_id, File.organization_id == org.id, col(File.deleted_at).is_(None))
    ).first()
    if row is None or (row.expires_at is not None and row.expires_at <= time.time()):
        raise NotFoundError(f"No such File object: {file_id}", param="file_id")
    return row


def list_files(
    *,
    session: Session,
    org: Organization,
    purpose: str | None,
    after: str | None,
    limit: int,
    order: Literal["asc", "desc"],
) -> CursorListResponse[FileObject]:
    filters = [File.organization_id == org.id, col(File.deleted_at).is_(None)]
    filters.append(col(File.expires_at).is_(None) | (col(File.expires_at) > now_s()))
    if purpose:
        filters.append(File.purpose == purpose)
    rows, has_more = paginate(session, model=File, filters=filters, after=after, limit=limit, order=order)
    data = [file_object(r) for r in rows]
    return CursorListResponse[FileObject](
        data=data,
        has_more=has_more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


def retrieve_file(*, session: Session, org: Organization, file_id: str) -> FileObject:
    return file_object(_live_file(session, org=org, file_id=file_id))


def validation_report(*, session: Session, org: Organization, file_id: str) -> FileValidationReport:
    row = _live_file(session, org=org, file_id=file_id)
    errors = [ValidationLineError(**e) for e in (row.validation_errors or [])]
    return FileValidationReport(
        file_id=row.id,
        status=row.status,
        data_format=row.data_format,
        example_count=row.example_count,
        error_count=row.validation_error_count,
        errors=errors,
    )


def file_content(*, session: Session, storage: Storage, org: Organization, file_id: str) -> Iterator[bytes]:
    row = _live_file(session, org=org, file_id=file_id)
    if row.status == "error":
        raise InvalidRequestError(
            f"File {file_id} failed validation and its content was not kept; see its validation report.",
            param="file_id",
        )
    return storage.iter_chunks(row.storage_key)


def delete_file(*, session: Session, storage: Storage, org: Organization, file_id: str) -> FileDeleted:
    row = _live_file(session, org=org, file_id=file_id)
    row.deleted_at = now_s()
    session.add(row)
    session.commit()
    storage.delete(row.storage_key)
    return FileDeleted(id=file_id)
