"""/v1/files: OpenAI's Files API for fine-tuning uploads."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from api.deps import CurrentOrg, EngineDep, IdempotencyKeyHeader, SessionDep, SettingsDep, StorageDep
from api.protocol import CursorListResponse, ErrorResponse, FileDeleted, FileObject, FileValidationReport
from api.services import audit
from api.services import files as service
from api.services.idempotency import REPLAYED_HEADER

router = APIRouter(
    prefix="/v1/files",
    tags=["files"],
    responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": ["fine-tune"]},
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    response_model=FileObject,
    openapi_extra=UPLOAD_BODY,
    responses={
        413: {"model": ErrorResponse},
        422: {
            "model": ErrorResponse,
            "description": "Idempotency-Key reused with another purpose or content",
        },
    },
    summary="Upload a JSONL training file; it is validated line by line as it streams in.",
)
async def create_file(
    request: Request,
    org: CurrentOrg,
    engine: EngineDep,
    storage: StorageDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> FileObject:
    file, replayed = await service.create_file(
        request=request,
        engine=engine,
        storage=storage,
        settings=settings,
        org=org,
        idempotency_key=idempotency_key,
    )
    if replayed:
        response.headers[REPLAYED_HEADER] = "true"
    else:
        audit.record(
            request, engine, type="file.created", object_id=file.id, data={"filename": file.filename}
        )
    return file


@router.get("", response_model=CursorListResponse[FileObject])
def list_files(
    org: CurrentOrg,
    session: SessionDep,
    purpose: str | None = None,
    after: str | None = None,
    limit: int = Query(10_000, ge=1, le=10_000),
    order: Literal["asc", "desc"] = "desc",
) -> CursorListResponse[FileObject]:
    return service.list_files(
        session=session, org=org, purpose=purpose, after=after, limit=limit, order=order
    )


@router.get("/{file_id}", response_model=FileObject)
def retrieve_file(file_id: str, org: CurrentOrg, session: SessionDep) -> FileObject:
    return service.retrieve_file(session=session, org=org, file_id=file_id)


@router.get("/{file_id}/validation", response_model=FileValidationReport)
def file_validation_report(
    file_id: str,
    org: CurrentOrg,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    model: str | None = Query(
        None, description="A base model: the report then counts the file's tokens with its tokenizer."
    ),
    max_seq_length: int | None = Query(
        None, ge=1, description="With model: count the examples longer than this (default: its context)."
    ),
) -> FileValidationReport:
    """Extension: every validation error found in the upload (the first 100), with line numbers; with `model`,
    also the file's tokens as a job on that model would tokenise them."""
    return service.validation_report(
        session=session,
        org=org,
        file_id=file_id,
        settings=settings,
        storage=storage,
        model=model,
        max_seq_length=max_seq_length,
    )


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    },
)
def file_content(
    file_id: str, org: CurrentOrg, session: SessionDep, storage: StorageDep
) -> StreamingResponse:
    chunks = service.file_content(session=session, storage=storage, org=org, file_id=file_id)
    return StreamingResponse(iterate_in_threadpool(chunks), media_type="application/octet-stream")


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(
    file_id: str, request: Request, org: CurrentOrg, session: SessionDep, storage: StorageDep
) -> FileDeleted:
    deleted = service.delete_file(session=session, storage=storage, org=org, file_id=file_id)
    audit.record(request, session, type="file.deleted", object_id=file_id)
    return deleted
