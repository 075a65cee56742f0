"""POST /v1/chat/completions and /v1/completions: OpenAI's inference routes, served by vLLM through the
proxy in api/services/inference.py. vLLM's own admin routes (load/unload adapters, ...) are never exposed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.protocol import ChatCompletionCreate, CompletionCreate, ErrorResponse
from api.services.inference import Kind, get_inference
from core.errors import PayloadTooLargeError

router = APIRouter(
    prefix="/v1",
    tags=["inference"],
    responses={
        400: {"model": ErrorResponse},
        401: {"model": ErrorResponse},
        404: {"model": ErrorResponse},
        413: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
)


def _body_schema(model: type[Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": model.model_json_schema(ref_template="#/components/schemas/{model}")
                }
            },
        }
    }


async def _read_body(request: Request, kind: Kind, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    param = "messages" if kind == "chat" else "prompt"
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"The request body is {declared} bytes; the limit is {limit}.", param=param
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"The request body is over the limit of {limit} bytes.", param=param)
        chunks.append(chunk)
    return b"".join(chunks)


async def _handle(kind: Kind, request: Request) -> Response:
    # No FastAPI dependencies on this hot path: each sync one costs a thread-pool hop. The service
    # authenticates (with a 1 s cache) and reads its settings itself.
    service = get_inference(request)
    org = await service.authenticate(request)
    body = await _read_body(request, kind, service.settings.inference_max_request_bytes)
    request_id = getattr(request.state, "request_id", None)
    return await service.handle(kind, org, body, request_id, getattr(request.state, "api_key", None))


@router.post("/chat/completions", openapi_extra=_body_schema(ChatCompletionCreate), response_class=Response)
async def create_chat_completion(request: Request) -> Response:
    """Chat with a base model or a fine-tuned `ft:` model (streaming with `stream: true`)."""
    return await _handle("chat", request)


@router.post("/completions", openapi_extra=_body_schema(CompletionCreate), response_class=Response)
async def create_completion(request: Request) -> Response:
    """Complete a prompt with a base model or a fine-tuned `ft:` model (streaming with `stream: true`)."""
    return await _handle("completions", request)
