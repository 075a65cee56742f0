"""Files: upload with streaming validation, list, retrieve, content, delete. Keyword-only functions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Literal

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from api.protocol import (
    CursorListResponse,
    FileDeleted,
    FileObject,
    FileTokenCounts,
    FileValidationReport,
    ValidationLineError,
    ValidationWarning,
    file_object,
)
from api.services.idempotency import check_idempotency_key, key_expired, key_holder, key_reused, release_key
from api.services.pagination import paginate
from api.services.uploads import UploadResult, check_purpose, receive_upload
from core import ids
from core.db import session_scope
from core.errors import (
    IdempotencyKeyReusedError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    QuotaExceededError,
)
from core.model_registry import load_registry
from core.models import File, Organization, now_s
from core.settings import Settings
from core.storage import Storage
from core.token_counts import (
    TokenizerUnavailableError,
    TrainingDataError,
    count_stored_file,
)

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


def _past_storage_quota(settings: Settings, *, left: int) -> QuotaExceededError:
    return QuotaExceededError(
        f"This upload would take the organization past its storage quota of "
        f"{settings.org_max_storage_bytes:,} bytes ({left:,} left). Delete files to make room.",
        param="file",
    )


def _key_free(holder: File) -> bool:
    """A file gives its Idempotency-Key up once GET would no longer show it (deleted, expired) or after 24 h."""
    gone = holder.deleted_at is not None or (holder.expires_at is not None and holder.expires_at <= now_s())
    return gone or key_expired(holder.created_at)


def _live_holder(*, engine: Engine, org: Organization, key: str | None) -> File | None:
    """The file that this organization's key names now, if any."""
    if key is None:
        return None
    with Session(engine) as session:
        holder = key_holder(session, File, organization_id=org.id, key=key)
    return None if holder is None or _key_free(holder) else holder


def _reused(holder: File) -> IdempotencyKeyReusedError:
    return key_reused(kind="file", object_id=holder.id, request="purpose or file content", original="upload")


def _replay(holder: File, *, purpose: str, sha256: str) -> FileObject:
    """The file of this key, if this upload is the same one (purpose and bytes), as GET shows it now."""
    if holder.purpose != purpose or holder.sha256 != sha256:
        raise _reused(holder)
    return file_object(holder)


async def create_file(
    *,
    request: Request,
    engine: Engine,
    storage: Storage,
    settings: Settings,
    org: Organization,
    idempotency_key: str | None = None,
) -> tuple[FileObject, bool]:
    """Upload a file; returns it and whether it is a replay.

    With an Idempotency-Key, the same key, purpose and bytes (their SHA-256, computed as they stream in)
    within 24 h return the file that the first upload created, as GET shows it now, and keep nothing of this
    one: its bytes go to a temporary object that is dropped, never published. Another purpose or other bytes
    under the key are a 422. A key that names a live file skips the quota checks, so the retry of the upload
    that filled the quota still gets its file. Only a processed file records its key: after a refused upload
    (400, 413, 429) the same key can be sent again, and a deleted or expired file gives its key up."""
    key = check_idempotency_key(idempotency_key)
    held = await run_in_threadpool(_live_holder, engine=engine, org=org, key=key)
    storage_left: int | None = None  # None: not checked, because the key names a file
    if held is None:
        storage_left = await run_in_threadpool(_check_file_quotas, engine=engine, settings=settings, org=org)

    def purpose_check(purpose: str | None) -> None:
        # A key reused with another purpose is a 422 even where that purpose alone would be a 400, as for jobs.
        if held is not None and purpose is not None and purpose != held.purpose:
            raise _reused(held)
        check_purpose(purpose)

    file_id = ids.file_id()
    storage_key = f"files/{file_id}"
    max_bytes = (
        settings.max_upload_bytes if storage_left is None else min(settings.max_upload_bytes, storage_left)
    )
    try:
        result = await receive_upload(
            request=request,
            storage=storage,
            key=storage_key,
            max_bytes=max_bytes,
            max_line_bytes=settings.max_line_bytes,
            min_examples=settings.min_examples,
            purpose_check=purpose_check,
        )
    except PayloadTooLargeError:
        if storage_left is None or storage_left >= settings.max_upload_bytes:
            raise
        raise _past_storage_quota(settings, left=storage_left) from None
    purpose = result.fields.get("purpose")
    try:
        if purpose is None:
            raise InvalidRequestError("Missing required form field 'purpose'.", param="purpose")
        purpose_check(purpose)
        expires_at = _expires_at(result.fields)
    except BaseException:
        if result.writer is not None:
            result.writer.abort()
        raise
    # From here _keep owns the temporary object; in a thread, so the DB and storage calls never block the loop.
    return await run_in_threadpool(
        _keep,
        engine=engine,
        storage=storage,
        settings=settings,
        org=org,
        key=key,
        quota_checked=storage_left is not None,
        file_id=file_id,
        storage_key=storage_key,
        result=result,
        purpose=purpose,
        expires_at=expires_at,
    )


def _keep(
    *,
    engine: Engine,
    storage: Storage,
    settings: Settings,
    org: Organization,
    key: str | None,
    quota_checked: bool,
    file_id: str,
    storage_key: str,
    result: UploadResult,
    purpose: str,
    expires_at: int | None,
) -> tuple[FileObject, bool]:
    """Publish the upload and add its row, or answer the key's file and drop the upload."""
    report = result.report
    assert report is not None
    writer = result.writer
    published = False
    holder: File | None = None
    try:
        if key is not None:
            # Looked up again: the key may have been taken (or freed) while the bytes streamed in.
            with Session(engine) as session:
                holder = key_holder(session, File, organization_id=org.id, key=key)
            if holder is not None and not _key_free(holder):
                return _replay(holder, purpose=purpose, sha256=result.sha256), True
        if not quota_checked:
            # The key's file went away during the upload, so this one is new after all: check it now.
            left = _check_file_quotas(engine=engine, settings=settings, org=org)
            if result.bytes > left:
                raise _past_storage_quota(settings, left=left)
        if writer is not None:
            writer.commit()
            published = True
    finally:
        if writer is not None and not published:
            writer.abort()

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
        data_layout=report.layout,
        example_count=report.example_count,
        longest_example_bytes=report.longest_example_bytes or None,
        validation_errors=[e.to_dict() for e in report.errors],
        validation_error_count=report.error_count,
        validation_warnings=[w.to_dict() for w in report.warnings],
        storage_key=storage_key,
        sha256=result.sha256,
        idempotency_key=key if report.ok else None,
    )
    try:
        with session_scope(engine) as session:
            if holder is not None and key is not None and row.idempotency_key is not None:
                # The key's old file is deleted, expired or past 24 h: it gives the key up to this one.
                release_key(session, File, holder=holder, key=key)
            session.add(row)
    except IntegrityError:
        # No row, no object: never leave bytes that nothing lists.
        storage.delete(storage_key)
        if key is None or row.idempotency_key is None:
            raise
        # A concurrent upload with the same key kept its file first (the unique index on organization +
        # key): answer as a replay of that one.
        with Session(engine) as session:
            winner = key_holder(session, File, organization_id=org.id, key=key)
        if winner is None or _key_free(winner):
            raise
        return _replay(winner, purpose=purpose, sha256=result.sha256), True
    except BaseException:
        storage.delete(storage_key)
        raise
    if not report.ok:
        more = f" {report.error_count} errors in total." if report.error_count > 1 else ""
        raise FileValidationError(
            f"Invalid training file: {report.summary()}.{more} Full report: GET /v1/files/{file_id}/validation",
            file_id=file_id,
        )
    return file_object(row), False


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


def validation_report(
    *,
    session: Session,
    org: Organization,
    file_id: str,
    settings: Settings | None = None,
    storage: Storage | None = None,
    model: str | None = None,
    max_seq_length: int | None = None,
) -> FileValidationReport:
    """The stored report; with `model` (a registered base model), also the file's tokens for that model, counted
    against `max_seq_length` (default: the model's context length). Counting reads the whole file, so `settings`
    and `storage` are needed then."""
    if model is None and max_seq_length is not None:
        raise InvalidRequestError(
            "max_seq_length needs model: tokens are counted with a base model's tokenizer.",
            param="max_seq_length",
        )
    row = _live_file(session, org=org, file_id=file_id)
    errors = [ValidationLineError(**e) for e in (row.validation_errors or [])]
    tokens = None
    if model is not None:
        assert settings is not None and storage is not None
        tokens = _token_counts(
            row, settings=settings, storage=storage, model=model, max_seq_length=max_seq_length
        )
    return FileValidationReport(
        file_id=row.id,
        status=row.status,
        data_format=row.data_format,
        example_count=row.example_count,
        longest_example_bytes=row.longest_example_bytes,
        error_count=row.validation_error_count,
        errors=errors,
        layout=row.data_layout,
        warnings=[ValidationWarning(**w) for w in (row.validation_warnings or [])],
        tokens=tokens,
    )


def _token_counts(
    row: File, *, settings: Settings, storage: Storage, model: str, max_seq_length: int | None
) -> FileTokenCounts | None:
    """The file's tokens with `model`'s tokenizer and chat template (the registry's custom one, if it has one),
    as the worker will tokenise them. None for a file that failed validation: its content is not kept."""
    base = load_registry(settings).get(model)
    if base is None:
        known = ", ".join(sorted(load_registry(settings))) or "none registered"
        raise InvalidRequestError(
            f"The model '{model}' does not exist (base models: {known}).",
            param="model",
            code="model_not_found",
        )
    if row.status != "processed" or not row.data_format:
        return None
    limit = max_seq_length if max_seq_length is not None else base.context_length()
    try:
        counts = count_stored_file(storage, row.storage_key, row.data_format, base, max_seq_length=limit)
    except TokenizerUnavailableError as e:
        raise InvalidRequestError(
            f"Cannot count tokens with the model '{model}': {e}", param="model", code="tokenizer_unavailable"
        ) from e
    except TrainingDataError as e:
        raise InvalidRequestError(
            f"The file {row.id} cannot be tokenised for the model '{model}' (a job would fail the same way): {e}",
            param="file_id",
            code="untokenizable_file",
        ) from e
    return FileTokenCounts(model=model, **counts.as_dict())


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
