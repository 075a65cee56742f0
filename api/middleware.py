"""Pure-ASGI middleware: an `x-request-id` on every response, and a last-resort 500 in OpenAI's envelope.

It sits inside Starlette's ServerErrorMiddleware, so it catches what the route handlers did not and still
stamps the request id on the reply.
"""

from __future__ import annotations

import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
            body = json.dumps(
                {
                    "error": {
                        "message": f"The server had an error processing your request (request id {rid}).",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
            ).encode()
            await send_with_id(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
