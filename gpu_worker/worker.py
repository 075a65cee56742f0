"""`ftserve worker`: an arq worker on its own queue, `ftserve:worker:<id>`, with two tasks, `train` and
`export` (an export runs in its own child process, `gpu_worker.export_runner`, on the CPU, in one slot beside
training).

- It publishes its devices and capabilities into the Redis registry every `heartbeat_interval_s`, under a key
  that expires after `heartbeat_ttl_s`: a worker that stops heartbeating drops out of placement by itself.
  FTSERVE_WORKER_GPUS declares simulated GPUs instead of the real ones (training still runs on the CPU).
- The same heartbeat renews, in the DB, the lease of every attempt it runs; if the worker dies, the leases
  run out and the scheduler re-queues its jobs. A Redis outage stops neither training nor the renewals,
  and the worker picks up tasks again once Redis is back.
- `train(job_id, attempt)` runs one attempt in a child process (`python -m gpu_worker.job_runner`), so the
  memory torch holds is freed when the attempt ends and a crash in training can't take the worker down.
- GPU pinning: the child's environment shows it only the GPU the scheduler placed the job on
  (CUDA_VISIBLE_DEVICES, set before the child imports torch), so a multi-GPU worker trains its jobs side by
  side. The worker reports its devices numbered 0..n-1 in the order of its own CUDA_VISIBLE_DEVICES (all of
  nvidia-smi's GPUs when that is unset), and the placement's index is mapped back through that list: a worker
  started with CUDA_VISIBLE_DEVICES=2,3 runs a job placed on its #1 with CUDA_VISIBLE_DEVICES=3. A job whose
  reservation is less than its GPU has its CUDA allocator capped at the reservation
  (`pinning.apply_memory_cap`), so jobs sharing a GPU can't crowd each other out. CPU-only workers pin
  nothing. The runner records what it applied in the job's events ("Pinned to GPU ..."). See
  docs/scheduling.md#gpu-pinning.
- arq's retries are off and its timeout is days: the DB says what should run, and the scheduler re-places.
- On SIGTERM/SIGINT the worker leaves the registry at once, forwards SIGTERM to its runners (which
  checkpoint and give their jobs back to the queue), waits for them up to RUNNER_STOP_GRACE_S, then stops.
- With FTSERVE_HEALTH_PORT set it serves /healthz (the heartbeat loop runs), /readyz (DB and Redis answer)
  and /metrics. Runners report their throughput over a pipe (`job_runner.progress_writer`); the worker,
  which outlives them, keeps the Prometheus series.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Worker, func
from redis.exceptions import RedisError
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from core import exports, jobs, metrics, queue
from core.db import make_engine, session_scope
from core.leases import renew_leases
from core.models import FineTuningJob
from core.observability import HealthServer, Liveness, database_check, redis_check
from core.queue import Capability, Device, WorkerInfo
from core.settings import Settings
from gpu_worker.capabilities import bnb_4bit_available, unsloth_installed
from gpu_worker.db_reporter import ride_out_db_outage
from gpu_worker.export_runner import fail_after_exit, requeue_after_stop
from gpu_worker.job_runner import _how_it_ended, release, settle_after_exit
from gpu_worker.pinning import DeviceNotVisible, cuda_visible_list, runner_pinning

log = logging.getLogger("ftserve.worker")

RUNNER_STOP_GRACE_S = 15.0  # below `ftserve up`'s 20 s shutdown budget for all children
DEVICE_REFRESH_S = 10.0  # nvidia-smi is a subprocess: refresh free memory less often than the heartbeat


# -- devices ---------------------------------------------------------------------------------------------------


def parse_nvidia_smi(out: str) -> list[tuple[Device, float]]:
    """Lines of `index, name, memory.total, memory.free, compute_cap` (MiB, no units), e.g. as seen on an
    H200: "0, NVIDIA H200, 143771, 143156, 9.0". A GPU name may itself hold a comma."""
    gpus = []
    for line in out.strip().splitlines():
        index, *name_parts, total, free, cap = (part.strip() for part in line.split(","))
        try:
            compute_cap = float(cap)
        except ValueError:  # "[N/A]" on old drivers
            compute_cap = 0.0
        device = Device(index=int(index), name=", ".join(name_parts), total_mb=int(total), free_mb=int(free))
        gpus.append((device, compute_cap))
    return gpus


def _nvidia_gpus() -> list[tuple[Device, float]]:
    """(device, compute capability) per GPU from nvidia-smi, or [] where there is none. nvidia-smi rather
    than torch.cuda: it does not put a CUDA context (hundreds of MB) on every GPU for the worker's life."""
    if shutil.which("nvidia-smi") is None:
        return []
    query = "index,name,memory.total,memory.free,compute_cap"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return parse_nvidia_smi(out)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("nvidia-smi failed (%s); reporting no GPUs", exc)
        return []


def _nvidia_uuids() -> dict[int, str]:
    """nvidia-smi index → GPU UUID ("GPU-8f6c..."), for CUDA_VISIBLE_DEVICES entries given as UUIDs."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return {int(i): u.strip() for i, u in (line.split(",", 1) for line in out.strip().splitlines())}
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("nvidia-smi failed to list GPU UUIDs (%s)", exc)
        return {}


def visible_gpus(
    gpus: list[tuple[Device, float]], visible: list[str] | None, uuids: dict[int, str] | None = None
) -> list[tuple[Device, float]]:
    """The GPUs this worker may use: those its own CUDA_VISIBLE_DEVICES names (nvidia-smi ignores it), in that
    order and numbered 0..n-1, as CUDA numbers them for this process. Placement indices are these numbers, and
    `runner_pinning` maps them back through the same list. Numeric entries are nvidia-smi's indices (PCI bus
    order), "GPU-..." entries UUIDs or unique UUID prefixes. As CUDA does, the list ends at the first entry
    that names no GPU (or one already named). `visible` None (unset): every GPU, as nvidia-smi numbers them."""
    if visible is None:
        return gpus
    by_index = {device.index: (device, cap) for device, cap in gpus}
    out: list[tuple[Device, float]] = []
    taken: set[int] = set()
    for entry in visible:
        index: int | None = None
        if entry.isdigit():
            index = int(entry)
        elif entry.startswith("GPU-"):
            found = [i for i, uuid in (uuids or {}).items() if uuid.startswith(entry)]
            index = found[0] if len(found) == 1 else None
        if index is None or index not in by_index or index in taken:
            if not entry.startswith("-"):  # "-1" is the usual way to hide every GPU: nothing to warn about
                log.warning(
                    "CUDA_VISIBLE_DEVICES entry %r names no GPU that nvidia-smi lists (MIG instances are not "
                    "supported); it and the entries after it are ignored",
                    entry,
                )
            break
        taken.add(index)
        device, cap = by_index[index]
        out.append((device.model_copy(update={"index": len(out)}), cap))
    return out


def _memory_mb() -> tuple[int, int]:
    """(total, available) RAM in MiB."""
    try:
        fields = dict(line.split(":", 1) for line in open("/proc/meminfo").read().splitlines() if ":" in line)
        return int(fields["MemTotal"].split()[0]) // 1024, int(fields["MemAvailable"].split()[0]) // 1024
    except (OSError, KeyError, ValueError):
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page >> 20, os.sysconf("SC_AVPHYS_PAGES") * page >> 20


def parse_simulated_gpus(spec: str) -> list[Device]:
    """'H100-80GB:81920,A10-24GB:24576' -> two devices of those names and sizes (MiB), entirely free."""
    devices = []
    for index, part in enumerate(p.strip() for p in spec.split(",") if p.strip()):
        name, sep, size = part.rpartition(":")
        if not sep or not name or not size.strip().isdigit() or int(size) <= 0:
            raise ValueError(f"FTSERVE_WORKER_GPUS entry {part!r} is not NAME:MiB (e.g. 'A10-24GB:24576')")
        devices.append(Device(index=index, name=name.strip(), total_mb=int(size), free_mb=int(size)))
    if not devices:
        raise ValueError("FTSERVE_WORKER_GPUS is empty; unset it to detect the real devices")
    return devices


def detect_devices(
    simulated: str | None = None, visible: list[str] | None = None
) -> tuple[list[Device], list[Capability]]:
    """This worker's devices and capabilities. `visible`: its own CUDA_VISIBLE_DEVICES (`cuda_visible_list`)."""
    # Training on the CPU (simulated GPUs train there too): QLoRA through bitsandbytes' CPU backend.
    cpu_capabilities: list[Capability] = ["bnb_4bit"] if bnb_4bit_available() else []
    if simulated:
        return parse_simulated_gpus(simulated), cpu_capabilities
    gpus = _nvidia_gpus()
    if gpus and visible is not None:
        needs_uuids = any(not entry.isdigit() for entry in visible)
        gpus = visible_gpus(gpus, visible, _nvidia_uuids() if needs_uuids else None)
    if not gpus:
        total, available = _memory_mb()
        return [Device(index=0, name="cpu", total_mb=total, free_mb=available)], cpu_capabilities
    capabilities: list[Capability] = ["cuda"]
    if all(cap >= 8.0 for _, cap in gpus):  # Ampere and newer
        capabilities.append("bf16")
    if unsloth_installed():
        capabilities.append("unsloth")
    if bnb_4bit_available():
        capabilities.append("bnb_4bit")
    return [device for device, _ in gpus], capabilities


# -- the worker ------------------------------------------------------------------------------------------------


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerState:
    """What the heartbeat publishes (identity, devices, running jobs) and the runner processes."""

    def __init__(self, settings: Settings, worker_id: str) -> None:
        self.settings = settings
        self.worker_id = worker_id
        # (job id, attempt) → its runner process. By attempt: a lost attempt's runner may still be winding
        # down when the next attempt of the same job lands here.
        self.runners: dict[tuple[str, int], asyncio.subprocess.Process] = {}
        self.leased: set[tuple[str, int]] = set()  # attempts whose lease this worker renews
        self.stopping = False
        self.exports: dict[tuple[str, int], asyncio.subprocess.Process] = {}  # export attempt → its process
        self._devices: tuple[list[Device], list[Capability]] | None = None
        self._devices_at = 0.0
        self.visible = cuda_visible_list()  # the worker's own CUDA_VISIBLE_DEVICES: what its runners may use
        self._engine: Engine | None = None
        # /healthz: the heartbeat loop beats on every round.
        self.liveness = Liveness("heartbeat", stale_after_s=max(60.0, 10 * settings.heartbeat_interval_s))
        self.tokens_per_second: dict[tuple[str, int], float] = {}  # latest rate of each running attempt
        metrics.TRAINED_TOKENS.labels(worker=worker_id).inc(0)  # every series from the first scrape on
        self.update_gauges()

    def update_gauges(self) -> None:
        metrics.WORKER_RUNNING_JOBS.labels(worker=self.worker_id).set(len(self.runners))
        metrics.TRAINING_TOKENS_PER_SECOND.labels(worker=self.worker_id).set(
            sum(self.tokens_per_second.values())
        )

    def record_progress(self, key: tuple[str, int], tokens: int, tokens_per_second: float) -> None:
        metrics.TRAINED_TOKENS.labels(worker=self.worker_id).inc(tokens)
        self.tokens_per_second[key] = tokens_per_second
        self.update_gauges()

    @property
    def engine(self) -> Engine:
        """For settling the job of a runner that died; the runners do all other DB work."""
        if self._engine is None:
            self._engine = make_engine(self.settings.resolved_database_url)
        return self._engine

    def devices(self, *, refresh: bool = True) -> tuple[list[Device], list[Capability]]:
        """What the heartbeat reports (refreshed every DEVICE_REFRESH_S); `refresh=False`: the last report."""
        stale = time.monotonic() - self._devices_at > DEVICE_REFRESH_S
        if self._devices is None or (refresh and stale):
            self._devices = detect_devices(self.settings.worker_gpus, self.visible)
            self._devices_at = time.monotonic()
        return self._devices

    def runner_env(self, job_id: str, attempt: int) -> dict[str, str]:
        """What to add to the environment of the runner of this attempt: the pinning of its placement
        (`pinning.runner_pinning`), read from the job row the scheduler claimed. Nothing for a CPU
        pseudo-device, a placement without a device, or an attempt that is no longer this worker's (its
        runner exits at once). Raises DeviceNotVisible when the device is gone from this worker's list."""

        def read() -> tuple[int | None, int | None] | None:
            with Session(self.engine) as session:
                return session.exec(
                    select(FineTuningJob.gpu_index, FineTuningJob.reserved_mb).where(
                        FineTuningJob.id == job_id,
                        FineTuningJob.attempt == attempt,
                        FineTuningJob.worker_id == self.worker_id,
                    )
                ).first()

        placement = ride_out_db_outage("reading the job's placement", read)
        if placement is None:
            return {}
        gpu_index, reserved_mb = placement
        if gpu_index is None:
            return {}
        gpus, _ = self.devices(refresh=False)  # the list the scheduler placed by
        device = next((d for d in gpus if d.index == gpu_index), None)
        if device is None:
            raise DeviceNotVisible(f"device #{gpu_index} is not among the devices it reports")
        if device.name == "cpu":  # the RAM budget of a CPU-only worker (the scheduler's rule too)
            return {}
        return runner_pinning(
            gpu_index,
            total_mb=device.total_mb,
            reserved_mb=reserved_mb,
            visible=self.visible,
            simulated=bool(self.settings.worker_gpus),
        )

    def hand_back(self, job_id: str, attempt: int, why: str) -> None:
        """Put an attempt this worker cannot run back in the queue (fenced by attempt and owner)."""
        with session_scope(self.engine) as session:
            jobs.transition(
                session, job_id=job_id, from_status=[jobs.RUNNING], to_status=jobs.QUEUED, attempt=attempt,
                owner=self.worker_id, estimated_finish=None, level="warn",
                message=f"Worker {self.worker_id} cannot run it where it was placed ({why}): job re-queued",
            )  # fmt: skip
        release(self.engine, job_id, attempt, self.worker_id)

    def info(self) -> WorkerInfo:
        simulated = self.settings.worker_gpus
        gpus, capabilities = self.devices()
        return WorkerInfo(
            id=self.worker_id,
            gpus=gpus,
            capabilities=capabilities,
            running_jobs=sorted({job_id for job_id, _ in self.runners}),
            max_jobs=self.settings.worker_max_jobs,
            labels={"simulated_gpus": "true"} if simulated else {},
        )

    def renew_leases(self) -> list[str]:
        """Extend the lease of every attempt this worker runs (in the DB). Returns jobs it no longer holds."""
        if not self.leased:
            return []
        return renew_leases(self.engine, self.worker_id, sorted(self.leased), self.settings.lease_ttl_s)


async def _heartbeat(redis: Any, state: WorkerState) -> None:
    redis_down = False
    while not state.stopping:
        try:  # the DB first: leases must not depend on Redis being up
            lost = await asyncio.to_thread(state.renew_leases)
            if lost:
                log.warning(
                    "no longer holds %s (re-placed or reaped); its runner stops at its next step", lost
                )
        except Exception:
            log.exception("lease renewal failed")
        try:
            info = await asyncio.to_thread(state.info)
            if not state.stopping:  # never re-register after leaving
                await queue.publish_worker(redis, info, ttl_s=state.settings.heartbeat_ttl_s)
            if redis_down:
                log.info("Redis is back: registered again")
            redis_down = False
        except (RedisError, OSError) as exc:
            if not redis_down:
                log.warning("heartbeat cannot reach Redis (%s); training and leases carry on", exc)
            redis_down = True
        except Exception:
            log.exception("heartbeat failed")
        state.liveness.beat()
        await asyncio.sleep(state.settings.heartbeat_interval_s)


def _signal_runner(process: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)


async def _stop_runner(process: asyncio.subprocess.Process) -> None:
    """SIGTERM (the runner checkpoints and re-queues its job), then SIGKILL after the grace period."""
    _signal_runner(process, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout=RUNNER_STOP_GRACE_S)
    except TimeoutError:
        log.warning("runner pid %d did not stop in %.0fs; killing it", process.pid, RUNNER_STOP_GRACE_S)
        _signal_runner(process, signal.SIGKILL)
        await process.wait()


async def _read_progress(read_fd: int, state: WorkerState, key: tuple[str, int]) -> None:
    """Count what a runner reports on its progress pipe (see job_runner.progress_writer) until it closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
    )
    try:
        async for line in reader:
            try:
                report = json.loads(line)
                state.record_progress(key, int(report["tokens"]), float(report["tokens_per_second"]))
            except (ValueError, KeyError, TypeError):
                log.warning("unreadable progress line from the runner of %s: %r", key[0], line[:200])
    finally:
        transport.close()


async def train(ctx: dict[str, Any], job_id: str, attempt: int) -> int:
    """Run one attempt of a job in a child process; returns its exit code."""
    task = queue.TrainTask(job_id=job_id, attempt=attempt)
    state: WorkerState = ctx["state"]
    key = (task.job_id, task.attempt)
    state.leased.add(key)  # renew from pickup on: the runner takes a while to start
    try:
        pinning = await asyncio.to_thread(state.runner_env, task.job_id, task.attempt)
    except DeviceNotVisible as exc:
        log.error("cannot pin %s attempt %d: %s; handing it back", task.job_id, task.attempt, exc)
        state.leased.discard(key)
        await asyncio.to_thread(state.hand_back, task.job_id, task.attempt, str(exc))
        return 0
    except BaseException:
        state.leased.discard(key)  # the database stayed unreachable: the lease runs out, the job is re-placed
        raise
    read_fd, write_fd = os.pipe()  # the runner's throughput reports (Prometheus lives in this process)
    # A new session: Ctrl-C on `ftserve up` reaches the runner only through the SIGTERM we forward.
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gpu_worker.job_runner",
            "--job-id",
            task.job_id,
            "--attempt",
            str(task.attempt),
            "--progress-fd",
            str(write_fd),
            pass_fds=(write_fd,),
            start_new_session=True,
            env={**os.environ, **pinning} if pinning else None,  # before the runner imports torch
        )
    except BaseException:
        os.close(read_fd)
        state.leased.discard(key)  # nothing runs it: let the lease run out and the scheduler re-place it
        raise
    finally:
        os.close(write_fd)  # the runner holds the only write end: its exit ends the reader below
    progress = asyncio.create_task(_read_progress(read_fd, state, key))
    state.runners[key] = process
    state.update_gauges()
    pinned = f" on CUDA_VISIBLE_DEVICES={pinning['CUDA_VISIBLE_DEVICES']!r}" if pinning else ""
    log.info("training %s attempt %d in pid %d%s", task.job_id, task.attempt, process.pid, pinned)
    if state.stopping:  # picked up just as the worker began to stop
        _signal_runner(process, signal.SIGTERM)
    try:
        returncode = await process.wait()
    except asyncio.CancelledError:  # arq's timeout: don't leave the runner behind
        await asyncio.shield(_stop_runner(process))
        raise
    finally:
        state.runners.pop(key, None)
        state.leased.discard(key)
        with contextlib.suppress(Exception):  # its last lines are in the pipe already: read them all
            await asyncio.wait_for(asyncio.shield(progress), timeout=5.0)
        progress.cancel()
        state.tokens_per_second.pop(key, None)
        state.update_gauges()
    log.info("runner of %s attempt %d exited with %d", task.job_id, task.attempt, returncode)
    await asyncio.to_thread(
        settle_after_exit, state.engine, task.job_id, task.attempt, returncode, stopping=state.stopping,
        owner=state.worker_id,
    )  # fmt: skip
    return returncode


async def export(ctx: dict[str, Any], export_id: str, attempt: int) -> int:
    """Make one attempt of one export in a child process on the CPU (no GPU: placement reserves those for
    training), renewing its lease while it runs; returns its exit code. A child that dies fails the export,
    unless the worker is stopping: then the export goes back to the queue for another worker."""
    task = queue.ExportTask(export_id=export_id, attempt=attempt)
    state: WorkerState = ctx["state"]
    settings = state.settings
    key = (task.export_id, task.attempt)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gpu_worker.export_runner", "--export-id", task.export_id,
        "--attempt", str(task.attempt), start_new_session=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip
    state.exports[key] = process
    log.info("exporting %s attempt %d in pid %d", task.export_id, task.attempt, process.pid)

    def renew() -> bool:
        with session_scope(state.engine) as session:
            return exports.renew_lease(
                session,
                task.export_id,
                task.attempt,
                worker_id=state.worker_id,
                lease_ttl_s=settings.lease_ttl_s,
            )

    def settle(returncode: int) -> None:
        if state.stopping:
            requeue_after_stop(state.engine, task.export_id, task.attempt, state.worker_id)
        else:
            fail_after_exit(
                state.engine, task.export_id, task.attempt, state.worker_id, _how_it_ended(returncode)
            )

    try:
        while True:
            try:
                returncode = await asyncio.wait_for(process.wait(), timeout=settings.heartbeat_interval_s)
                break
            except TimeoutError:
                pass
            try:
                await asyncio.to_thread(renew)
            except Exception as exc:  # noqa: BLE001 (the DB may be back by the next beat; the runner waits too)
                log.warning("renewing the lease of export %s failed: %s", task.export_id, exc)
    except asyncio.CancelledError:  # arq's timeout
        await asyncio.shield(_stop_runner(process))
        await asyncio.to_thread(
            fail_after_exit,
            state.engine,
            task.export_id,
            task.attempt,
            state.worker_id,
            "ran past its timeout",
        )
        raise
    finally:
        state.exports.pop(key, None)
    if returncode != 0:
        await asyncio.to_thread(settle, returncode)
    return returncode


class ResilientWorker(Worker):
    """arq's Worker, kept alive through Redis outages: arq itself exits on the first connection error (and
    loses a job slot if Redis fails while it starts a job). Our runners and their leases live in the DB, so
    the worker only has to wait for Redis and carry on."""

    redis_down = False

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as exc:
            if not self.redis_down:
                log.warning("lost Redis (%s); waiting for it (runners keep training)", exc)
            self.redis_down = True
            await asyncio.sleep(1.0)
            return
        if self.redis_down:
            log.info("Redis is back; picking up tasks again")
            self.redis_down = False

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's start_jobs, one id at a time, giving back the slot it took when Redis fails midway."""
        for job_id in job_ids:
            before = (self.job_counter, job_id.decode() in self.tasks)
            try:
                await super().start_jobs([job_id])
            except (RedisError, OSError):
                started = job_id.decode() in self.tasks and not before[1]
                if not started and self.job_counter > before[0]:
                    self.job_counter -= 1
                    self.sem.release()
                raise


def build_worker(settings: Settings, *, worker_id: str | None = None) -> Worker:
    if not settings.redis_url:
        raise SystemExit("ftserve worker needs FTSERVE_REDIS_URL (`ftserve up` starts an embedded Redis)")
    state = WorkerState(settings, worker_id or settings.worker_id or default_worker_id())
    worker: Worker

    async def stop_gracefully(sig: signal.Signals) -> None:
        """Leave placement at once, let every runner checkpoint and re-queue its job, then stop arq.
        arq's own handler would cancel the tasks first; ours lets them end normally."""
        if state.stopping:  # e.g. Ctrl-C, then `ftserve up` forwarding SIGTERM: the grace period still holds
            log.info("worker %s is already stopping", state.worker_id)
            return
        log.info(
            "worker %s stopping on %s: %d runner(s) to stop", state.worker_id, sig.name, len(state.runners)
        )
        state.stopping = True
        worker.allow_pick_jobs = False
        with contextlib.suppress(RedisError, OSError):  # Redis may be down: stop the runners all the same
            await queue.remove_worker(worker.pool, state.worker_id)
        running = [*state.runners.values(), *state.exports.values()]  # an export goes back to the queue
        await asyncio.gather(*(_stop_runner(p) for p in running))
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        worker.handle_sig(sig)

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["state"] = state
        loop = asyncio.get_running_loop()
        stopping: set[asyncio.Task[None]] = set()  # keep references: the loop holds tasks weakly

        def on_signal(sig: signal.Signals) -> None:
            task = loop.create_task(stop_gracefully(sig))
            stopping.add(task)
            task.add_done_callback(stopping.discard)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        # Connect to the DB now, not on the first lease renewal: a slow first connect must not cost a lease.
        try:
            await asyncio.to_thread(lambda: state.engine.connect().close())
        except Exception as exc:  # noqa: BLE001 (it may come up later; renewals retry every heartbeat)
            log.warning("cannot reach the database yet: %s", exc)
        await queue.publish_worker(ctx["redis"], state.info(), ttl_s=settings.heartbeat_ttl_s)
        ctx["heartbeat"] = asyncio.create_task(_heartbeat(ctx["redis"], state))
        if settings.health_port > 0:
            ctx["health"] = await HealthServer(
                host=settings.host,
                port=settings.health_port,
                liveness=state.liveness,
                checks={"database": database_check(state.engine), "redis": redis_check(ctx["redis"])},
            ).start()
        log.info("worker %s ready on queue %s", state.worker_id, queue.queue_name(state.worker_id))

    async def shutdown(ctx: dict[str, Any]) -> None:
        state.stopping = True
        health = ctx.get("health")
        if health is not None:
            await health.close()
        heartbeat = ctx.get("heartbeat")
        if heartbeat is not None:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        with contextlib.suppress(RedisError, OSError):
            await queue.remove_worker(ctx["redis"], state.worker_id)

    if settings.worker_gpus:
        try:
            parse_simulated_gpus(settings.worker_gpus)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
    worker = ResilientWorker(
        functions=[
            func(train, name=queue.TRAIN_TASK, timeout=queue.TRAIN_TIMEOUT_S, max_tries=1),
            func(export, name=queue.EXPORT_TASK, timeout=queue.EXPORT_TIMEOUT_S, max_tries=1),
        ],
        queue_name=queue.queue_name(state.worker_id),
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        # One slot more than training: the scheduler hands a worker one export at a time, beside its jobs.
        max_jobs=settings.worker_max_jobs + 1,
        job_timeout=queue.TRAIN_TIMEOUT_S,
        max_tries=1,
        retry_jobs=False,
        poll_delay=0.2,
        handle_signals=False,  # see stop_gracefully
        job_serializer=queue.serialize,
        job_deserializer=queue.deserialize,
    )
    return worker


def main(settings: Settings) -> None:
    build_worker(settings).run()
