"""`ftserve up`: every process of a one-machine deployment as children of one command.

Children get the same environment, so they share DATA_DIR, the database and the embedded Redis. If any child
dies, everything stops: a half-running service is worse than a clear failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
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

    def _wait_ready(self, timeout_s: float) -> bool:
        url = f"http://{self.settings.host}:{self.settings.port}/healthz"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for child in self.children:
                if child.process and child.process.poll() is not None:
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
            for child in self.children:
                child.process = subprocess.Popen(child.args, env=env)
            if not self._wait_ready(timeout_s=120):
                print("ftserve failed to start; see the errors above", file=sys.stderr, flush=True)
                return 1
            print(f"ftserve ready on http://{self.settings.host}:{self.settings.port}", flush=True)
            while not self.stopping:
                for child in self.children:
                    if child.process and child.process.poll() is not None:
                        print(
                            f"ftserve: {child.name} exited with {child.process.returncode}", file=sys.stderr
                        )
                        return 1
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
        if self.redis is not None:
            self.redis.stop()


def default_children(settings: Settings) -> list[Child]:
    """API, scheduler and one worker. On shutdown the worker's runners checkpoint and re-queue their jobs
    (within the 20 s the supervisor gives its children), so the next `ftserve up` resumes them."""
    python = sys.executable
    return [
        Child(
            "api",
            [python, "-m", "cli.main", "api", "--host", settings.host, "--port", str(settings.port)],
        ),
        Child("scheduler", [python, "-m", "cli.main", "scheduler"]),
        Child("worker", [python, "-m", "cli.main", "worker"]),
    ]
