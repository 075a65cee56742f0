"""`ftserve up`: every process of a one-machine deployment as children of one command.

Children get the same environment, so they share DATA_DIR, the database and the embedded Redis. If any child
dies, everything stops: a half-running service is worse than a clear failure. The exception is vLLM (one per
served base model): training does not need it, so a vLLM that exits is started again (with a growing pause),
and "ftserve ready" is printed as soon as the API answers. Inference requests get a clear 503 until vLLM is
up (~20-50 s on a CPU), and "ftserve inference ready: <model>" follows then.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

from core.db import migrate
from core.redis_embedded import EmbeddedRedis
from core.settings import Settings


@dataclass
class Child:
    name: str
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)  # added to the shared environment
    # vLLM: restarted when it exits, in its own process group (its engine runs in child processes).
    restart: bool = False
    health_url: str | None = None
    replica: dict[str, object] | None = None  # registered as a managed inference replica
    ready: bool = False
    restarts: int = 0
    next_start: float = 0.0


class Supervisor:
    def __init__(self, settings: Settings, children: list[Child], echo: bool = True) -> None:
        self.settings = settings
        self.children = children
        self.redis: EmbeddedRedis | None = None
        self.stopping = False
        self.echo = echo

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["FTSERVE_DATA_DIR"] = str(self.settings.data_dir)
        if self.redis is not None:
            env["FTSERVE_REDIS_URL"] = self.redis.url
        return env

    def _spawn(self, child: Child, env: dict[str, str]) -> None:
        child.ready = False
        child.process = subprocess.Popen(
            child.args, env={**env, **child.env}, start_new_session=child.restart
        )

    def _register_replicas(self) -> None:
        from core.db import make_engine, session_scope
        from core.inference.replicas import MANAGED, list_replicas, remove_replica, upsert_replica

        engine = make_engine(self.settings.resolved_database_url)
        try:
            with session_scope(engine) as session:
                urls = set()
                for child in self.children:
                    if child.replica is not None:
                        row = upsert_replica(session, source=MANAGED, **child.replica)  # type: ignore[arg-type]
                        urls.add(row.url)
                for row in list_replicas(session):  # from an earlier `ftserve up` on other ports
                    if row.source == MANAGED and row.url not in urls:
                        remove_replica(session, row.id)
        finally:
            engine.dispose()

    def _watch_restartable(self, env: dict[str, str]) -> None:
        """Restart a vLLM that exited; announce one that became healthy."""
        for child in self.children:
            if not child.restart or child.process is None:
                continue
            code = child.process.poll()
            if code is not None:
                if child.next_start == 0.0:
                    # vLLM's engine core outlives a killed API server and keeps its memory: end the group.
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(child.process.pid, signal.SIGKILL)
                    child.restarts += 1
                    pause = min(60.0, 2.0 * 2 ** min(child.restarts - 1, 5))
                    child.next_start = time.monotonic() + pause
                    print(
                        f"ftserve: {child.name} exited with {code}; restarting in {pause:.0f}s",
                        file=sys.stderr,
                    )
                elif time.monotonic() >= child.next_start:
                    child.next_start = 0.0
                    self._spawn(child, env)
                continue
            if not child.ready and child.health_url:
                try:
                    child.ready = httpx.get(child.health_url, timeout=0.5).status_code == 200
                except httpx.HTTPError:
                    child.ready = False
                if child.ready:
                    print(f"ftserve inference ready: {child.name} (pid {child.process.pid})", flush=True)

    def _wait_ready(self, timeout_s: float) -> bool:
        url = f"http://{self.settings.host}:{self.settings.port}/healthz"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for child in self.children:
                if child.process and child.process.poll() is not None and not child.restart:
                    return False
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        return False

    def _handle_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        migrate(self.settings.resolved_database_url)
        if self.settings.redis_url is None:
            self.redis = EmbeddedRedis(self.settings.data_dir / "redis").start()
        signal.signal(signal.SIGTERM, self._handle_signal)
        signal.signal(signal.SIGINT, self._handle_signal)
        env = self._env()
        try:
            if any(child.replica is not None for child in self.children):
                self._register_replicas()
            for child in self.children:
                self._spawn(child, env)
            if not self._wait_ready(timeout_s=120):
                print("ftserve failed to start; see the errors above", file=sys.stderr, flush=True)
                return 1
            print(f"ftserve ready on http://{self.settings.host}:{self.settings.port}", flush=True)
            print(f"dashboard: http://{self.settings.host}:{self.settings.port}/ui", flush=True)
            while not self.stopping:
                for child in self.children:
                    if child.process and child.process.poll() is not None and not child.restart:
                        print(
                            f"ftserve: {child.name} exited with {child.process.returncode}", file=sys.stderr
                        )
                        return 1
                self._watch_restartable(env)
                time.sleep(0.2)
            return 0
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        for child in reversed(self.children):
            if child.process and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for child in reversed(self.children):
            if child.process:
                try:
                    child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()
                if child.restart:  # vLLM's engine processes, should any outlive their parent
                    try:
                        os.killpg(child.process.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
        if self.redis is not None:
            self.redis.stop()


def default_children(settings: Settings) -> list[Child]:
    """A vLLM per served base model (first: it is the slowest to start), API, scheduler and one worker. On
    shutdown the worker's runners checkpoint and re-queue their jobs (within the 20 s the supervisor gives its
    children), so the next `ftserve up` resumes them."""
    python = sys.executable
    return vllm_children(settings) + [
        Child(
            "api",
            [python, "-m", "cli.main", "api", "--host", settings.host, "--port", str(settings.port)],
        ),
        # Two processes on one host can't share FTSERVE_HEALTH_PORT: the worker takes the next port.
        Child("scheduler", [python, "-m", "cli.main", "scheduler"]),
        Child(
            "worker",
            [python, "-m", "cli.main", "worker"],
            env={"FTSERVE_HEALTH_PORT": str(settings.health_port + 1)} if settings.health_port else {},
        ),
    ]


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str, start: int) -> int:
    for port in range(start, start + 200):
        if _port_free(host, port):
            return port
    raise RuntimeError(f"no free port for vLLM from {start}")


def vllm_argv(
    settings: Settings, *, model_path: Path, served_name: str, host: str, port: int, gpu: bool
) -> list[str]:
    """The vLLM server command line for one base model: runtime LoRA loading on, limits from settings."""
    args = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_path), "--served-model-name", served_name,
        "--host", host, "--port", str(port),
        "--dtype", "auto" if gpu else "float32",
        "--enable-lora",
        "--max-loras", str(settings.vllm_max_loras),
        "--max-cpu-loras", str(max(settings.vllm_max_cpu_loras, settings.vllm_max_loras)),
        "--max-lora-rank", str(settings.vllm_max_lora_rank),
        "--disable-log-stats", "--uvicorn-log-level", "warning",
    ]  # fmt: skip
    if settings.vllm_max_model_len:
        args += ["--max-model-len", str(settings.vllm_max_model_len)]
    return args + shlex.split(settings.vllm_extra_args)


def vllm_env(settings: Settings, *, api_key: str) -> dict[str, str]:
    return {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_CPU_KVCACHE_SPACE": str(settings.vllm_kv_cache_gib),
        "VLLM_API_KEY": api_key,
    }


def vllm_children(settings: Settings) -> list[Child]:
    """One vLLM per served base model (FTSERVE_VLLM_MODELS, default: every registered one), with runtime LoRA
    loading on and the adapter limits from settings. Registered in the DB as managed replicas."""
    from core.model_registry import load_registry

    if not settings.inference_enabled:
        return []
    if importlib.util.find_spec("vllm") is None:
        print("ftserve: vllm is not installed; inference is off (pip install -e '.[train]')", file=sys.stderr)
        return []
    registry = load_registry(settings)
    if settings.vllm_models is None:
        wanted = sorted(registry)
    else:
        wanted = [m.strip() for m in settings.vllm_models.split(",") if m.strip()]
    children, port = [], settings.vllm_port
    host = "127.0.0.1"
    gpu = shutil.which("nvidia-smi") is not None
    for model in wanted:
        base = registry.get(model)
        if base is None or not base.path.is_dir():
            print(f"ftserve: base model {model!r} is not registered locally; no vLLM for it", file=sys.stderr)
            continue
        port = _free_port(host, port)
        args = vllm_argv(settings, model_path=base.path, served_name=model, host=host, port=port, gpu=gpu)
        if base.chat_template:
            # The registry's custom training template serves too, so requests render as training did.
            template_file = settings.data_dir / "chat_templates" / f"{model}.jinja"
            template_file.parent.mkdir(parents=True, exist_ok=True)
            template_file.write_text(base.chat_template)
            args += ["--chat-template", str(template_file)]
        # A key per start: only ftserve may call it (its load/unload routes read any local path).
        key = secrets.token_urlsafe(24)
        env = vllm_env(settings, api_key=key)
        children.append(
            Child(
                f"vllm:{model}",
                args,
                env=env,
                restart=True,
                health_url=f"http://{host}:{port}/health",
                replica={
                    "base_model": model,
                    "url": f"http://{host}:{port}",
                    "adapter_dir": settings.adapters_dir,
                    "max_adapters": settings.resolved_inference_max_adapters,
                    "max_lora_rank": settings.vllm_max_lora_rank,
                    "api_key": key,
                },
            )
        )
        port += 1
    return children
