"""Upload + validation throughput: a generated chat JSONL file through a real API process over HTTP.

Prints one JSON line: MB/s for the whole POST /v1/files (multipart parse, line-by-line validation, storage
write) and the API process's peak RSS growth. Targets: >= 100 MB/s, < 200 MB RSS growth.

    python bench/upload.py --size-mb 1024
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.redis_embedded import free_port  # noqa: E402


def write_chat_file(path: Path, size_bytes: int, seed: int = 0) -> int:
    """Realistic chat lines of ~0.3-3 KB with varied text, until the file reaches `size_bytes`."""
    rng = random.Random(seed)
    words = [f"w{rng.randrange(10_000)}" for _ in range(5_000)]
    written = lines = 0
    with open(path, "wb") as fh:
        while written < size_bytes:
            user = " ".join(rng.choices(words, k=rng.randint(10, 120)))
            answer = " ".join(rng.choices(words, k=rng.randint(20, 300)))
            row = {
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": answer},
                ]
            }
            line = json.dumps(row).encode() + b"\n"
            fh.write(line)
            written += len(line)
            lines += 1
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--keep-dir", type=Path, default=None, help="work dir (default: a temp dir)")
    args = parser.parse_args()

    work = args.keep_dir or Path(tempfile.mkdtemp(prefix="ftserve-bench-upload-"))
    work.mkdir(parents=True, exist_ok=True)
    data_file = work / f"chat-{args.size_mb}mb.jsonl"
    if not data_file.exists() or data_file.stat().st_size < args.size_mb * 1024 * 1024:
        t0 = time.perf_counter()
        n = write_chat_file(data_file, args.size_mb * 1024 * 1024)
        print(
            f"generated {n:,} lines ({data_file.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f}s",
            file=sys.stderr,
        )
    size = data_file.stat().st_size

    port = free_port()
    env = {
        **os.environ,
        "FTSERVE_DATA_DIR": str(work / "data"),
        "FTSERVE_MAX_UPLOAD_BYTES": str(size + 1024),
        "FTSERVE_LOG_LEVEL": "warning",
    }
    key = (
        subprocess.run(
            [sys.executable, "-m", "cli.main", "keys", "create", "--org", "bench"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    api = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "api", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env=env,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        proc = psutil.Process(api.pid)
        baseline_rss = proc.memory_info().rss
        peak = baseline_rss
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, proc.memory_info().rss)
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        with open(data_file, "rb") as fh:
            resp = httpx.post(
                f"{base}/v1/files",
                headers={"Authorization": f"Bearer {key}"},
                data={"purpose": "fine-tune"},
                files={"file": (data_file.name, fh, "application/jsonl")},
                timeout=3600,
            )
        elapsed = time.perf_counter() - t0
        done.set()
        sampler.join()
        resp.raise_for_status()
        body = resp.json()
        assert body["status"] == "processed" and body["bytes"] == size, body
        result = {
            "bench": "upload",
            "bytes": size,
            "examples": body["example_count"],
            "seconds": round(elapsed, 2),
            "mb_per_s": round(size / 1e6 / elapsed, 1),
            "peak_rss_growth_mb": round((peak - baseline_rss) / 1e6, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
            "targets": {"mb_per_s": ">= 100", "peak_rss_growth_mb": "< 200"},
        }
        print(json.dumps(result))
    finally:
        api.terminate()
        api.wait(timeout=30)


if __name__ == "__main__":
    main()
