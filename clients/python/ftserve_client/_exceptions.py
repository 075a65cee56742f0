"""The exception tree, shaped like openai-python's: one class per HTTP status, the error envelope parsed."""

from __future__ import annotations

from typing import Any, Literal

import httpx

__all__ = [
    "FtserveError",
    "APIError",
    "APIStatusError",
    "APIConnectionError",
    "APITimeoutError",
    "APIResponseValidationError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "ConflictError",
    "PayloadTooLargeError",
    "UnprocessableEntityError",
    "RateLimitError",
    "InternalServerError",
    "InvalidWebhookSignatureError",
]


class FtserveError(Exception):
    """Base class of every error this SDK raises."""


class APIError(FtserveError):
    """An error tied to a request. `code`, `param` and `type` come from OpenAI's envelope
    `{"error": {"message", "type", "param", "code"}}` when the server sent one."""

    message: str
    request: httpx.Request
    body: object | None
    """The decoded `error` object of the envelope, the whole JSON body, the raw text, or None."""
    code: str | None
    param: str | None
    type: str | None

    def __init__(self, message: str, request: httpx.Request, *, body: object | None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request
        self.body = body
        if isinstance(body, dict):
            code, param, type_ = body.get("code"), body.get("param"), body.get("type")
            self.code = str(code) if code is not None else None
            self.param = str(param) if param is not None else None
            self.type = str(type_) if type_ is not None else None
        else:
            self.code = self.param = self.type = None


class APIResponseValidationError(APIError):
    """The server answered 2xx, but the body does not match the expected model."""

    response: httpx.Response
    status_code: int

    def __init__(self, response: httpx.Response, body: object | None, *, message: str | None = None) -> None:
        super().__init__(
            message or "Data returned by the API does not match the expected schema.",
            response.request,
            body=body,
        )
        self.response = response
        self.status_code = response.status_code


class APIStatusError(APIError):
    """The server answered 4xx or 5xx."""

    response: httpx.Response
    status_code: int
    request_id: str | None

    def __init__(self, message: str, *, response: httpx.Response, body: object | None) -> None:
        super().__init__(message, response.request, body=body)
        self.response = response
        self.status_code = response.status_code
        self.request_id = response.headers.get("x-request-id")

    @property
    def file_id(self) -> str | None:
        """ftserve extension: a rejected upload names its file, whose full validation report
        `client.files.validation_report(file_id)` returns."""
        value = self.body.get("file_id") if isinstance(self.body, dict) else None
        return str(value) if value is not None else None


class APIConnectionError(APIError):
    def __init__(self, *, message: str = "Connection error.", request: httpx.Request) -> None:
        super().__init__(message, request, body=None)


class APITimeoutError(APIConnectionError):
    def __init__(self, request: httpx.Request) -> None:
        super().__init__(message="Request timed out.", request=request)


class BadRequestError(APIStatusError):
    status_code: Literal[400] = 400


class AuthenticationError(APIStatusError):
    status_code: Literal[401] = 401


class PermissionDeniedError(APIStatusError):
    status_code: Literal[403] = 403


class NotFoundError(APIStatusError):
    status_code: Literal[404] = 404


class ConflictError(APIStatusError):
    status_code: Literal[409] = 409


class PayloadTooLargeError(APIStatusError):
    status_code: Literal[413] = 413


class UnprocessableEntityError(APIStatusError):
    status_code: Literal[422] = 422


class RateLimitError(APIStatusError):
    status_code: Literal[429] = 429


class InternalServerError(APIStatusError):
    pass


class InvalidWebhookSignatureError(FtserveError, ValueError):
    """A webhook's signature, timestamp or headers do not verify."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def make_status_error(response: httpx.Response) -> APIStatusError:
    """Build the right subclass from a read 4xx/5xx response, unwrapping `body["error"]`."""
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = response.text or None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    message = ""
    if isinstance(body, dict) and body.get("message"):
        message = str(body["message"])
    elif isinstance(body, str):
        message = body
    message = f"Error code: {response.status_code} - {message or response.reason_phrase}"
    cls = _BY_STATUS.get(response.status_code)
    if cls is None:
        cls = InternalServerError if response.status_code >= 500 else APIStatusError
    return cls(message, response=response, body=body)
