"""Pure-ASGI middleware: the per-API-key rate limit on /v1, with OpenAI's `x-ratelimit-*` headers.

It runs before authentication, keyed by a hash of the bearer token, so unknown keys are limited too (a
brute-force guesser gets 429s, not a free oracle). Requests without a token are left to authentication.
"""

from __future__ import annotations

import hashlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import render_error, send_error
from core.errors import RateLimitError
from core.ratelimit import Decision, RateLimiter


def _duration(seconds: float) -> str:
    """OpenAI's reset format: '20ms', '1s', '6m0s'."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-ratelimit-limit-requests", str(decision.limit).encode()),
        (b"x-ratelimit-remaining-requests", str(decision.remaining).encode()),
        (b"x-ratelimit-reset-requests", _duration(decision.reset_s).encode()),
    ]


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() or None if scheme.lower() == "bearer" else None
    return None


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, *, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.limiter.enabled or not scope["path"].startswith("/v1"):
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        if token is None:
            await self.app(scope, receive, send)
            return
        decision = await self.limiter.check(hashlib.sha256(token.encode()).hexdigest()[:32])
        if decision is None:  # limits off, or Redis unreachable (fail open)
            await self.app(scope, receive, send)
            return
        if not decision.allowed:
            status, headers, body = render_error(
                RateLimitError(
                    f"Rate limit reached for this API key: {decision.limit} requests per minute. "
                    f"Retry in {decision.retry_after_s} s.",
                    retry_after_s=decision.retry_after_s,
                )
            )
            limits = [(name.decode(), value.decode()) for name, value in _headers(decision)]
            await send_error(send, status, body, [*headers.items(), *limits])
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_headers(decision)]
            await send(message)

        await self.app(scope, receive, send_with_headers)
