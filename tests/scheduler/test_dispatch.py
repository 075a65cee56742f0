"""validating_files → queued → running, against real Redis and SQLite: the arq task lands on the chosen
worker's queue as JSON, and the DB (not Redis) decides what runs, with memory reserved per GPU."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest
from arq.connections import ArqRedis
from sqlalchemy.engine import Engine
from sqlmodel import select

from core import jobs
from core.db import session_scope
from core.model_registry import register_model
from core.models import File
from core.queue import Device, WorkerInfo, publish_worker, queue_name
from core.redis_embedded import EmbeddedRedis
from core.settings import Settings
from core.storage import Storage
from scheduler.dispatch import claim, place_queued, validate_pending
from scheduler.main import Scheduler, connect_redis
from tests.scheduler.factories import chat_rows, get_job, make_file, make_job, make_org, messages
from tests.support.model_configs import LLAMA_3_1_8B, write_config

GPU_24 = Device(index=0, name="A10-24GB", total_mb=24576, free_mb=24576)


async def _worker(
    redis: ArqRedis, worker_id: str = "w1", *, max_jobs: int = 1, ttl_s: float = 30
) -> WorkerInfo:
    info = WorkerInfo(id=worker_id, max_jobs=max_jobs, gpus=[GPU_24])
    await publish_worker(redis, info, ttl_s=ttl_s)
    return info


async def test_validating_to_queued_to_running_enqueues_json_train_task(
    engine: Engine, storage: Storage, arq_redis: ArqRedis, settings: Settings
) -> None:
    org = make_org(engine)
    training = make_file(engine, storage, org, chat_rows(12))
    validation = make_file(engine, storage, org, chat_rows(4))
    job_id = make_job(engine, org, training, validation_file=validation)
    await _worker(arq_redis, "w1")

    result = await Scheduler(engine, arq_redis, settings).tick()

    assert result.validated == 1 and [(p.job_id, p.attempt, p.worker_id) for p in result.placed] == [
        (job_id, 1, "w1")
    ]
    job = get_job(engine, job_id)
    assert (job.status, job.attempt, job.worker_id) == (jobs.RUNNING, 1, "w1")
    assert job.started_at is not None and job.lease_expires_at is not None
    # The estimate (demo-tiny's shape, 12 examples) is reserved on the worker's GPU.
    assert job.estimated_vram_mb and job.reserved_mb == job.estimated_vram_mb
    assert (job.gpu_index, job.gpu_name) == (0, "A10-24GB")
    texts = messages(engine, job_id)
    assert texts[:3] == [
        f"Created fine-tuning job: {job_id}",
        "Validated training file: 12 examples",
        "Validated validation file: 4 examples",
    ]
    # These tests register demo-tiny's config.json only: no tokenizer to count with, and the job says so.
    assert texts[3].startswith("Tokens not counted (the model directory 'demo-tiny' has no tokenizer.json")
    assert texts[4].startswith("Estimated GPU memory: ~")
    assert texts[5:] == [
        "Job queued",
        f"Placed on A10-24GB #0 of worker w1: ~{job.reserved_mb / 1024:.1f} GB reserved of 24 GB",
        "Fine-tuning job started",
    ]
    # The task is on w1's queue, under an idempotent id, and its payload is JSON (not a pickle).
    assert await arq_redis.zrange(queue_name("w1"), 0, -1) == [f"{job_id}:1".encode()]
    payload = json.loads(await arq_redis.get(f"arq:job:{job_id}:1"))
    assert payload["f"] == "train" and payload["k"] == {"job_id": job_id, "attempt": 1}


async def test_missing_or_foreign_files_fail_the_job_with_the_param(
    engine: Engine, storage: Storage, arq_redis: ArqRedis, settings: Settings
) -> None:
    org, other = make_org(engine, "org-a"), make_org(engine, "org-b")
    training = make_file(engine, storage, org, chat_rows(12))
    foreign = make_file(engine, storage, other, chat_rows(12))
    deleted = make_file(engine, storage, org, chat_rows(4))
    with session_scope(engine) as session:
        session.exec(select(File).where(File.id == deleted)).one().deleted_at = 1
    foreign_job = make_job(engine, org, foreign)
    deleted_validation_job = make_job(engine, org, training, validation_file=deleted)

    assert validate_pending(engine, settings) == 2

    failed = get_job(engine, foreign_job)
    assert failed.status == jobs.FAILED and failed.finished_at is not None
    assert failed.error == {
        "code": "invalid_training_file",
        "message": f"The training file {foreign} no longer exists.",
        "param": "training_file",
    }
    failed = get_job(engine, deleted_validation_job)
    assert failed.status == jobs.FAILED and failed.error and failed.error["param"] == "validation_file"
    assert messages(engine, deleted_validation_job)[-1] == f"The validation file {deleted} no longer exists."


async def test_a_job_stays_queued_without_a_live_worker_with_room(
    engine: Engine, storage: Storage, arq_redis: ArqRedis, settings: Settings
) -> None:
    org = make_org(engine)
    training = make_file(engine, storage, org, chat_rows(12))
    first, second = make_job(engine, org, training), make_job(engine, org, training)
    scheduler = Scheduler(engine, arq_redis, settings)

    assert (await scheduler.tick()).placed == []  # no worker at all
    assert get_job(engine, first).status == jobs.QUEUED

    await _worker(arq_redis, "dead", ttl_s=0.05)  # a heartbeat that has expired
    await asyncio.sleep(0.2)
    assert (await scheduler.tick()).placed == []

    await _worker(arq_redis, "w1", max_jobs=1)  # room for one: the oldest goes first
    assert [p.job_id for p in (await scheduler.tick()).placed] == [first]
    assert (await scheduler.tick()).placed == []  # w1 is full while the DB says it holds `first`
    assert get_job(engine, second).status == jobs.QUEUED and get_job(engine, second).attempt == 0

    with session_scope(engine) as session:  # the runner of `first` finishes and releases its slot
        jobs.transition(
            session, job_id=first, from_status=[jobs.RUNNING], to_status=jobs.CANCELLED, worker_id=None
        )
    assert [p.job_id for p in (await scheduler.tick()).placed] == [second]


async def test_a_failed_enqueue_puts_the_job_back_in_the_queue(
    engine: Engine, storage: Storage, tmp_path_factory: pytest.TempPathFactory, settings: Settings
) -> None:
    org = make_org(engine)
    job_id = make_job(engine, org, make_file(engine, storage, org, chat_rows(12)), status=jobs.QUEUED)
    with EmbeddedRedis(tmp_path_factory.mktemp("doomed-redis"), appendonly=False) as server:
        redis = await connect_redis(server.url)
    # Redis is gone now: the claim succeeds in the DB, the enqueue fails, and the claim is undone.
    placed = await place_queued(engine, redis, [WorkerInfo(id="w1", gpus=[GPU_24])], settings=settings)
    await redis.close(close_connection_pool=True)

    assert placed == []
    job = get_job(engine, job_id)
    assert (job.status, job.worker_id, job.attempt, job.lease_expires_at) == (jobs.QUEUED, None, 1, None)
    assert messages(engine, job_id)[-2:] == [
        "Fine-tuning job started",
        "Could not start on a worker (ConnectionError); job queued again",
    ]


def test_claims_racing_on_one_job_place_it_once(engine: Engine, storage: Storage) -> None:
    org = make_org(engine)
    job_id = make_job(engine, org, make_file(engine, storage, org, chat_rows(12)), status=jobs.QUEUED)
    job = get_job(engine, job_id)
    workers = [WorkerInfo(id=f"w{i}") for i in range(8)]
    barrier = threading.Barrier(len(workers))
    wins: list[int | None] = []

    def race(worker: WorkerInfo) -> None:
        barrier.wait()
        wins.append(claim(engine, job, worker))

    threads = [threading.Thread(target=race, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(wins, key=lambda w: w or 0) == [None] * 7 + [1]
    assert messages(engine, job_id).count("Fine-tuning job started") == 1


async def test_a_waiting_job_gets_its_place_a_start_forecast_and_one_reason(
    engine: Engine, storage: Storage, arq_redis: ArqRedis, settings: Settings
) -> None:
    org = make_org(engine)
    training = make_file(engine, storage, org, chat_rows(12))
    running = make_job(engine, org, training)
    await _worker(arq_redis, "w1", max_jobs=1)
    scheduler = Scheduler(engine, arq_redis, settings)
    await scheduler.tick()
    with session_scope(engine) as session:  # the running job reports it will finish in 10 minutes
        jobs.update_fenced(session, job_id=running, attempt=1, estimated_finish=int(time.time()) + 600)
    behind = [make_job(engine, org, training), make_job(engine, org, training)]
    for _ in range(3):
        scheduler._forecast_at = 0.0  # forecast on every tick here
        await scheduler.tick()

    first, second = (get_job(engine, job_id) for job_id in behind)
    assert (first.status, first.queue_position, second.queue_position) == (jobs.QUEUED, 1, 2)
    assert first.wait_reason == "Waiting: every GPU worker is at its job limit."
    assert first.estimated_start_at == pytest.approx(time.time() + 600, abs=30)
    # The second starts when the first ends: its own steps at the default rate (no history yet).
    assert second.estimated_start_at is not None and second.estimated_start_at > first.estimated_start_at
    assert messages(engine, behind[0]).count(first.wait_reason) == 1  # said once, not once per tick


async def test_a_job_too_big_for_the_live_gpus_waits_while_a_bigger_worker_may_come_back(
    engine: Engine, storage: Storage, arq_redis: ArqRedis, settings: Settings
) -> None:
    from scheduler.dispatch import FleetMemory

    org = make_org(engine)
    job_id = make_job(
        engine, org, make_file(engine, storage, org, chat_rows(12)),
        # ~32 GB even for demo-tiny's shape; an explicit micro-batch, so none smaller is tried
        hyperparameters={"batch_size": 8, "micro_batch_size": 8, "max_seq_length": 262144},
    )  # fmt: skip
    validate_pending(engine, settings)
    big = WorkerInfo(id="big", gpus=[Device(index=0, name="H100-80GB", total_mb=81920, free_mb=81920)])
    small = WorkerInfo(id="small", gpus=[GPU_24])
    memory = FleetMemory(window_s=60)
    memory.started -= 120  # watched long enough
    memory.observe([big, small])
    # The big worker has dropped out of the registry (say Redis restarted) and it is busy anyway.
    assert await place_queued(engine, arq_redis, [small], settings=settings, memory=memory) == []
    job = get_job(engine, job_id)
    assert (
        job.status == jobs.QUEUED
        and job.wait_reason
        and job.wait_reason.startswith("No live GPU can hold it")
    )
    # Once it has been gone for a whole window, the job is impossible: it fails with the numbers.
    memory.seen["big"] = (memory.seen["big"][0] - 120, big)
    assert await place_queued(engine, arq_redis, [small], settings=settings, memory=memory) == []
    job = get_job(engine, job_id)
    assert job.status == jobs.FAILED and job.error and job.error["code"] == "insufficient_gpu_memory"
    assert "more than the largest GPU of this fleet holds (24 GB)" in job.error["message"]


async def test_a_micro_batch_no_gpu_holds_is_lowered_to_one_that_fits_with_more_accumulation(
    engine: Engine, storage: Storage, arq_redis: ArqRedis, settings: Settings, tmp_path: Path
) -> None:
    """Llama-3.1-8B's shape, batch 8 of 2048 tokens: the auto micro-batch of 4 needs ~39 GB, 2 needs ~29 GB and
    1 needs ~23.5 GB. On a fleet of 24 GB GPUs the job runs as 1 x 8 accumulation steps, and the worker is told."""
    register_model(
        settings, "llama-8b", tmp_path / "llama-8b", config=write_config(tmp_path / "cfg", LLAMA_3_1_8B)
    )
    org = make_org(engine)
    job_id = make_job(
        engine, org, make_file(engine, storage, org, chat_rows(12)), model="llama-8b",
        hyperparameters={"batch_size": 8, "max_seq_length": 2048},
    )  # fmt: skip
    validate_pending(engine, settings)
    queued = get_job(engine, job_id)
    record = queued.vram_estimate or {}
    assert (record["batch_size"], record["micro_batch_size"], record["gradient_accumulation_steps"]) == (
        8,
        4,
        2,
    )
    fallbacks = {micro: gpu_mb for micro, gpu_mb, _cpu in record["micro_batch_fallbacks"]}
    assert set(fallbacks) == {2, 1} and queued.estimated_vram_mb
    assert queued.estimated_vram_mb > GPU_24.total_mb and fallbacks[2] > GPU_24.total_mb >= fallbacks[1]

    worker = await _worker(arq_redis, "w1")
    placed = await place_queued(engine, arq_redis, [worker], settings=settings)

    assert [(p.job_id, p.reserved_mb) for p in placed] == [(job_id, fallbacks[1])]
    job = get_job(engine, job_id)
    record = job.vram_estimate or {}
    assert (record["micro_batch_size"], record["gradient_accumulation_steps"]) == (1, 8)
    assert record["lowered_from_micro_batch_size"] == 4
    assert job.reserved_mb == job.estimated_vram_mb == fallbacks[1]
    assert any(
        m.startswith("Micro-batch lowered from 4 to 1 (8 accumulation steps")
        for m in messages(engine, job_id)
    )
    # What the worker will train with: the same batch, the micro-batch the memory was reserved for.
    from core.hyperparameters import SupervisedHyperparameters, resolve_hyperparameters

    resolved = resolve_hyperparameters(
        "supervised", SupervisedHyperparameters.model_validate(job.hyperparameters), n_examples=12,
        max_micro_batch=record["micro_batch_size"],
    )  # fmt: skip
    assert (resolved.batch_size, resolved.micro_batch_size, resolved.gradient_accumulation_steps) == (8, 1, 8)


async def test_a_model_with_a_tokenizer_gets_its_files_counted_and_sized_by_tokens(
    engine: Engine, storage: Storage, settings: Settings, demo_model_dir: Path, tmp_path: Path
) -> None:
    """With the real demo-tiny registered, validation counts the files with its tokenizer and template: the
    counts go on the job and in its events, and an "auto" max_seq_length comes from the longest example's
    tokens (+5%, to a multiple of 64) instead of the byte bound."""
    from api.services.fine_tuning import job_object
    from core.hyperparameters import data_sized_max_seq_length, token_sized_max_seq_length
    from core.token_counts import count_file_tokens

    register_model(settings, "demo-tiny", demo_model_dir)
    org = make_org(engine)
    rows = chat_rows(12)
    training = make_file(engine, storage, org, rows)
    job_id = make_job(engine, org, training)
    validate_pending(engine, settings)

    job = get_job(engine, job_id)
    assert job.status == jobs.QUEUED and job.token_counts is not None
    local = tmp_path / "check.jsonl"
    local.write_text("".join(json.dumps(r) + "\n" for r in rows))
    expected = count_file_tokens(local, "chat", demo_model_dir, max_seq_length=1024)
    assert job.token_counts["training"] == expected.as_dict()
    assert job_object(job).token_counts == job.token_counts
    record = job.vram_estimate or {}
    sized = token_sized_max_seq_length(expected.longest_example_tokens)
    assert (
        record["max_seq_length"] == sized < data_sized_max_seq_length(max(len(json.dumps(r)) for r in rows))
    )
    texts = messages(engine, job_id)
    assert f"{expected.total_tokens:,} tokens ({expected.trained_tokens:,} trained)" in texts[1]


async def test_examples_longer_than_max_seq_length_fail_the_job_at_validation_naming_their_lines(
    engine: Engine, storage: Storage, settings: Settings, demo_model_dir: Path
) -> None:
    register_model(settings, "demo-tiny", demo_model_dir)
    org = make_org(engine)
    rows = chat_rows(12)
    long_reply = " ".join(f"w{i}" for i in range(80))
    for index in (3, 7):
        rows[index]["messages"][1]["content"] = long_reply
    job_id = make_job(
        engine, org, make_file(engine, storage, org, rows), hyperparameters={"max_seq_length": 64}
    )
    assert validate_pending(engine, settings) == 1
    job = get_job(engine, job_id)
    assert job.status == jobs.FAILED and job.error is not None
    assert job.error["code"] == "examples_too_long" and job.error["param"] == "training_file"
    assert "2 examples of the training file are longer than max_seq_length 64 tokens" in job.error["message"]
    assert "(lines 4, 8;" in job.error["message"]
