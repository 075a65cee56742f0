"""Pure-ASGI middleware: an `x-request-id` on every response, and a last-resort 500 in OpenAI's envelope.

It sits inside Starlette's ServerErrorMiddleware, so it catches what the route handlers did not and still
stamps the request id on the reply.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import send_error, server_error_body
from core.ids import request_id

logger = logging.getLogger("ftserve.api")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id()
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error (request %s) on %s %s", rid, scope["method"], scope["path"])
            if started:
                raise
            await send_error(send_with_id, 500, server_error_body(rid))
