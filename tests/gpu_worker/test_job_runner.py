"""One attempt of a job, end to end on demo-tiny, in this process (the worker runs the same code in a child):
success with events, checkpoints and results.csv; cancel; pause then resume; worker shutdown; bad data."""

from __future__ import annotations

import csv
import io
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core import jobs
from core.db import session_scope
from core.model_registry import register_model
from core.models import File, FineTunedModel, JobCheckpoint, now_s
from core.queue import WorkerInfo
from core.settings import Settings
from core.storage import Storage
from gpu_worker.db_reporter import MANIFEST, checkpoint_prefix
from gpu_worker.job_runner import Attempt, run_attempt
from gpu_worker.pinning import runner_pinning
from scheduler.dispatch import claim
from scheduler.placement import Device as PlacedDevice
from scheduler.placement import WorkerView
from tests.scheduler.factories import chat_rows, events, get_job, make_file, make_job, make_org, messages

pytestmark = pytest.mark.slow
ORG = "org-runner"


@pytest.fixture
def settings(tmp_path: Path, demo_model_dir: Path) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", model_registry=tmp_path / "models.json")
    register_model(settings, "demo-tiny", demo_model_dir)
    return settings


@pytest.fixture
def place(engine: Engine) -> Callable[[str], int]:
    """Do what the scheduler does: claim the queued job for a worker. Returns the attempt."""

    def place(job_id: str) -> int:
        attempt = claim(engine, get_job(engine, job_id), WorkerInfo(id="w-test"))
        assert attempt is not None
        return attempt

    return place


def _api_transition(
    engine: Engine, job_id: str, from_status: list[str], to_status: str, **fields: Any
) -> None:
    """What the jobs API does on cancel / pause / resume."""
    with session_scope(engine) as session:
        assert jobs.transition(session, job_id=job_id, from_status=from_status, to_status=to_status, **fields)


def _start(
    settings: Settings,
    job_id: str,
    attempt: int,
    shutdown: threading.Event | None = None,
    on_tokens: Callable[[int, float], None] | None = None,
) -> threading.Thread:
    thread = threading.Thread(
        target=run_attempt, args=(settings, job_id, attempt, shutdown, on_tokens), daemon=True
    )
    thread.start()
    return thread


def _wait_for_step(engine: Engine, job_id: str, step: int, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while (current := get_job(engine, job_id).step) < step:
        assert time.monotonic() < deadline, messages(engine, job_id)
        time.sleep(0.02)
    return current


def _checkpoints(engine: Engine, job_id: str) -> list[JobCheckpoint]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(JobCheckpoint)
                .where(JobCheckpoint.job_id == job_id, col(JobCheckpoint.deleted_at).is_(None))
                .order_by(col(JobCheckpoint.step_number))
            ).all()
        )


def test_a_supervised_job_succeeds_with_events_checkpoints_results_and_a_model(
    settings: Settings, engine: Engine, storage: Storage, place: Callable[[str], int]
) -> None:
    org = make_org(engine, ORG)
    training = make_file(engine, storage, org, chat_rows(12))
    validation = make_file(engine, storage, org, chat_rows(4, start=100))
    job_id = make_job(
        engine, org, training, validation_file=validation, suffix="unit", seed=3, status=jobs.QUEUED,
        hyperparameters={"n_epochs": 2, "batch_size": 4},
    )  # fmt: skip
    attempt = place(job_id)

    run_attempt(settings, job_id, attempt)

    job = get_job(engine, job_id)
    model = f"ft:demo-tiny:{ORG}:unit:{job_id}"
    assert job.status == jobs.SUCCEEDED, job.error
    assert (job.fine_tuned_model, job.worker_id, job.estimated_finish) == (model, None, None)
    assert job.trained_tokens and job.trained_tokens > 0 and job.finished_at
    assert (job.step, job.total_steps) == (6, 6)  # 12 examples / batch 4 x 2 epochs
    assert job.resolved_hyperparameters and job.resolved_hyperparameters["n_epochs"] == 2

    log = events(engine, job_id)
    metrics = [e for e in log if e.type == "metrics"]
    assert [e.data["step"] for e in metrics if e.data and "train_loss" in e.data] == [1, 2, 3, 4, 5, 6]
    first = metrics[0]
    assert first.message.startswith("Step 1/6: training loss=") and first.data
    assert {"step", "total_steps", "train_loss", "train_mean_token_accuracy"} <= set(first.data)
    assert any(e.data and "valid_loss" in e.data for e in metrics)
    texts = [e.message for e in log]
    assert "Checkpoint created at step 6" in texts
    assert texts[-2:] == [f"New fine-tuned model created: {model}", "The job has successfully completed"]

    # A checkpoint every step (auto: ~10 per run), the newest 3 kept; older ones gone from storage too.
    checkpoints = _checkpoints(engine, job_id)
    assert [c.step_number for c in checkpoints] == [4, 5, 6]
    assert checkpoints[-1].fine_tuned_model_checkpoint == f"{model}:ckpt-step-6"
    assert {"step", "train_loss", "full_valid_loss", "full_valid_mean_token_accuracy"} <= set(
        checkpoints[-1].metrics
    )
    assert storage.exists(f"{checkpoint_prefix(job_id, 6, 1)}/{MANIFEST}")
    assert storage.list_keys(checkpoint_prefix(job_id, 3, 1) + "/") == []
    assert checkpoints[-1].storage_prefix == checkpoint_prefix(job_id, 6, 1)

    with Session(engine) as session:
        row = session.exec(select(FineTunedModel).where(FineTunedModel.id == model)).one()
        assert (row.job_id, row.base_model, row.organization_id) == (job_id, "demo-tiny", org)
    # Under the attempt's own prefix: a late attempt of the same job could never overwrite it.
    assert row.adapter_prefix == f"jobs/{job_id}/attempt-1/adapter/"
    assert storage.exists(f"{row.adapter_prefix}adapter_model.safetensors")
    with Session(engine) as session:
        results = session.exec(select(File).where(File.id == job.result_files[0])).one()
    assert (results.purpose, results.status, results.filename) == (
        "fine-tune-results",
        "processed",
        "results.csv",
    )
    rows = list(csv.DictReader(io.StringIO(storage.get_bytes(results.storage_key).decode())))
    assert list(rows[0]) == [
        "step",
        "train_loss",
        "train_accuracy",
        "valid_loss",
        "valid_mean_token_accuracy",
    ]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6] and rows[-1]["train_loss"]
    assert not (settings.data_dir / "work" / job_id / "1").exists()


def test_cancel_mid_run_stops_at_once_and_leaves_no_model(
    settings: Settings, engine: Engine, storage: Storage, place: Callable[[str], int]
) -> None:
    org = make_org(engine, ORG)
    job_id = make_job(
        engine, org, make_file(engine, storage, org, chat_rows(12)), status=jobs.QUEUED,
        hyperparameters={"n_epochs": 50, "batch_size": 2, "checkpoint_every_steps": 1000},
    )  # fmt: skip
    thread = _start(settings, job_id, place(job_id))
    _wait_for_step(engine, job_id, 2)

    _api_transition(
        engine, job_id, list(jobs.ACTIVE), jobs.CANCELLED, finished_at=now_s(), message="Job cancelled"
    )
    cancelled_at = time.monotonic()
    thread.join(timeout=60)

    assert not thread.is_alive() and time.monotonic() - cancelled_at < 5
    job = get_job(engine, job_id)
    assert (job.status, job.fine_tuned_model, job.worker_id, job.result_files) == (
        jobs.CANCELLED,
        None,
        None,
        [],
    )
    texts = messages(engine, job_id)
    cancel = texts.index("Job cancelled")
    assert len(texts) == cancel + 2 and texts[-1].startswith("Job cancelled at step "), texts[cancel:]
    assert int(texts[-1].rsplit(" ", 1)[1]) < 300  # far from the 300 steps it would have run
    with Session(engine) as session:
        assert session.exec(select(FineTunedModel)).all() == []
    assert storage.list_keys(f"jobs/{job_id}/") == []


def test_pause_checkpoints_then_resume_continues_from_that_step(
    settings: Settings, engine: Engine, storage: Storage, place: Callable[[str], int]
) -> None:
    org = make_org(engine, ORG)
    job_id = make_job(
        engine, org, make_file(engine, storage, org, chat_rows(12)), status=jobs.QUEUED, seed=7,
        hyperparameters={"n_epochs": 30, "batch_size": 2, "checkpoint_every_steps": 1000},
    )  # fmt: skip
    first: list[int] = []  # tokens each attempt reports for the worker's metrics
    thread = _start(settings, job_id, place(job_id), on_tokens=lambda tokens, _rate: first.append(tokens))
    _wait_for_step(engine, job_id, 3)
    _api_transition(engine, job_id, [jobs.RUNNING], jobs.PAUSED, message="Job paused")
    thread.join(timeout=60)

    job = get_job(engine, job_id)
    assert (job.status, job.worker_id) == (jobs.PAUSED, None)
    paused = [m for m in messages(engine, job_id) if m.startswith("Paused at step ")]
    assert len(paused) == 1
    step = int(paused[0].rsplit(" ", 1)[1])
    assert [c.step_number for c in _checkpoints(engine, job_id)] == [step]

    # A newer checkpoint whose upload never finished (no manifest) must not be resumed from.
    broken = checkpoint_prefix(job_id, step + 1, 1)
    storage.put_bytes(f"{broken}/adapter_model.safetensors", b"half")
    with session_scope(engine) as session:
        session.add(
            JobCheckpoint(
                id="ftckpt-broken", job_id=job_id, organization_id=org, step_number=step + 1,
                fine_tuned_model_checkpoint="x", storage_prefix=broken,
            )
        )  # fmt: skip

    _api_transition(engine, job_id, [jobs.PAUSED], jobs.QUEUED, message="Job resumed")
    attempt = place(job_id)
    assert attempt == 2
    second: list[int] = []
    run_attempt(settings, job_id, attempt, on_tokens=lambda tokens, _rate: second.append(tokens))

    job = get_job(engine, job_id)
    assert job.status == jobs.SUCCEEDED, job.error
    log = events(engine, job_id)
    texts = [e.message for e in log]
    resumed = texts.index(f"Resumed from checkpoint at step {step}")
    assert texts.index("Resumed on worker w-test (attempt 2)") < resumed
    after = [e.data["step"] for e in log[resumed:] if e.type == "metrics" and e.data]
    assert after and min(after) == step + 1 and max(after) == job.total_steps == 180
    # The resumed attempt counts only what it trained: from its checkpoint's tokens to the job's total.
    resumed_tokens = log[resumed].data["trained_tokens"]
    assert 0 < sum(first) <= resumed_tokens < job.trained_tokens
    assert sum(second) == job.trained_tokens - resumed_tokens


def test_worker_shutdown_checkpoints_and_requeues_the_job(
    settings: Settings, engine: Engine, storage: Storage, place: Callable[[str], int]
) -> None:
    org = make_org(engine, ORG)
    job_id = make_job(
        engine, org, make_file(engine, storage, org, chat_rows(12)), status=jobs.QUEUED,
        hyperparameters={"n_epochs": 50, "batch_size": 2, "checkpoint_every_steps": 1000},
    )  # fmt: skip
    shutdown = threading.Event()
    thread = _start(settings, job_id, place(job_id), shutdown)
    _wait_for_step(engine, job_id, 2)
    shutdown.set()  # what SIGTERM does in the runner process
    thread.join(timeout=60)

    job = get_job(engine, job_id)
    assert (job.status, job.worker_id, job.attempt) == (jobs.QUEUED, None, 1)
    requeued = messages(engine, job_id)[-1]
    assert requeued.startswith("Worker stopping: job re-queued at step ")
    assert [c.step_number for c in _checkpoints(engine, job_id)] == [int(requeued.rsplit(" ", 1)[1])]


def test_too_long_examples_fail_the_job_naming_their_lines(
    settings: Settings, engine: Engine, storage: Storage, place: Callable[[str], int]
) -> None:
    org = make_org(engine, ORG)
    rows = chat_rows(12)
    for line in (5, 9):  # 1-based line numbers in the file
        rows[line - 1]["messages"][1]["content"] = "a very long answer " * 40
    job_id = make_job(
        engine, org, make_file(engine, storage, org, rows), status=jobs.QUEUED,
        hyperparameters={"max_seq_length": 128},
    )  # fmt: skip
    run_attempt(settings, job_id, place(job_id))

    job = get_job(engine, job_id)
    assert job.status == jobs.FAILED and job.error and job.worker_id is None
    assert (job.error["code"], job.error["param"]) == ("invalid_training_file", "training_file")
    assert "line 5" in job.error["message"] and "line 9" in job.error["message"]
    assert "Traceback" not in job.error["message"]
    assert messages(engine, job_id)[-1] == job.error["message"]


def test_an_attempt_that_lost_its_job_changes_nothing(
    settings: Settings, engine: Engine, storage: Storage, place: Callable[[str], int]
) -> None:
    org = make_org(engine, ORG)
    job_id = make_job(engine, org, make_file(engine, storage, org, chat_rows(12)), status=jobs.QUEUED)
    attempt = place(job_id)
    _api_transition(engine, job_id, [jobs.RUNNING], jobs.CANCELLED, message="Job cancelled")
    before = messages(engine, job_id)

    run_attempt(settings, job_id, attempt)

    assert messages(engine, job_id) == before
    job = get_job(engine, job_id)
    assert (job.status, job.worker_id) == (jobs.CANCELLED, None)


def test_the_runner_caps_its_cuda_memory_at_the_reservation_and_says_so(
    settings: Settings, engine: Engine, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner's side of GPU pinning, in this process: the worker's pinning environment in, the cap applied
    and recorded in the job's events. torch.cuda stands in for an 80 GB GPU here (the real device is checked by
    test_gpu_pinning.py on a CUDA machine): this checks the fraction and the event, not the allocator."""
    import torch

    worker = WorkerInfo(id="w-test")
    gpu = PlacedDevice(WorkerView(worker.id, worker.queue, 1, 0), 1, "H100-80GB", 81920, 81920, "gpu")
    org = make_org(engine, ORG)
    job_id = make_job(engine, org, make_file(engine, storage, org, chat_rows(2)), status=jobs.QUEUED)
    attempt = claim(engine, get_job(engine, job_id), worker, device=gpu, reserve_mb=20480, capacity_mb=81920)
    assert attempt == 1
    for name, value in runner_pinning(1, total_mb=81920, reserved_mb=20480, visible=["4", "5"]).items():
        monkeypatch.setenv(name, value)  # what the worker puts in the runner's environment
    applied: list[tuple[float, int]] = []
    total = 81559 * 2**20  # what torch reports for an H100 80GB: a little less than its name says
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda *_: type("P", (), {"total_memory": total})
    )
    monkeypatch.setattr(
        torch.cuda,
        "set_per_process_memory_fraction",
        lambda fraction, device: applied.append((fraction, device)),
    )

    runner = Attempt(settings, engine, storage, job_id, attempt, threading.Event())
    assert runner._load_job() is not None
    runner._apply_pinning()

    assert applied == [(20480 / 81559, 0)]  # the reservation in bytes, of the device as torch sees it
    (event,) = [e for e in events(engine, job_id) if e.message.startswith("Pinned to")]
    assert event.message == (
        "Pinned to GPU #1 (CUDA_VISIBLE_DEVICES=5); memory capped at its reservation, 20480 MiB "
        "(25.1% of NVIDIA H100 80GB HBM3)"
    )
    assert event.data == {
        "gpu_index": 1,
        "cuda_visible_devices": "5",
        "memory_cap_mb": 20480,
        "memory_fraction": round(20480 / 81559, 6),
        "device": "NVIDIA H100 80GB HBM3",
    }
