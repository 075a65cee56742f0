"""The API's Prometheus side: `HttpMetricsMiddleware` counts and times every request by route template, and
`metrics_endpoint` serves the default registry at /metrics.

A request is labelled with the template of the route that matched it (`/v1/fine_tuning/jobs/{fine_tuning_job_id}`),
never its raw path, so the series stay few; requests no route matched share the label `unmatched`. The
duration runs until the response has been sent in full, so a streamed chat completion counts its whole
stream, not only the time to its first byte.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.metrics import HTTP_REQUEST_DURATION, HTTP_REQUESTS, UNMATCHED_ROUTE

# Any other method a client sends is counted as "other": the label must not grow with what clients invent.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(scope: Scope) -> str:
    """The matched route's path template (FastAPI puts the route in the scope while routing)."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class HttpMetricsMiddleware:
    """Pure ASGI, so it neither buffers nor delays streamed bodies. Add it last: it then sits outermost and
    also sees the responses that other middleware answer on their own (429s, last-resort 500s)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what a client sees if the app fails before it starts a response

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "other"
            route = route_template(scope)
            HTTP_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
            HTTP_REQUEST_DURATION.labels(method=method, route=route).observe(time.perf_counter() - started)


async def metrics_endpoint() -> Response:
    """GET /metrics: this process's series in Prometheus' text format."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
