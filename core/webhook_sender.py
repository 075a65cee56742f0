"""One signed webhook POST, SSRF-safe: resolve and check the host (core.netguard), connect to the checked
address with the original Host header and TLS name, follow no redirects, read at most a small part of the
answer, and stop at a whole-request deadline. Used by the scheduler's dispatcher and the API's test call.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from dataclasses import dataclass

import httpx

from core import netguard

USER_AGENT = "ftserve-webhooks/0.1"
MAX_RESPONSE_READ = 1024  # bytes read from a receiver's answer; the rest is never read
RESPONSE_EXCERPT_CHARS = 256  # characters of it kept in the attempt log
MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class SendResult:
    status_code: int | None  # None: no HTTP answer (refused by the guard, DNS, connect, timeout)
    latency_ms: int | None
    error: str | None
    response_excerpt: str | None = None
    retry_after_s: float | None = None
    address: str | None = None  # the vetted IP we connected to

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def make_client(
    *, timeout_s: float, connect_timeout_s: float, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """No redirects (a 3xx is a failure: a redirect could point anywhere), no proxy or netrc from the
    environment, certificates verified against the URL's host name."""
    return httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        transport=transport,
    )


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _excerpt(raw: bytes) -> str | None:
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    text = "".join(c if c.isprintable() or c in "\n\t" else "?" for c in text)
    return text[:RESPONSE_EXCERPT_CHARS]


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


async def post_signed(
    client: httpx.AsyncClient,
    url: str,
    *,
    body: bytes,
    headers: dict[str, str],
    allow_private: bool,
    allow_http: bool,
    timeout_s: float,
    resolver: netguard.Resolver | None = None,
) -> SendResult:
    """POST `body` with `headers` (the webhook-* ones) to `url`. Never raises for network trouble."""
    started = time.monotonic()
    try:
        target = await asyncio.to_thread(
            netguard.resolve_checked,
            url,
            allow_private=allow_private,
            allow_http=allow_http,
            resolver=resolver,
        )
    except netguard.UnsafeURLError as exc:
        return SendResult(None, None, _short(f"Refused: {exc}"))
    parsed = httpx.URL(url)
    request_url = parsed.copy_with(host=target.address, username=None, password=None, fragment=None)
    host_header = f"[{target.host}]" if ":" in target.host else target.host
    if parsed.port is not None:
        host_header += f":{parsed.port}"
    request_headers = {
        **headers,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "accept-encoding": "identity",  # raw bytes only: no decompression of a receiver's answer
        "host": host_header,
    }
    extensions = {"sni_hostname": target.host} if target.scheme == "https" and not target.host_is_ip else {}
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream(
                "POST", request_url, content=body, headers=request_headers, extensions=extensions
            ) as response:
                raw = b""
                async for chunk in response.aiter_raw():
                    raw += chunk
                    if len(raw) >= MAX_RESPONSE_READ:
                        break
                latency_ms = int((time.monotonic() - started) * 1000)
                return SendResult(
                    response.status_code,
                    latency_ms,
                    None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}",
                    _excerpt(raw[:MAX_RESPONSE_READ]),
                    _retry_after(response.headers.get("retry-after"))
                    if response.status_code in (429, 503)
                    else None,
                    target.address,
                )
    except TimeoutError:
        return SendResult(
            None,
            int((time.monotonic() - started) * 1000),
            f"Timed out after {timeout_s:g}s",
            address=target.address,
        )
    except (httpx.HTTPError, OSError, ValueError) as exc:  # ValueError: e.g. a malformed answer or header
        reason = str(exc) or type(exc).__name__
        return SendResult(
            None,
            int((time.monotonic() - started) * 1000),
            _short(f"{type(exc).__name__}: {reason}"),
            address=target.address,
        )
