"""A real HTTP webhook receiver on loopback, for delivery tests: records every request (headers, exact body
bytes) and answers from a script of status codes (the last one repeats). Can hold a request open
(`hold`) to simulate a slow or hung receiver, and counts TCP connections (an SSRF canary must see 0)."""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)


class WebhookReceiver:
    def __init__(
        self,
        statuses: list[int] | None = None,
        *,
        delay_s: float = 0.0,
        hold: threading.Event | None = None,
        extra_headers: dict[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.statuses = list(statuses or [200])
        self.delay_s = delay_s
        self.hold = hold  # while set is pending, requests wait (then answer)
        self.extra_headers = extra_headers or {}
        self.received: list[Received] = []
        self.connections = 0
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                with receiver.arrived:
                    receiver.connections += 1
                super().setup()

            def do_POST(self) -> None:  # http.server's naming
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                item = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with receiver.arrived:
                    index = len(receiver.received)
                    receiver.received.append(item)
                    receiver.arrived.notify_all()
                if receiver.hold is not None:
                    receiver.hold.wait(60)
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                status = receiver.statuses[min(index, len(receiver.statuses) - 1)]
                payload = b'{"ok": true}' if 200 <= status < 300 else b"receiver says no " * 200
                try:
                    self.send_response(status)
                    for name, value in receiver.extra_headers.items():
                        self.send_header(name, value)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the sender gave up (timeout) or died

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.sni: list[str | None] = []  # the TLS server names clients asked for
        if tls is not None:

            def _sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
                self.sni.append(name)

            tls.sni_callback = _sni  # type: ignore[assignment]
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/hooks"

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, n: int, timeout_s: float = 30.0) -> list[Received]:
        """Block until at least `n` requests arrived; returns them all."""
        deadline = time.monotonic() + timeout_s
        with self.arrived:
            while len(self.received) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"receiver got {len(self.received)} requests, expected {n}")
                self.arrived.wait(left)
            return list(self.received)

    async def until(self, n: int, timeout_s: float = 30.0) -> list[Received]:
        """`wait_for` for async tests: the event loop (and a dispatcher on it) keeps running meanwhile."""
        import asyncio

        return await asyncio.to_thread(self.wait_for, n, timeout_s)

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
