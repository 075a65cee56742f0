"""A heterogeneous fleet on loopback: one `ftserve api`, one `ftserve scheduler` and three real
`ftserve worker` processes declaring simulated GPUs of 24, 48 and 80 GB (FTSERVE_WORKER_GPUS), over a real
Redis (AOF, fsync always) and PostgreSQL where it runs (else SQLite).

How the sizes are real and the training is too: the base model `sim-8b` is registered with the config.json
of Llama-3.1-8B, which is what the scheduler estimates memory from, and with demo-tiny's weights, which is
what the workers actually train on the CPU. Jobs differ by batch size and max_seq_length, so their estimates
(19, 29 and 60 GB) each fit a different GPU class. Everything else (placement, reservations, leases,
checkpoints, resume, fencing) runs for real.

The processes are shared by the tests of this module, in order: placement, then a worker killed with
kill -9 mid-training, then Redis killed and restarted with jobs queued and running (and its queue lost).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core import jobs
from core.db import make_engine, migrate, session_scope
from core.keys import create_key
from core.model_registry import register_model
from core.models import FineTunedModel, FineTuningJob, JobCheckpoint, JobEvent
from core.queue import queue_name
from core.redis_embedded import EmbeddedRedis, free_port
from core.settings import Settings
from core.vram import estimate_request
from tests.scheduler.factories import chat_rows
from tests.support.model_configs import LLAMA_3_1_8B, write_config

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
GPUS = {"w24": "A10-24GB:24576", "w48": "L40S-48GB:49152", "w80": "H100-80GB:81920"}
# Each batch runs as one micro-batch (no accumulation), so its size is what the memory follows.
SMALL = {"batch_size": 1, "micro_batch_size": 1, "max_seq_length": 256}  # ~19 GB: the 24 GB card
MEDIUM = {"batch_size": 8, "micro_batch_size": 8, "max_seq_length": 512}  # ~29 GB: the 48 GB card
LARGE = {"batch_size": 8, "micro_batch_size": 8, "max_seq_length": 2048}  # ~60 GB: the 80 GB card
HUGE = {"batch_size": 16, "micro_batch_size": 16, "max_seq_length": 16384}  # ~685 GB: no card
SNUG = {
    "batch_size": 4,
    "micro_batch_size": 4,
    "max_seq_length": 512,
}  # ~23.5 GB: only the 24 GB card fits tighter than 48
N_EXAMPLES = 24


def _database_url(tmp: Path) -> Iterator[str]:
    try:
        import psycopg

        with psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=test", connect_timeout=3, autocommit=True
        ) as c:
            name = f"ftserve_fleet_{uuid.uuid4().hex[:10]}"
            c.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001 (no PostgreSQL here: SQLite)
        print(f"\nfleet test on SQLite: PostgreSQL unavailable ({exc})")
        yield f"sqlite:///{tmp / 'ftserve.db'}"
        return
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Fleet:
    data_dir: Path
    env: dict[str, str]
    engine: Engine
    redis: EmbeddedRedis
    api: str
    key: str
    settings: Settings
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str, **extra_env: str) -> subprocess.Popen[bytes]:
        log = open(self.data_dir / f"{name}.log", "ab")  # closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args], cwd=REPO_ROOT, env={**self.env, **extra_env},
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.procs[name] = proc
        return proc

    def start_worker(self, worker_id: str) -> subprocess.Popen[bytes]:
        return self.start(worker_id, "worker", "--id", worker_id, FTSERVE_WORKER_GPUS=GPUS[worker_id])

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name} ---\n" + p.read_text(errors="replace")[-3000:]
            for p in sorted(self.data_dir.glob("*.log"))
        )

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)

    def create(self, suffix: str, file_id: str, hp: dict[str, Any], **extra: Any) -> str:
        body = {
            "model": "sim-8b", "training_file": file_id, "suffix": suffix, "seed": 1,
            "method": {"type": "supervised", "supervised": {"hyperparameters": hp}}, **extra,
        }  # fmt: skip
        with self.http() as client:
            resp = client.post("/fine_tuning/jobs", json=body)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        with self.http() as client:
            resp = client.get(f"/fine_tuning/jobs/{job_id}")
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def row(self, job_id: str) -> FineTuningJob:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.exec(select(FineTuningJob).where(FineTuningJob.id == job_id)).one()

    def messages(self, job_id: str) -> list[str]:
        with Session(self.engine) as session:
            rows = session.exec(
                select(JobEvent).where(JobEvent.job_id == job_id).order_by(col(JobEvent.seq))
            ).all()
        return [e.message for e in rows]

    def wait(self, what: str, predicate: Callable[[], object], timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}\n{self.logs()}")
            time.sleep(0.1)

    def over_committed(self) -> list[str]:
        """Every GPU whose reservations exceed its size (must stay empty)."""
        sizes = {w: int(spec.rsplit(":", 1)[1]) for w, spec in GPUS.items()}
        with Session(self.engine) as session:
            held = session.exec(select(FineTuningJob).where(col(FineTuningJob.worker_id).is_not(None))).all()
        totals: dict[str, int] = {}
        for job in held:
            totals[str(job.worker_id)] = totals.get(str(job.worker_id), 0) + (job.reserved_mb or 0)
        return [w for w, mb in totals.items() if mb > sizes[w]]


def _hp(size: dict[str, int], epochs: int, every: int = 1000) -> dict[str, Any]:
    return {**size, "n_epochs": epochs, "checkpoint_every_steps": every, "eval_every_steps": 1000}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet")
    urls = _database_url(tmp)
    url = next(urls)
    migrate(url)
    engine = make_engine(url)
    settings = Settings(data_dir=tmp / "data", database_url=url, model_registry=tmp / "models.json")
    register_model(settings, "sim-8b", demo_model_dir, config=write_config(tmp / "llama-8b", LLAMA_3_1_8B))
    with session_scope(engine) as session:
        _row, key = create_key(session, org_name="org-fleet")
    server = EmbeddedRedis(tmp / "redis", appendonly=True, appendfsync="always").start()
    port = free_port()
    env = {
        **os.environ,
        "FTSERVE_DATA_DIR": str(settings.data_dir),
        "FTSERVE_DATABASE_URL": url,
        "FTSERVE_REDIS_URL": server.url,
        "FTSERVE_MODEL_REGISTRY": str(settings.model_registry),
        "FTSERVE_PORT": str(port),
        "FTSERVE_HEARTBEAT_INTERVAL_S": "0.3",
        "FTSERVE_HEARTBEAT_TTL_S": "2",
        "FTSERVE_LEASE_TTL_S": "5",  # several heartbeats, even on a loaded 2-core machine
        "FTSERVE_SCHEDULER_INTERVAL_S": "0.1",
        "FTSERVE_WORKER_MAX_JOBS": "2",  # memory, not slots, is what limits the fleet here
        "FTSERVE_ORG_MAX_RUNNING_JOBS": "0",
        "FTSERVE_FLEET_MEMORY_S": "15",  # remember workers missing from Redis for a moment
        "FTSERVE_MIN_EXAMPLES": "10",
        "PYTHONUNBUFFERED": "1",
    }
    fleet = Fleet(tmp, env, engine, server, f"http://127.0.0.1:{port}/v1", key, settings)
    try:
        fleet.start("api", "api")
        fleet.start("scheduler", "scheduler")
        for worker_id in GPUS:
            fleet.start_worker(worker_id)

        def up() -> bool:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
            client = redis.Redis.from_url(server.url)
            return ready and len(client.keys("ftserve:registry:*")) == len(GPUS)

        fleet.wait("the API and three workers", up, timeout_s=90)
        yield fleet
    finally:
        for proc in fleet.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in fleet.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.stop()
        engine.dispose()
        next(urls, None)


@pytest.fixture(scope="module")
def training_file(fleet: Fleet) -> str:
    import json

    data = "".join(json.dumps(r) + "\n" for r in chat_rows(N_EXAMPLES)).encode()
    with fleet.http() as client:
        resp = client.post("/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", data)})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def _done(fleet: Fleet, *job_ids: str) -> Callable[[], bool]:
    def check() -> bool:
        assert not fleet.over_committed(), fleet.over_committed()
        rows = [fleet.row(j) for j in job_ids]
        return all(r.status in jobs.TERMINAL and r.worker_id is None for r in rows)

    return check


def test_jobs_land_on_the_gpu_that_fits_them_best(fleet: Fleet, training_file: str) -> None:
    need = {
        name: estimate_request(
            fleet.settings,
            model="sim-8b",
            method_type="supervised",
            hyperparameters=hp,
            n_examples=N_EXAMPLES,
        ).gpu.reservation_mb
        for name, hp in (("small", SMALL), ("medium", MEDIUM), ("large", LARGE))
    }
    assert need["small"] < 24576 < need["medium"] < 49152 < need["large"] < 81920
    with fleet.http() as client:  # the pre-flight estimate agrees with what placement will do
        for hp, gpu in ((SMALL, "A10-24GB"), (MEDIUM, "L40S-48GB"), (LARGE, "H100-80GB")):
            body = {"model": "sim-8b", "training_file": training_file,
                    "method": {"type": "supervised", "supervised": {"hyperparameters": hp}}}  # fmt: skip
            assert client.post("/fine_tuning/estimates", json=body).json()["gpu_class"] == gpu

    small = fleet.create("small", training_file, _hp(SMALL, 1))
    medium = fleet.create("medium", training_file, _hp(MEDIUM, 2))
    large = fleet.create("large", training_file, _hp(LARGE, 40))
    fleet.wait("three placements", lambda: all(fleet.row(j).attempt == 1 for j in (small, medium, large)))
    placed = {
        name: fleet.job(j)["gpu_class"]
        for name, j in (("small", small), ("medium", medium), ("large", large))
    }
    assert placed == {"small": "A10-24GB", "medium": "L40S-48GB", "large": "H100-80GB"}
    assert {fleet.row(j).worker_id for j in (medium, large)} <= {"w48", "w80", None}
    assert fleet.job(large)["estimated_vram_mb"] == need["large"]

    # Another medium job fits nowhere while those run (each GPU has two slots): it waits, and says why once.
    waiting = fleet.create("fill", training_file, _hp(MEDIUM, 1))
    fleet.wait(
        "the wait reason",
        lambda: fleet.job(waiting)["queue_reason"] is not None or fleet.row(waiting).attempt,
    )
    view = fleet.job(waiting)
    if view["status"] == "queued":  # (unless a GPU already freed up on a slow machine)
        assert view["queue_reason"].startswith(f"Needs ~{need['medium'] / 1024:.1f} GB; largest free GPU ")
        assert view["queue_position"] == 1
    # A job no GPU of the fleet could ever hold fails, with the numbers (as soon as the scheduler has
    # watched the fleet for FTSERVE_FLEET_MEMORY_S, so that a worker missing for a moment is not missed).
    huge = fleet.create("huge", training_file, _hp(HUGE, 1))
    fleet.wait("the huge job to fail", lambda: fleet.row(huge).status == jobs.FAILED, 60)
    error = fleet.job(huge)["error"]
    assert (
        error["code"] == "insufficient_gpu_memory"
        and "largest GPU of this fleet holds (80 GB)" in error["message"]
    )

    fleet.wait("every job to finish", _done(fleet, small, medium, large, waiting), 240)
    for job_id in (small, medium, large, waiting):
        assert fleet.row(job_id).status == jobs.SUCCEEDED, (fleet.row(job_id).error, fleet.logs())
    # It ran where it fit best once the medium job's 48 GB card came free (the 80 GB one was still busy).
    assert fleet.job(waiting)["gpu_class"] == "L40S-48GB"
    waited = fleet.messages(waiting)
    reasons = [m for m in waited if m.startswith("Needs ~")]
    assert len(reasons) == len(set(reasons)), waited  # one event per change, not one per tick


def test_a_worker_killed_mid_training_loses_at_most_one_checkpoint_interval(
    fleet: Fleet, training_file: str
) -> None:
    every = 30
    victim = fleet.create("victim", training_file, _hp(SMALL, 8, every=every))  # 192 steps of batch 1
    fleet.wait("placement on the 24 GB worker", lambda: fleet.row(victim).worker_id == "w24")

    def first_checkpoint() -> bool:
        with Session(fleet.engine) as session:
            return (
                session.exec(select(JobCheckpoint).where(JobCheckpoint.job_id == victim)).first() is not None
            )

    fleet.wait("the first checkpoint", first_checkpoint, 120)
    worker = fleet.procs["w24"]
    # The machine dies: freeze the worker so it cannot react, then kill its runner and itself.
    worker.send_signal(signal.SIGSTOP)
    for child in psutil.Process(worker.pid).children(recursive=True):
        child.kill()
    worker.kill()
    worker.wait(10)
    trained = fleet.row(victim).step
    with Session(fleet.engine) as session:
        saved = max(
            c.step_number for c in session.exec(select(JobCheckpoint).where(JobCheckpoint.job_id == victim))
        )
    assert fleet.row(victim).status == jobs.RUNNING and trained < fleet.row(victim).total_steps

    fleet.wait("the job to finish elsewhere", _done(fleet, victim), 240)
    job = fleet.row(victim)
    assert job.status == jobs.SUCCEEDED, (job.error, fleet.logs())
    assert job.attempt == 2 and job.lost_count == 1 and job.gpu_name != "A10-24GB"
    texts = fleet.messages(victim)
    lost = next(m for m in texts if m.startswith("Worker w24 stopped renewing the lease of attempt 1"))
    assert lost.endswith(f"the next attempt resumes from its checkpoint at step {saved}.")
    assert f"Resumed from checkpoint at step {saved}" in texts
    assert trained - saved <= every  # at most one checkpoint interval of work lost
    # It ran to completion once: one success, one model.
    assert texts.count("The job has successfully completed") == 1
    with Session(fleet.engine) as session:
        assert len(session.exec(select(FineTunedModel).where(FineTunedModel.job_id == victim)).all()) == 1
    fleet.start_worker("w24")  # the machine comes back for the next test


def test_redis_restart_and_a_lost_queue_lose_no_job(fleet: Fleet, training_file: str) -> None:
    client = redis.Redis.from_url(fleet.redis.url)
    fleet.wait("w24 back", lambda: len(client.keys("ftserve:registry:*")) == 3, 60)
    running = fleet.create("r-large", training_file, _hp(LARGE, 16))
    fleet.wait("r-large running", lambda: fleet.row(running).worker_id == "w80")
    queued = fleet.create("r-queued", training_file, _hp(LARGE, 1))  # waits for the 80 GB card
    fleet.wait("r-queued waiting", lambda: fleet.job(queued)["queue_reason"] is not None)

    # Redis dies (kill -9) with a job running and one queued, and comes back from its AOF.
    fleet.redis.process.kill()  # type: ignore[union-attr]
    fleet.redis.process.wait()  # type: ignore[union-attr]
    time.sleep(2.0)
    fleet.redis.start()
    assert fleet.row(running).status == jobs.RUNNING and fleet.row(running).attempt == 1

    # Now the queue itself is lost: a job placed on a worker that cannot pick it up yet (frozen), then
    # FLUSHALL. The worker never learns of it; its lease runs out and the scheduler places it again.
    fleet.wait(
        "w24 back after the restart", lambda: b"ftserve:registry:w24" in client.keys("ftserve:registry:*"), 60
    )
    fleet.procs["w24"].send_signal(signal.SIGSTOP)
    orphan = fleet.create("r-orphan", training_file, _hp(SNUG, 1))
    fleet.wait("r-orphan placed on the frozen worker", lambda: fleet.row(orphan).attempt == 1, 30)
    # The placement commits before its task is queued: flush only once the task is in Redis.
    fleet.wait("r-orphan's task queued", lambda: client.zcard(queue_name("w24")) >= 1, 30)
    client.flushall()
    fleet.procs["w24"].send_signal(signal.SIGCONT)

    fleet.wait("every job to finish", _done(fleet, running, queued, orphan), 300)
    for job_id in (running, queued, orphan):
        job = fleet.row(job_id)
        assert job.status == jobs.SUCCEEDED, (job_id, job.error, fleet.messages(job_id), fleet.logs())
        assert fleet.messages(job_id).count("The job has successfully completed") == 1
    assert fleet.row(running).attempt == 1  # never interrupted: Redis is not on the training path
    orphan_log = fleet.messages(orphan)
    assert fleet.row(orphan).attempt == 2 and any(
        "stopped renewing the lease of attempt 1" in m for m in orphan_log
    )
