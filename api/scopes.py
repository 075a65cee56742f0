"""Which scope each route needs (core/keys.py: admin, fine_tune, inference; admin includes the others).

- /v1/organization/*: admin (keys, usage, audit log).
- /v1/chat/completions, /v1/completions: inference.
- GET /v1/models and /v1/models/{id}: any scope (both kinds of key need to see what they can use).
- Everything else under /v1 (files, jobs, estimates, webhooks, deleting models): fine_tune.
"""

from __future__ import annotations

from fastapi import Request

from core.errors import PermissionDeniedError
from core.keys import ADMIN, FINE_TUNE, INFERENCE, has_scope
from core.models import ApiKey

INFERENCE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


def required_scope(path: str, method: str) -> str | None:
    """The scope a route template needs; None: any valid key."""
    if path == "/v1/organization" or path.startswith("/v1/organization/"):
        return ADMIN
    if path in INFERENCE_PATHS:
        return INFERENCE
    if path.startswith("/v1/models") and method in ("GET", "HEAD"):
        return None
    return FINE_TUNE


def check_scope(key: ApiKey, path: str, method: str) -> None:
    scope = required_scope(path, method)
    if scope is None or has_scope(key, scope):
        return
    held = ", ".join(key.scopes or []) or "none"
    raise PermissionDeniedError(
        f"This API key's scopes ({held}) do not allow {method} {path}: it needs the '{scope}' scope. Use another "
        "key, or have an org admin create one with that scope (POST /v1/organization/api_keys).",
        param=None,
    )


def check_request_scope(request: Request, key: ApiKey) -> None:
    """By the matched route's template (not the raw path), so a path parameter cannot change the answer."""
    route = request.scope.get("route")
    path = getattr(route, "path", None) or request.url.path
    check_scope(key, path, request.method)
