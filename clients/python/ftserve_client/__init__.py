"""ftserve_client: a typed Python client for ftserve, shaped like openai-python.

from ftserve_client import Client
client = Client()  # FTSERVE_API_KEY, FTSERVE_BASE_URL
"""

from . import types
from ._base_client import NOT_GIVEN, NotGiven
from ._client import AsyncClient, Client
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    FtserveError,
    InternalServerError,
    InvalidWebhookSignatureError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
)
from ._streaming import AsyncStream, Stream
from ._version import __version__
from .pagination import AsyncCursorPage, AsyncPaginator, SyncCursorPage
from .resources.fine_tuning.exports import ExportFailedError

__all__ = [
    "types",
    "__version__",
    "Client",
    "AsyncClient",
    "NOT_GIVEN",
    "NotGiven",
    "Stream",
    "AsyncStream",
    "SyncCursorPage",
    "AsyncCursorPage",
    "AsyncPaginator",
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
    "ExportFailedError",
]
