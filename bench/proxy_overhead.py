"""The inference proxy's own cost, without vLLM's: `ftserve api` (real uvicorn, real SQLite, the real Redis
rate limit) in front of a stub upstream that answers every chat completion at once with a canned vLLM body.

bench/inference.py measures the same overhead in front of a real vLLM, where vLLM's busy CPU threads share the
cores with the API, so its figure mixes the proxy's cost with contention. Here the upstream costs ~nothing, so
`added_ms_p50` is the proxy: authentication, validation, routing, the rate limit, normalisation and the extra hop.
The stub stands in for vLLM only to isolate that; it is not a test of vLLM's answers.

    python bench/proxy_overhead.py                 # 400 requests each way, alternated
    python bench/proxy_overhead.py --profile FILE  # also cProfile an in-process app (ASGI, no uvicorn) into FILE

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.redis_embedded import EmbeddedRedis, free_port  # noqa: E402

VLLM_BODY = json.dumps(
    {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "demo-tiny",
     "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop", "stop_reason": None, "token_ids": None,
                  "message": {"role": "assistant", "content": "hello there", "refusal": None, "annotations": None,
                              "audio": None, "function_call": None, "tool_calls": [], "reasoning": None}}],
     "usage": {"prompt_tokens": 5, "total_tokens": 8, "completion_tokens": 3, "prompt_tokens_details": None},
     "service_tier": None, "system_fingerprint": None, "prompt_logprobs": None, "kv_transfer_params": None}
).encode()  # fmt: skip
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(VLLM_BODY),
    VLLM_BODY,
)
REQUEST = {"model": "demo-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:  # keep-alive: one canned answer per request
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def start_stub() -> int:
    ready: list[int] = []

    async def serve() -> None:
        server = await asyncio.start_server(_answer, "127.0.0.1", 0)
        ready.append(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()
    while not ready:
        time.sleep(0.01)
    return ready[0]


def pct(values: list[float], q: float) -> float:
    return round(statistics.quantiles(values, n=100)[q - 1], 3)


def make_key(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-m", "cli.main", "keys", "create", "--org", "bench"], env=env,
                         cwd=REPO, check=True, capture_output=True, text=True).stdout  # fmt: skip
    return out.strip().splitlines()[-1].strip()  # printed alone on the last line


def measure(api_url: str, stub_url: str, key: str, n: int) -> tuple[list[float], list[float]]:
    headers = {"authorization": f"Bearer {key}"}
    direct, proxied = [], []
    with httpx.Client(base_url=api_url, headers=headers) as api, httpx.Client(base_url=stub_url) as stub:
        for _ in range(50):  # warm: caches, pools, the rate limit's script
            api.post("/v1/chat/completions", json=REQUEST).raise_for_status()
        for _ in range(n):
            t = time.perf_counter()
            stub.post("/v1/chat/completions", json=REQUEST).raise_for_status()
            direct.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            api.post("/v1/chat/completions", json=REQUEST).raise_for_status()
            proxied.append((time.perf_counter() - t) * 1e3)
    return direct, proxied


def profile_in_process(env: dict[str, str], key: str, n: int, out: Path) -> None:
    import cProfile

    os.environ.update(env)
    from api.main import create_app
    from core.settings import Settings

    app = create_app(Settings())

    async def run() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                headers = {"authorization": f"Bearer {key}"}
                for _ in range(50):
                    await client.post("/v1/chat/completions", json=REQUEST, headers=headers)
                profiler = cProfile.Profile()
                profiler.enable()
                for _ in range(n):
                    await client.post("/v1/chat/completions", json=REQUEST, headers=headers)
                profiler.disable()
                profiler.dump_stats(out)

    asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--profile", type=Path, default=None, help="write a cProfile of the in-process app here")
    args = ap.parse_args()
    stub_port = start_stub()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as redis:
        port = free_port()
        env = {**os.environ, "FTSERVE_DATA_DIR": f"{tmp}/data", "FTSERVE_REDIS_URL": redis.url,
               "FTSERVE_PORT": str(port), "FTSERVE_LOG_LEVEL": "warning",
               "FTSERVE_INFERENCE_REPLICAS": json.dumps([{"base_model": "demo-tiny",
                                                          "url": f"http://127.0.0.1:{stub_port}",
                                                          "adapter_dir": f"{tmp}/adapters"}])}  # fmt: skip
        key = make_key(env)
        api = subprocess.Popen([sys.executable, "-m", "cli.main", "api"], env=env, cwd=REPO)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("ftserve api did not become ready")
                time.sleep(0.2)
            direct, proxied = measure(
                f"http://127.0.0.1:{port}", f"http://127.0.0.1:{stub_port}", key, args.requests
            )
        finally:
            api.terminate()
            api.wait(timeout=30)
        result: dict[str, Any] = {
            "bench": "proxy_overhead", "requests": args.requests, "cpus": os.cpu_count(),
            "direct_ms_p50": pct(direct, 50), "proxied_ms_p50": pct(proxied, 50),
            "added_ms_p50": round(pct(proxied, 50) - pct(direct, 50), 3),
            "added_ms_p95": round(pct(proxied, 95) - pct(direct, 95), 3),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }  # fmt: skip
        if args.profile:
            profile_in_process(env, key, args.requests, args.profile)
            result["profile"] = str(args.profile)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
