"""moto's standalone S3 server as a real subprocess: S3 over real HTTP, for the `minio` SDK.

    with run_moto_server() as endpoint:      # "127.0.0.1:PORT"
        Minio(endpoint, "test", "test", secure=False)

No MinIO binary can be installed on the development machines; `deploy/` runs real MinIO.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

ACCESS_KEY = "test"
SECRET_KEY = "test"
REGION = "us-east-1"


def s3_settings_kwargs(endpoint: str, bucket_prefix: str, path: str = "") -> dict[str, Any]:
    """Settings fields for a fresh bucket on the moto server at `endpoint`: `Settings(**s3_settings_kwargs(...))`."""
    return {
        "storage_url": f"s3://{bucket_prefix}-{uuid.uuid4().hex[:10]}{path}",
        "s3_endpoint": endpoint,
        "s3_access_key": ACCESS_KEY,
        "s3_secret_key": SECRET_KEY,
        "s3_secure": False,
        "s3_region": REGION,
    }


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return int(response.status) < 500
    except urllib.error.HTTPError as exc:  # any HTTP answer means the server is up
        return exc.code < 500
    except OSError:
        return False


@contextlib.contextmanager
def run_moto_server(host: str = "127.0.0.1", port: int | None = None, timeout: float = 60.0) -> Iterator[str]:
    """Start `python -m moto.server` (this interpreter's moto), wait until it answers, yield "host:port"."""
    attempts = 1 if port is not None else 3  # a free port can be taken between probing and binding it
    last_error = ""
    for _ in range(attempts):
        chosen = port if port is not None else free_port(host)
        with tempfile.TemporaryFile() as log:
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", host, "-p", str(chosen)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            try:
                deadline = time.monotonic() + timeout
                url = f"http://{host}:{chosen}/moto-api/"
                while proc.poll() is None and time.monotonic() < deadline:
                    if _answers(url):
                        break
                    time.sleep(0.05)
                else:
                    log.seek(0)
                    output = log.read().decode(errors="replace")[-4000:]
                    last_error = (
                        f"moto server on {host}:{chosen} "
                        + ("exited" if proc.poll() is not None else f"did not answer within {timeout}s")
                        + f"; its output:\n{output}"
                    )
                    continue
                yield f"{host}:{chosen}"
                return
            finally:
                _stop(proc)
    raise RuntimeError(last_error)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
