"""A split deployment on loopback for fault tests and `make soak`: `ftserve api`, `ftserve scheduler` and
`ftserve worker` processes over a real redis-server (AOF, fsync always) and a private PostgreSQL cluster
(SQLite where none can be made). Any component can be killed and started again by name."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core import jobs
from core.db import make_engine, migrate, session_scope
from core.keys import create_key
from core.model_registry import register_model
from core.models import FineTuningJob, JobCheckpoint, JobEvent
from core.redis_embedded import EmbeddedRedis, free_port
from core.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
# The events that end a job: one of these per job, ever.
TERMINAL_MESSAGES = ("The job has successfully completed",)


def chat_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"code {i}?"},
                {"role": "assistant", "content": f"c{i:03d}"},
            ]
        }
        for i in range(n)
    ]


class PrivatePostgres:
    """A throw-away PostgreSQL cluster (initdb + pg_ctl) in a temp dir on a free port, run as the
    `postgres` user when we are root (initdb refuses root). Never the system cluster on 5432."""

    def __init__(self) -> None:
        self.bin = self._find_bin()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ftserve-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"

    @staticmethod
    def _find_bin() -> Path:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not found:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
        return found[-1].parent

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {result.stdout}{result.stderr}")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> PrivatePostgres:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        return self.start()

    def start(self) -> PrivatePostgres:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def kill(self) -> None:
        """The postmaster dies at once (kill -9): the next start runs crash recovery."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        # Its backends notice the postmaster is gone and exit; wait until the port is free.
        time.sleep(1.0)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except RuntimeError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def make_private_postgres() -> tuple[PrivatePostgres | None, str | None]:
    """(cluster, None), or (None, why not)."""
    try:
        return PrivatePostgres().init(), None
    except (RuntimeError, OSError, KeyError, subprocess.SubprocessError) as exc:
        return None, f"no private PostgreSQL cluster could be made: {exc}"


@dataclass
class SplitFleet:
    """api + scheduler(s) + workers as separate `ftserve` processes; `kill`/`start_component` by name."""

    tmp: Path
    demo_model_dir: Path
    n_workers: int = 2
    postgres: PrivatePostgres | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.url = self.postgres.url if self.postgres else f"sqlite:///{self.tmp / 'ftserve.db'}"
        migrate(self.url)
        self.engine: Engine = make_engine(self.url)
        self.settings = Settings(
            data_dir=self.tmp / "data", database_url=self.url, model_registry=self.tmp / "m.json"
        )
        register_model(self.settings, "demo-tiny", self.demo_model_dir)
        with session_scope(self.engine) as session:
            _row, self.key = create_key(session, org_name="org-faults")
        self.redis = EmbeddedRedis(self.tmp / "redis", appendonly=True, appendfsync="always").start()
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/v1"
        self.env = {
            **os.environ,
            "FTSERVE_DATA_DIR": str(self.settings.data_dir),
            "FTSERVE_DATABASE_URL": self.url,
            "FTSERVE_REDIS_URL": self.redis.url,
            "FTSERVE_MODEL_REGISTRY": str(self.settings.model_registry),
            "FTSERVE_PORT": str(self.port),
            "FTSERVE_HEARTBEAT_INTERVAL_S": "0.5",
            "FTSERVE_HEARTBEAT_TTL_S": "3",
            "FTSERVE_LEASE_TTL_S": "12",  # outlives a short database restart
            "FTSERVE_SCHEDULER_INTERVAL_S": "0.2",
            "FTSERVE_ORG_MAX_RUNNING_JOBS": "0",
            "FTSERVE_MIN_EXAMPLES": "10",
            "FTSERVE_INFERENCE_ENABLED": "false",
            # A webhook endpoint records every status change in the outbox, where the tests count them.
            "FTSERVE_WEBHOOK_ALLOW_PRIVATE": "1",
            "FTSERVE_WEBHOOK_ALLOW_HTTP": "1",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        self.workers = [f"w{i + 1}" for i in range(self.n_workers)]

    # -- processes -------------------------------------------------------------------------------------------

    def command(self, name: str) -> list[str]:
        if name == "api":
            return ["api"]
        if name.startswith("scheduler"):
            return ["scheduler"]
        return ["worker", "--id", name]

    def start_component(self, name: str) -> None:
        if name == "redis":
            self.redis.start()
            return
        if name == "postgres":
            assert self.postgres is not None
            self.postgres.start()
            return
        log = open(self.tmp / f"{name}.log", "ab")  # closed with the process
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *self.command(name)],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """kill -9 (or `sig`) one component and reap it; a worker's runner gets the kernel's SIGTERM."""
        if name == "redis":
            assert self.redis.process is not None
            self.redis.process.kill()
            self.redis.process.wait()
            return
        if name == "postgres":
            assert self.postgres is not None
            self.postgres.kill()
            return
        proc = self.procs[name]
        proc.send_signal(sig)
        proc.wait(60)

    def start(self, *, schedulers: int = 1, timeout_s: float = 120) -> SplitFleet:
        self.start_component("api")
        for i in range(schedulers):
            self.start_component("scheduler" if i == 0 else f"scheduler{i + 1}")
        for worker in self.workers:
            self.start_component(worker)
        self.wait("the API and the workers", self.ready, timeout_s)
        with self.http() as client:  # nobody listens there: deliveries just retry
            client.post("/webhook_endpoints", json={"url": "http://127.0.0.1:9/hook"}).raise_for_status()
        return self

    def ready(self) -> bool:
        try:
            if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code != 200:
                return False
            return len(redis.Redis.from_url(self.redis.url).keys("ftserve:registry:*")) == len(self.workers)
        except (httpx.HTTPError, redis.RedisError):
            return False

    def api_up(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.redis.stop()
        self.engine.dispose()
        if self.postgres:
            self.postgres.destroy()

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(
            f"--- {p.name} ---\n" + p.read_text(errors="replace")[-tail:]
            for p in sorted(self.tmp.glob("*.log"))
        )

    def wait(self, what: str, predicate: Callable[[], object], timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if predicate():
                    return
            except Exception:  # noqa: BLE001 (a component is down for a moment: ask again)
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}\n{self.logs()}")
            time.sleep(0.2)

    # -- the API ---------------------------------------------------------------------------------------------

    def http(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(
            base_url=self.api, headers={"Authorization": f"Bearer {self.key}"}, timeout=timeout
        )

    def upload(self, rows: list[dict[str, Any]]) -> str:
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        with self.http() as client:
            resp = client.post("/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", data)})
        resp.raise_for_status()
        return str(resp.json()["id"])

    def create(self, file_id: str, *, epochs: int, every: int = 1000, suffix: str = "f") -> str:
        hp = {"n_epochs": epochs, "batch_size": 1, "checkpoint_every_steps": every, "eval_every_steps": 1000}
        body = {
            "model": "demo-tiny", "training_file": file_id, "suffix": suffix, "seed": 1,
            "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
        }  # fmt: skip
        with self.http() as client:
            resp = client.post("/fine_tuning/jobs", json=body)
        resp.raise_for_status()
        return str(resp.json()["id"])

    # -- the database: the truth about every job --------------------------------------------------------------

    def row(self, job_id: str) -> FineTuningJob:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.exec(select(FineTuningJob).where(FineTuningJob.id == job_id)).one()

    def events(self, job_id: str) -> list[JobEvent]:
        with Session(self.engine, expire_on_commit=False) as session:
            return list(
                session.exec(
                    select(JobEvent).where(JobEvent.job_id == job_id).order_by(col(JobEvent.seq))
                ).all()
            )

    def messages(self, job_id: str) -> list[str]:
        return [e.message for e in self.events(job_id)]

    def checkpoints(self, job_id: str) -> list[JobCheckpoint]:
        with Session(self.engine, expire_on_commit=False) as session:
            return list(
                session.exec(
                    select(JobCheckpoint)
                    .where(JobCheckpoint.job_id == job_id, col(JobCheckpoint.deleted_at).is_(None))
                    .order_by(col(JobCheckpoint.step_number))
                ).all()
            )

    def finished(self, *job_ids: str) -> bool:
        rows = [self.row(j) for j in job_ids]
        return all(r.status in jobs.TERMINAL and r.worker_id is None for r in rows)

    def outcome_counts(self, job_id: str) -> dict[str, int]:
        """How many times the job ended, counted from its events and webhook outbox (status transitions
        into a terminal state), and how many models it produced."""
        from core.models import FineTunedModel, WebhookEvent

        texts = self.messages(job_id)
        with Session(self.engine) as session:
            models = session.exec(select(FineTunedModel).where(FineTunedModel.job_id == job_id)).all()
            hooks = session.exec(select(WebhookEvent).where(WebhookEvent.job_id == job_id)).all()
        terminal_hooks = [h for h in hooks if h.type.rsplit(".", 1)[-1] in jobs.TERMINAL]
        return {
            "succeeded_events": texts.count("The job has successfully completed"),
            "terminal_webhooks": len(terminal_hooks),
            "models": len(models),
        }
