"""/healthz, /readyz and /metrics for the processes that have no HTTP API of their own (scheduler, worker).

`HealthServer` is a small HTTP/1.1 server on the process's own asyncio loop (`asyncio.start_server`): no
thread, no second framework, nothing that touches the process's signal handlers. Each request gets one
response and the connection is closed, which is all that probes and Prometheus need.

- /healthz (liveness): 200 while the process's main loop has beaten recently (`Liveness.beat()`: the
  scheduler's tick, the worker's heartbeat), 503 once it has stalled. A loop that is blocked outright does
  not answer at all, which a probe counts as a failure too.
- /readyz (readiness): runs the process's checks (`database`, `redis`) at once, each with a time limit; 503
  with {"status": "not ready", "failed": [...]} when any fails.
- /metrics: the default Prometheus registry in the text format.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.engine import Engine

import core.metrics  # noqa: F401 (registers every ftserve series, so any scrape lists them all)

log = logging.getLogger("ftserve.health")

ReadinessCheck = Callable[[], Awaitable[object]]  # raises (or times out) when the dependency is not there

REQUEST_TIMEOUT_S = 5.0  # a client that sends no complete request head in this time is dropped
MAX_HEAD_BYTES = 8192


class Liveness:
    """When the process's main loop last completed a round; stale after `stale_after_s` without one."""

    def __init__(self, what: str, *, stale_after_s: float) -> None:
        self.what = what
        self.stale_after_s = stale_after_s
        self.last_beat = time.monotonic()  # starting up counts as alive

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def problem(self) -> str | None:
        """None while alive, else why not."""
        silent_s = time.monotonic() - self.last_beat
        if silent_s <= self.stale_after_s:
            return None
        return f"the {self.what} has not run for {silent_s:.0f}s (limit {self.stale_after_s:.0f}s)"


def database_check(engine: Engine) -> ReadinessCheck:
    """SELECT 1, in a thread (the driver blocks)."""

    def select_one() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    async def check() -> None:
        await asyncio.to_thread(select_one)

    return check


def redis_check(redis: Any) -> ReadinessCheck:
    """PING on an asyncio Redis client (arq's pool is one)."""

    async def check() -> None:
        await redis.ping()

    return check


class HealthServer:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        liveness: Liveness,
        checks: Mapping[str, ReadinessCheck],
        check_timeout_s: float = 3.0,
    ) -> None:
        self.host = host
        self.port = port  # 0: any free port; `port` holds the real one once started
        self.liveness = liveness
        self.checks = dict(checks)
        self.check_timeout_s = check_timeout_s
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> HealthServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("health and metrics on http://%s:%d (/healthz, /readyz, /metrics)", self.host, self.port)
        return self

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):  # a scrape in flight must not hold up shutdown
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), timeout=2.0)
        self._server = None

    async def __aenter__(self) -> HealthServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the endpoints -------------------------------------------------------------------------------------

    async def readiness(self) -> tuple[int, dict[str, Any]]:
        async def run(name: str, check: ReadinessCheck) -> str | None:
            try:
                await asyncio.wait_for(check(), timeout=self.check_timeout_s)
            except Exception as exc:  # noqa: BLE001 (any failure means: not ready, and why)
                log.warning("readiness check %s failed: %s", name, exc or type(exc).__name__)
                return name
            return None

        results = await asyncio.gather(*(run(name, check) for name, check in self.checks.items()))
        failed = [name for name in results if name is not None]
        if failed:
            return 503, {"status": "not ready", "failed": failed}
        return 200, {"status": "ready"}

    async def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for one request."""
        if path not in ("/healthz", "/readyz", "/metrics"):
            return _json(404, {"error": "not found"})
        if method not in ("GET", "HEAD"):
            return _json(405, {"error": "method not allowed"})
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest()
        if path == "/readyz":
            return _json(*await self.readiness())
        problem = self.liveness.problem()
        return (
            _json(503, {"status": "stalled", "reason": problem}) if problem else _json(200, {"status": "ok"})
        )

    # -- HTTP ----------------------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._handle(reader, writer)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away or sent no proper request: nothing to answer
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=REQUEST_TIMEOUT_S)
        if len(head) > MAX_HEAD_BYTES:
            return
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            status, content_type, body = _json(400, {"error": "bad request"})
            method = "GET"
        else:
            method, target = parts[0], parts[1]
            status, content_type, body = await self.respond(method, target.split("?", 1)[0])
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}.get(
            status, "Service Unavailable"
        )
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        )
        if method != "HEAD":
            writer.write(body)
        await writer.drain()


def _json(status: int, body: dict[str, Any]) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(body).encode()
