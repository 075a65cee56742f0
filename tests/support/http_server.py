"""An ASGI app served over real HTTP by uvicorn in a thread of the test process: the API for SDK, CLI and browser
tests that need no `ftserve up`, and a stand-in vLLM that answers chats with a `usage` like vLLM's."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from core.redis_embedded import free_port


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve `app` on a free loopback port; yields its root URL (http://127.0.0.1:PORT)."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def usage_of(body: dict[str, Any]) -> dict[str, int]:
    """The stand-in's token counts: one prompt token per word, `max_tokens` (default 5) completion tokens."""
    words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    prompt = words or len(str(body.get("prompt", "")).split())
    completion = int(body.get("max_tokens") or 5) * int(body.get("n") or 1)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def fake_vllm() -> Any:
    """/v1/chat/completions as vLLM answers it: a body with `usage`, or SSE chunks that end, when
    `stream_options.include_usage` is set, with a usage-only chunk (no choices) before `[DONE]`."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def chat(request: Request) -> Response:
        body = await request.json()
        usage = usage_of(body)
        base = {"id": "chatcmpl-x", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "ok " * usage["completion_tokens"]}
            choice = {"index": 0, "message": message, "finish_reason": "length"}
            return JSONResponse({**base, "object": "chat.completion", "choices": [choice], "usage": usage})

        async def events() -> AsyncIterator[bytes]:
            for _ in range(usage["completion_tokens"]):
                chunk = {**base, "object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": {"content": "ok "}, "finish_reason": None}]}  # fmt: skip
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            if (body.get("stream_options") or {}).get("include_usage"):
                final = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                yield b"data: " + json.dumps(final).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@contextmanager
def api_server(settings: Any) -> Iterator[str]:
    """ftserve's API on `settings` over real HTTP; yields its /v1 base URL."""
    from api.main import create_app

    with serve(create_app(settings)) as root:
        yield f"{root}/v1"
