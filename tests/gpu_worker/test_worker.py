"""`ftserve worker` as a real process on a real Redis: it registers and heartbeats, trains what the scheduler
places on its queue in a child process pinned to the GPU it was placed on, and on SIGTERM leaves the registry
and hands its job back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from core import jobs
from core.model_registry import register_model
from core.models import TrainingUsage
from core.pricing import training_cost
from core.queue import Device, WorkerInfo, live_workers, registry_key
from core.settings import Settings
from core.storage import make_storage_from_settings
from gpu_worker.pinning import RUNNER_GPU_INDEX, RUNNER_MEMORY_CAP_MB, DeviceNotVisible
from gpu_worker.worker import (
    WorkerState,
    detect_devices,
    parse_nvidia_smi,
    parse_simulated_gpus,
    visible_gpus,
)
from scheduler.dispatch import claim
from scheduler.main import Scheduler, connect_redis
from scheduler.placement import Device as PlacedDevice
from scheduler.placement import WorkerView
from tests.scheduler.factories import chat_rows, events, get_job, make_file, make_job, make_org, messages

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, demo_model_dir: Path) -> Settings:
    settings = Settings(
        data_dir=tmp_path / "data",
        redis_url=redis_url,
        model_registry=tmp_path / "models.json",
        heartbeat_interval_s=0.3,
        heartbeat_ttl_s=2.0,
    )
    register_model(settings, "demo-tiny", demo_model_dir)
    return settings


@pytest.fixture
def start_worker(settings: Settings) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """start(worker_id, **env): a worker process; an env value of None removes that variable."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(worker_id: str, **extra_env: str | None) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "FTSERVE_DATA_DIR": str(settings.data_dir),
            "FTSERVE_REDIS_URL": str(settings.redis_url),
            "FTSERVE_MODEL_REGISTRY": str(settings.model_registry),
            "FTSERVE_HEARTBEAT_INTERVAL_S": str(settings.heartbeat_interval_s),
            "FTSERVE_HEARTBEAT_TTL_S": str(settings.heartbeat_ttl_s),
        }
        for name, value in extra_env.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", "--id", worker_id], cwd=REPO_ROOT, env=env
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def _until(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _ended(engine: Engine, job_id: str) -> bool:
    return get_job(engine, job_id).status in jobs.TERMINAL


def test_a_cpu_worker_reports_its_ram_as_one_pseudo_device() -> None:
    if Path("/dev/nvidia0").exists():
        pytest.skip("this machine has a GPU")
    gpus, capabilities = detect_devices()
    assert [g.name for g in gpus] == ["cpu"]
    assert capabilities == ["bnb_4bit"]  # QLoRA on bitsandbytes' CPU backend
    assert 0 < gpus[0].free_mb <= gpus[0].total_mb


async def test_worker_registers_heartbeats_and_leaves_the_registry_on_sigterm(
    settings: Settings, start_worker: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    redis = await connect_redis(str(settings.redis_url))
    try:
        proc = start_worker("w-reg")
        deadline = time.monotonic() + 30
        while not await live_workers(redis):
            assert time.monotonic() < deadline, "the worker never registered"
            await asyncio.sleep(0.05)
        (info,) = await live_workers(redis)
        assert info.id == "w-reg"
        assert info.max_jobs == 1 and info.running_jobs == [] and info.gpus
        first_beat = info.heartbeat_at
        assert 0 < await redis.pttl(registry_key("w-reg")) <= 2000
        await asyncio.sleep(1.0)
        (info,) = await live_workers(redis)
        assert info.heartbeat_at > first_beat

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert await live_workers(redis) == []
    finally:
        await redis.close(close_connection_pool=True)


@pytest.mark.slow
async def test_scheduler_and_workers_train_a_job_across_a_worker_restart(
    settings: Settings, engine: Engine, start_worker: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    storage = make_storage_from_settings(settings)
    org = make_org(engine, "org-worker")
    job_id = make_job(
        engine, org, make_file(engine, storage, org, chat_rows(12)), suffix="w",
        hyperparameters={"n_epochs": 40, "batch_size": 1, "checkpoint_every_steps": 1000},
    )  # fmt: skip
    redis = await connect_redis(str(settings.redis_url))
    stop = asyncio.Event()
    scheduler = asyncio.create_task(Scheduler(engine, redis, settings).run(stop, 0.1))
    try:
        first = start_worker("w-first")
        await _until(lambda: get_job(engine, job_id).step >= 2 or _ended(engine, job_id), 90, "training")
        job = get_job(engine, job_id)
        assert (job.status, job.worker_id) == (jobs.RUNNING, "w-first"), job.error
        info = next(w for w in await live_workers(redis) if w.id == "w-first")
        assert info.running_jobs == [job_id]

        # Stopping the worker checkpoints the job and hands it back to the queue...
        first.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(first.wait, 60) == 0
        job = get_job(engine, job_id)
        assert (job.status, job.worker_id, job.attempt) == (jobs.QUEUED, None, 1), messages(engine, job_id)
        requeued = [
            m for m in messages(engine, job_id) if m.startswith("Worker stopping: job re-queued at step ")
        ]
        stopped_at = int(requeued[-1].rsplit(" ", 1)[1])

        # ...and the next live worker resumes it from that checkpoint, to the end.
        start_worker("w-second")
        await _until(
            lambda: _ended(engine, job_id) and get_job(engine, job_id).worker_id is None,
            120,
            "the job to finish",
        )
    finally:
        stop.set()
        await scheduler
        await redis.close(close_connection_pool=True)

    job = get_job(engine, job_id)
    assert job.status == jobs.SUCCEEDED, job.error
    assert (job.attempt, job.worker_id, job.fine_tuned_model) == (
        2,
        None,
        f"ft:demo-tiny:org-worker:w:{job_id}",
    )
    texts = messages(engine, job_id)
    assert f"Worker stopping: job re-queued at step {stopped_at}" in texts
    assert "Resumed on worker w-second (attempt 2)" in texts
    resumed = texts.index(f"Resumed from checkpoint at step {stopped_at}")
    after = [e.data["step"] for e in events(engine, job_id)[resumed:] if e.type == "metrics" and e.data]
    assert min(after) == stopped_at + 1 and max(after) == job.total_steps
    assert texts[-1] == "The job has successfully completed"


def _metered_tokens(engine: Engine, job_id: str) -> int:
    with Session(engine) as session:
        total = session.exec(
            select(func.sum(TrainingUsage.trained_tokens)).where(TrainingUsage.job_id == job_id)
        ).one()
    return int(total or 0)


@pytest.mark.slow
async def test_a_runner_killed_mid_training_fails_its_job_and_the_worker_lives_on(
    settings: Settings, engine: Engine, start_worker: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    import psutil

    storage = make_storage_from_settings(settings)
    org = make_org(engine, "org-worker")
    job_id = make_job(
        engine, org, make_file(engine, storage, org, chat_rows(12)),
        hyperparameters={"n_epochs": 40, "batch_size": 1, "checkpoint_every_steps": 1000},
    )  # fmt: skip
    redis = await connect_redis(str(settings.redis_url))
    stop = asyncio.Event()
    scheduler = asyncio.create_task(Scheduler(engine, redis, settings).run(stop, 0.1))
    try:
        worker = start_worker("w-oom")
        await _until(lambda: get_job(engine, job_id).step >= 2 or _ended(engine, job_id), 90, "training")
        # the attempt meters itself while it trains (every 5 s), so what it used survives the kill below
        await _until(lambda: _metered_tokens(engine, job_id) > 0, 30, "usage metered while training")
        (runner,) = psutil.Process(worker.pid).children()
        held_s = time.time() - runner.create_time()
        runner.kill()  # what the kernel's OOM killer does
        await _until(lambda: _ended(engine, job_id), 30, "the job to fail")
        job = get_job(engine, job_id)
        assert job.status == jobs.FAILED and job.worker_id is None and job.error
        assert job.error == {
            "code": "training_error",
            "message": "The training process was killed by signal 9 (SIGKILL; out of memory?).",
            "param": None,
        }
        with Session(engine) as session:
            (usage,) = session.exec(select(TrainingUsage).where(TrainingUsage.job_id == job_id)).all()
        assert (usage.attempt, usage.organization_id, usage.model) == (1, org, "demo-tiny")
        assert usage.trained_tokens > 0
        assert 0 < usage.gpu_seconds <= held_s  # up to 5 s short: the time since its last metered write
        assert usage.cost == pytest.approx(
            training_cost(settings, trained_tokens=usage.trained_tokens, gpu_seconds=usage.gpu_seconds,
                          gpu_class=usage.gpu_class), abs=1e-9,
        )  # fmt: skip
        assert worker.poll() is None and {w.id for w in await live_workers(redis)} == {"w-oom"}
    finally:
        stop.set()
        await scheduler
        await redis.close(close_connection_pool=True)


@pytest.mark.slow
async def test_a_worker_killed_with_kill_9_has_its_runner_hand_the_job_back(
    settings: Settings, engine: Engine, start_worker: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    """The kernel SIGTERMs an orphaned runner (PR_SET_PDEATHSIG): it checkpoints and re-queues its job at
    once, rather than training on with nobody renewing its lease."""
    import psutil

    storage = make_storage_from_settings(settings)
    org = make_org(engine, "org-worker")
    job_id = make_job(
        engine, org, make_file(engine, storage, org, chat_rows(12)),
        hyperparameters={"n_epochs": 40, "batch_size": 1, "checkpoint_every_steps": 1000},
    )  # fmt: skip
    redis = await connect_redis(str(settings.redis_url))
    stop = asyncio.Event()
    scheduler = asyncio.create_task(Scheduler(engine, redis, settings).run(stop, 0.1))
    try:
        worker = start_worker("w-doomed")
        await _until(lambda: get_job(engine, job_id).step >= 2 or _ended(engine, job_id), 90, "training")
        (runner,) = psutil.Process(worker.pid).children()
        stop.set()  # no re-placement: this test is about the runner alone
        worker.kill()
        await _until(
            lambda: not runner.is_running() or runner.status() == psutil.STATUS_ZOMBIE, 60, "the runner"
        )
    finally:
        stop.set()
        await scheduler
        await redis.close(close_connection_pool=True)
    job = get_job(engine, job_id)
    assert (job.status, job.worker_id) == (jobs.QUEUED, None), messages(engine, job_id)
    requeued = [
        m for m in messages(engine, job_id) if m.startswith("Worker stopping: job re-queued at step ")
    ]
    step = int(requeued[-1].rsplit(" ", 1)[1])
    assert f"Checkpoint created at step {step}" in messages(engine, job_id)


def test_nvidia_smi_output_as_seen_on_an_h200_parses() -> None:
    out = "0, NVIDIA H200, 143771, 143156, 9.0\n1, NVIDIA A100-SXM4-80GB, 81920, 80000, 8.0\n"
    (h200, cap), (a100, _) = parse_nvidia_smi(out)
    assert h200.model_dump() == {"index": 0, "name": "NVIDIA H200", "total_mb": 143771, "free_mb": 143156}
    assert cap == 9.0 and a100.index == 1 and a100.name == "NVIDIA A100-SXM4-80GB"
    assert parse_nvidia_smi("0, Some, GPU, 1000, 900, [N/A]")[0] == (
        Device(index=0, name="Some, GPU", total_mb=1000, free_mb=900),
        0.0,
    )


def test_simulated_gpus_are_parsed_and_bad_specs_refused() -> None:
    gpus, capabilities = detect_devices("H100-80GB:81920, A10-24GB:24576")
    assert [(g.index, g.name, g.total_mb, g.free_mb) for g in gpus] == [
        (0, "H100-80GB", 81920, 81920),
        (1, "A10-24GB", 24576, 24576),
    ]
    assert capabilities == ["bnb_4bit"]  # it trains on the CPU: no cuda, but bitsandbytes' CPU backend
    for bad in ("H100", "H100:", ":100", "A10:-5", "A10:lots", " , "):
        with pytest.raises(ValueError, match="FTSERVE_WORKER_GPUS"):
            parse_simulated_gpus(bad)


def test_worker_info_round_trips_through_json() -> None:
    info = WorkerInfo(id="w", capabilities=["cuda", "bf16"], labels={"zone": "a"})
    assert WorkerInfo.model_validate_json(info.model_dump_json()) == info


# -- GPU pinning -----------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_two_gpu_worker_trains_two_jobs_side_by_side_each_pinned_to_its_own_gpu(
    settings: Settings, engine: Engine, start_worker: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """The issue's "done when": a worker with two (simulated) GPUs and room for two jobs runs two jobs at once,
    each runner child with its own CUDA_VISIBLE_DEVICES. The child records what it got in the job's "Pinned
    to" event, read from its own os.environ, so this checks the environment the child really ran with (on the
    CPU here: nothing else about it changes, and no memory cap applies where there is no CUDA device)."""
    storage = make_storage_from_settings(settings)
    org = make_org(engine, "org-pin")
    hp = {"n_epochs": 8, "batch_size": 1, "checkpoint_every_steps": 1000, "eval_every_steps": 1000}
    job_ids = [
        make_job(
            engine, org, make_file(engine, storage, org, chat_rows(12)), suffix=f"pin{i}", hyperparameters=hp
        )
        for i in range(2)
    ]
    redis = await connect_redis(str(settings.redis_url))
    stop = asyncio.Event()
    scheduler = asyncio.create_task(Scheduler(engine, redis, settings).run(stop, 0.1))
    try:
        # No worker yet: the scheduler validates and sizes the jobs, and they wait for one.
        await _until(lambda: all(get_job(engine, j).estimated_vram_mb for j in job_ids), 60, "the estimates")
        need = max(int(get_job(engine, j).estimated_vram_mb or 0) for j in job_ids)
        size = need * 3 // 2  # a GPU holds one of the jobs, not both: best fit spreads them over the two
        start_worker(
            "w-pin", FTSERVE_WORKER_GPUS=f"SIM-A:{size},SIM-B:{size}", FTSERVE_WORKER_MAX_JOBS="2",
            CUDA_VISIBLE_DEVICES=None,  # the worker's own list unset: device #i is CUDA device i
        )  # fmt: skip
        await _until(
            lambda: all(_ended(engine, j) and get_job(engine, j).worker_id is None for j in job_ids),
            240,
            "both jobs to finish",
        )
    finally:
        stop.set()
        await scheduler
        await redis.close(close_connection_pool=True)

    pinned: dict[str, dict[str, object]] = {}
    seqs: dict[str, tuple[int, int]] = {}  # job → (its pin event, its completion event)
    for job_id in job_ids:
        row = get_job(engine, job_id)
        assert row.status == jobs.SUCCEEDED, (row.error, messages(engine, job_id))
        (pin,) = [e for e in events(engine, job_id) if e.message.startswith("Pinned to GPU")]
        assert pin.data == {
            "gpu_index": row.gpu_index,
            "cuda_visible_devices": str(row.gpu_index),
            "memory_cap_mb": row.reserved_mb,  # less than the GPU: capped where CUDA is...
            "memory_fraction": None,  # ...and not here, on the CPU
            "device": "cpu",
        }
        assert pin.message == (
            f"Pinned to GPU #{row.gpu_index} (CUDA_VISIBLE_DEVICES={row.gpu_index}); "
            "no CUDA device there: training on the CPU"
        )
        (done,) = [e for e in events(engine, job_id) if e.message == "The job has successfully completed"]
        pinned[job_id] = pin.data
        assert pin.seq is not None and done.seq is not None
        seqs[job_id] = (pin.seq, done.seq)
    assert sorted(str(p["cuda_visible_devices"]) for p in pinned.values()) == ["0", "1"]
    first, second = job_ids
    # Side by side: each started training before the other finished.
    assert seqs[first][0] < seqs[second][1] and seqs[second][0] < seqs[first][1], seqs


def _placed(engine: Engine, storage_settings: Settings, worker: WorkerInfo, device: Device, mb: int) -> str:
    """A job claimed on `worker`'s `device`, reserving `mb`, as the scheduler claims it."""
    org = make_org(engine, "org-pin")
    storage = make_storage_from_settings(storage_settings)
    job_id = make_job(engine, org, make_file(engine, storage, org, chat_rows(2)), status=jobs.QUEUED)
    placed = PlacedDevice(
        WorkerView(worker.id, worker.queue, worker.max_jobs, 0), device.index, device.name, device.total_mb,
        device.free_mb, "cpu" if device.name == "cpu" else "gpu",
    )  # fmt: skip
    attempt = claim(
        engine, get_job(engine, job_id), worker, device=placed, reserve_mb=mb, capacity_mb=device.total_mb
    )
    assert attempt == 1
    return job_id


def test_the_runner_env_maps_the_placement_through_the_workers_own_visible_list(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `train` adds to its runner's environment, read from the job row the scheduler claimed."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # the worker itself may use physical GPUs 2 and 3 only
    state = WorkerState(settings.model_copy(update={"worker_gpus": "A:24576,B:24576"}), "w-env")
    gpus, _ = state.devices()
    info = WorkerInfo(id="w-env", gpus=gpus, max_jobs=4)
    on_b = _placed(engine, settings, info, gpus[1], 8000)
    assert state.runner_env(on_b, 1) == {
        "CUDA_VISIBLE_DEVICES": "3",  # its #1 is the second entry of its own list
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        RUNNER_GPU_INDEX: "1",
        RUNNER_MEMORY_CAP_MB: "8000",
    }
    whole_a = _placed(engine, settings, info, gpus[0], 24576)  # the whole GPU: nothing to cap
    assert state.runner_env(whole_a, 1) == {
        "CUDA_VISIBLE_DEVICES": "2", "CUDA_DEVICE_ORDER": "PCI_BUS_ID", RUNNER_GPU_INDEX: "0",
    }  # fmt: skip
    assert state.runner_env(on_b, 2) == {}  # not this attempt (re-placed): its runner exits without training
    state.worker_id = "w-other"
    assert state.runner_env(on_b, 1) == {}  # not this worker's

    # A device that is gone from the worker's list: the job goes back to the queue, not onto GPU 0.
    state.worker_id = "w-env"
    state._devices = ([gpus[0]], [])
    with pytest.raises(DeviceNotVisible):
        state.runner_env(on_b, 1)
    state.hand_back(on_b, 1, "device #1 is not among the devices it reports")
    row = get_job(engine, on_b)
    assert (row.status, row.worker_id, row.attempt) == (jobs.QUEUED, None, 1)
    assert messages(engine, on_b)[-1] == (
        "Worker w-env cannot run it where it was placed (device #1 is not among the devices it reports): "
        "job re-queued"
    )


def test_a_cpu_worker_pins_nothing(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU for this worker, whatever the machine has
    state = WorkerState(settings, "w-cpu")
    (cpu,), _ = state.devices()
    assert cpu.name == "cpu"
    job_id = _placed(engine, settings, WorkerInfo(id="w-cpu", gpus=[cpu]), cpu, 1000)
    assert state.runner_env(job_id, 1) == {}  # its runner inherits the worker's environment unchanged


def test_a_worker_reports_only_the_gpus_its_cuda_visible_devices_names_numbered_as_cuda_does() -> None:
    smi = "0, NVIDIA H200, 143771, 143156, 9.0\n1, NVIDIA H200, 143771, 1000, 9.0\n2, NVIDIA L4, 23034, 23000, 8.9\n"
    gpus = parse_nvidia_smi(smi)
    uuids = {0: "GPU-aaaa-0000", 1: "GPU-bbbb-1111", 2: "GPU-cccc-2222"}

    def seen(visible: list[str] | None) -> list[tuple[int, str, int]]:
        return [(d.index, d.name, d.free_mb) for d, _ in visible_gpus(gpus, visible, uuids)]

    assert seen(None) == [(0, "NVIDIA H200", 143156), (1, "NVIDIA H200", 1000), (2, "NVIDIA L4", 23000)]
    assert seen(["2", "0"]) == [(0, "NVIDIA L4", 23000), (1, "NVIDIA H200", 143156)]
    assert seen(["GPU-bbbb", "GPU-cccc-2222"]) == [(0, "NVIDIA H200", 1000), (1, "NVIDIA L4", 23000)]
    assert seen([]) == seen(["-1"]) == []
    # As CUDA does: the list ends at an entry naming no GPU (or one named already, or an ambiguous prefix).
    assert (
        seen(["1", "7", "0"])
        == seen(["1", "1", "0"])
        == seen(["1", "GPU-", "0"])
        == [(0, "NVIDIA H200", 1000)]
    )
