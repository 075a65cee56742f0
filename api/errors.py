"""One mapper from domain errors (core/errors.py) and framework errors to OpenAI's error envelope."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from core import errors

logger = logging.getLogger("ftserve.api")

STATUS_BY_ERROR: list[tuple[type[errors.FtserveError], int]] = [
    (errors.AuthenticationError, 401),
    (errors.PermissionDeniedError, 403),
    (errors.NotFoundError, 404),
    (errors.ConflictError, 400),
    (errors.IdempotencyKeyReusedError, 422),
    (errors.PayloadTooLargeError, 413),
    (errors.RateLimitError, 429),
    (errors.QuotaExceededError, 429),
    (errors.ServiceUnavailableError, 503),
    (errors.InvalidRequestError, 400),
]


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, object]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def render_error(exc: errors.FtserveError) -> tuple[int, dict[str, str], dict[str, object]]:
    """A domain error as (status, headers, body): the one place an error reply is made, for the exception
    handlers below and for the pure-ASGI middlewares that answer before (or outside) FastAPI's routing."""
    status = status_for(exc)
    headers = {}
    if isinstance(exc, errors.RateLimitError):
        headers["retry-after"] = str(exc.retry_after_s)
    if status in (400, 422) or isinstance(exc, errors.QuotaExceededError):
        # Final until the caller changes something; tell the SDK not to retry them.
        headers["x-should-retry"] = "false"
    body = error_body(exc.message, exc.type, exc.param, exc.code)
    extra = getattr(exc, "extra", None)
    if extra:
        body["error"].update(extra)  # type: ignore[attr-defined]
    return status, headers, body


SERVER_ERROR_MESSAGE = "The server had an error processing your request"


def server_error_body(request_id: str | None = None) -> dict[str, object]:
    """The 500 body: nothing about the failure itself, which goes to the log under the request id."""
    where = f" (request id {request_id})" if request_id else ""
    return error_body(f"{SERVER_ERROR_MESSAGE}{where}.", "server_error")


async def send_error(
    send: Send, status: int, body: dict[str, object], headers: Iterable[tuple[str, str]] = ()
) -> None:
    """Answer from a pure-ASGI middleware with an error envelope."""
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def status_for(exc: errors.FtserveError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 400


def _loc_to_param(loc: tuple[object, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    if not parts:
        return None
    out = parts[0]
    for part in parts[1:]:
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.FtserveError)
    async def _domain(request: Request, exc: errors.FtserveError) -> JSONResponse:
        status, headers, body = render_error(exc)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = _loc_to_param(tuple(first.get("loc", ())))
        reason = first.get("msg", "invalid request")
        message = f"Invalid value for '{param}': {reason}" if param else f"Invalid request: {reason}"
        return JSONResponse(
            error_body(message, "invalid_request_error", param, "invalid_value"),
            status_code=400,
            headers={"x-should-retry": "false"},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Unknown route: {request.method} {request.url.path}"
            code = "unknown_url"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
            code = "method_not_allowed"
        else:
            message = str(exc.detail)
            code = None
        return JSONResponse(
            error_body(message, "invalid_request_error", None, code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(server_error_body(), status_code=500)
