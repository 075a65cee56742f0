"""Domain errors. They know nothing of HTTP; `api/errors.py` maps each class to a status code."""

from __future__ import annotations


class FtserveError(Exception):
    """Base class. `type` and `code` follow OpenAI's error envelope."""

    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequestError(FtserveError):
    """The request is malformed or names something impossible (400)."""


class AuthenticationError(FtserveError):
    """Missing or unknown API key (401)."""

    code = "invalid_api_key"


class NotFoundError(FtserveError):
    """No such object for this organization (404). Another org's object is also 'not found'."""

    code = "not_found"


class ConflictError(FtserveError):
    """The object is in a state that forbids the operation (400, so the SDK does not retry it)."""

    code = "invalid_state"


class IdempotencyKeyReusedError(FtserveError):
    """An Idempotency-Key already names a request with a different body (422, final: a retry with the same
    key and body gets the same answer)."""

    code = "idempotency_key_reused"


class PayloadTooLargeError(FtserveError):
    """The request body or upload is over a configured limit (413)."""

    code = "payload_too_large"


class RateLimitError(FtserveError):
    """Too many requests (429). OpenAI names the limited quantity as the type: "requests" per minute here."""

    type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int = 1, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s


class QuotaExceededError(FtserveError):
    """An organization holds as many files, bytes or unfinished jobs as it may (429, not retried: waiting
    does not help until something is deleted or finishes)."""

    type = "insufficient_quota"
    code = "quota_exceeded"


class PermissionDeniedError(FtserveError):
    """The API key is valid but its scopes do not allow this route (403)."""

    code = "insufficient_permissions"


class InsufficientQuotaError(QuotaExceededError):
    """An organization's monthly budget, or a key's monthly inference tokens, is spent (429, not retried:
    it frees up when the month ends or an operator raises the budget)."""

    code = "insufficient_quota"


class ServiceUnavailableError(FtserveError):
    """A dependency (database, redis, storage, vLLM) is down (503)."""

    type = "server_error"
    code = "service_unavailable"
