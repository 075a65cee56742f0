"""Where queued jobs go: a pure function over a snapshot of the fleet, used by the scheduler's tick, by its
start-time forecast and by `bench/scheduler_sim.py` alike.

    fleet = Fleet(workers)                 # every live device, its free memory net of what is reserved
    result = plan(queue, fleet, ...)       # queue in priority order; placements, waits (with why), rejects

Rules, in order:
- **Best fit.** A job goes to the device whose free memory exceeds its estimate by the least. Ties go to the
  smaller device, so big GPUs stay whole for the big jobs that need them. Free memory is what is left after
  the reservations of the jobs already placed there, so a device is never over-committed.
- **Priority, then age.** The caller passes the queue sorted by priority (high first), then creation.
- **Backfill, with a guard.** A job that does not fit now does not block younger jobs that do. Once it has
  waited `reserve_after_s`, it holds the device closest to fitting it: nothing else is placed there until
  running jobs drain and it fits (so a big job cannot starve behind a stream of small ones). Only the
  first `max_holds` such jobs hold a device at a time (EASY backfilling holds one), so holds cannot idle
  the fleet.
- **Per-organization quota, with borrowing.** Jobs of organizations under their quota of running jobs
  are placed first; an organization at its quota borrows only what is left after them, capacity that no
  other organization's waiting job can use right now.
- **GPU first.** A job goes to a CPU-only worker (its RAM budget) only when no GPU in the fleet could ever
  hold it; a job that no device of the fleet could ever hold is rejected.
- **Capabilities.** A job that needs one (QLoRA needs `bnb_4bit`) only goes to workers that report it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from sortedcontainers import SortedKeyList

from core.queue import WorkerInfo

Kind = Literal["gpu", "cpu"]


def gb(mb: int | float) -> str:
    """MiB as GiB, for people: 20480 -> '20', 12800 -> '12.5'."""
    value = mb / 1024
    return f"{value:.0f}" if value >= 100 or value == int(value) else f"{value:.1f}"


@dataclass(eq=False)
class Device:
    """One GPU of one worker (or the RAM budget of a CPU-only worker), as placement sees it."""

    worker: WorkerView
    index: int
    name: str
    total_mb: int
    free_mb: int  # net of reservations and of memory used by anything else
    kind: Kind

    @property
    def key(self) -> tuple[int, int, str, int]:
        # best fit first; then the smaller device (keep big GPUs whole); then a stable order
        return (self.free_mb, self.total_mb, self.worker.id, self.index)

    @property
    def label(self) -> str:
        return f"{self.name} #{self.index} on {self.worker.id}"


@dataclass(eq=False)
class WorkerView:
    id: str
    queue: str
    max_jobs: int
    held: int  # jobs the DB says this worker holds
    devices: list[Device] = field(default_factory=list)
    capabilities: frozenset[str] = frozenset()

    @property
    def free_slots(self) -> int:
        return self.max_jobs - self.held


@dataclass(frozen=True)
class JobRequest:
    """A queued job as placement sees it. `gpu_mb` / `cpu_mb`: the memory to reserve on a GPU / on a CPU
    worker; None when the estimate is unknown (the job then takes a whole empty device)."""

    id: str
    org: str
    gpu_mb: int | None
    cpu_mb: int | None
    priority: int = 0
    waiting_since: float = 0.0
    needs: frozenset[str] = frozenset()  # worker capabilities the job requires, e.g. {"bnb_4bit"}


@dataclass(frozen=True)
class Placed:
    job: JobRequest
    device: Device
    reserve_mb: int
    borrowed: bool = False  # over its organization's quota, on capacity nobody else was waiting for


@dataclass(frozen=True)
class Waiting:
    """Why a job waits (or was rejected). The message is built only when read: a plan over a long queue
    defers most jobs, and only the scheduler's wait events need the words."""

    job: JobRequest
    code: Literal["no_worker", "no_room", "quota", "too_big"]
    need_mb: int | None = None
    held: Device | None = None  # the device held for this job (starvation guard)
    kind: Kind = "gpu"
    largest_free_mb: int | None = None  # None: no device of that kind has a free slot
    running: int = 0  # quota waits: the organization's running jobs and its limit
    quota: int = 0
    text: str | None = None
    position: int = 0  # in the queue passed to plan()

    @property
    def message(self) -> str:
        if self.text is not None:
            return self.text
        if self.code == "no_worker":
            return "Waiting for a worker: none is live."
        if self.code == "quota":
            return (
                f"Waiting: the organization runs {self.running} jobs, its limit is {self.quota} "
                "(it borrows idle capacity when no other organization is waiting)."
            )
        what = "GPU" if self.kind == "gpu" else "CPU worker"
        if self.largest_free_mb is None:
            message = (
                f"Waiting: every {'GPU worker' if self.kind == 'gpu' else 'worker'} is at its job limit."
            )
        elif self.need_mb is None:
            message = f"Waiting for an entirely free {what} (its memory could not be estimated)."
        else:
            message = f"Needs ~{gb(self.need_mb)} GB; largest free {what} {gb(self.largest_free_mb)} GB."
        if self.held is not None:
            message += f" Holding {self.held.label} for it."
        return message


@dataclass
class PlanResult:
    placed: list[Placed] = field(default_factory=list)
    waiting: list[Waiting] = field(default_factory=list)  # in queue order
    rejected: list[Waiting] = field(default_factory=list)  # no device of the fleet could ever hold them
    evaluated: int = 0


class Fleet:
    """Every device of the live workers, indexed by free memory for best-fit lookups in O(log n)."""

    def __init__(self, workers: Iterable[WorkerView]) -> None:
        self.workers = {w.id: w for w in workers}
        self._index: dict[Kind, SortedKeyList] = {
            "gpu": SortedKeyList(key=lambda d: d.key),
            "cpu": SortedKeyList(key=lambda d: d.key),
        }
        self._max_total: dict[Kind, int] = {"gpu": 0, "cpu": 0}
        self._max_total_for: dict[tuple[Kind, frozenset[str]], int] = {}
        self.count: dict[Kind, int] = {"gpu": 0, "cpu": 0}
        self._held: set[int] = set()
        self._held_devices: list[Device] = []
        for worker in self.workers.values():
            for device in worker.devices:
                self._max_total[device.kind] = max(self._max_total[device.kind], device.total_mb)
                self.count[device.kind] += 1
                if worker.free_slots > 0:
                    self._index[device.kind].add(device)

    @classmethod
    def from_registry(
        cls,
        workers: Sequence[WorkerInfo],
        *,
        reserved_mb: Mapping[tuple[str, int], int],
        held: Mapping[str, int],
    ) -> Fleet:
        """From the Redis registry and the DB's reservations: free = min(total - reserved, reported free).
        The reported free already excludes what our running jobs use, and the reservation covers jobs that
        have not allocated yet, so the smaller of the two never over-commits (and counts nothing twice)."""
        views = []
        for info in workers:
            view = WorkerView(
                id=info.id,
                queue=info.queue,
                max_jobs=info.max_jobs,
                held=held.get(info.id, 0),
                capabilities=frozenset(info.capabilities),
            )
            for dev in info.gpus:
                reserved = reserved_mb.get((info.id, dev.index), 0)
                free = max(0, min(dev.total_mb - reserved, dev.free_mb))
                kind: Kind = "cpu" if dev.name == "cpu" else "gpu"
                view.devices.append(Device(view, dev.index, dev.name, dev.total_mb, free, kind))
            views.append(view)
        return cls(views)

    # -- lookups ---------------------------------------------------------------------------------------

    def best_fit(self, need_mb: int | None, kind: Kind, needs: frozenset[str] = frozenset()) -> Device | None:
        index = self._index[kind]
        device: Device
        if need_mb is None:  # unknown estimate: the largest device that is entirely free
            return next(
                (d for d in reversed(index) if d.free_mb >= d.total_mb and needs <= d.worker.capabilities),
                None,
            )
        pos = index.bisect_key_left((need_mb, -1, "", -1))
        if not needs:
            found: Device | None = index[pos] if pos < len(index) else None
            return found
        for device in index.islice(pos):
            if needs <= device.worker.capabilities:
                return device
        return None

    def largest_free(self, kind: Kind, needs: frozenset[str] = frozenset()) -> Device | None:
        index = self._index[kind]
        if not needs:
            top: Device | None = index[-1] if len(index) else None
            return top
        device: Device
        for device in reversed(index):
            if needs <= device.worker.capabilities:
                return device
        return None

    def closest_to_fit(
        self, need_mb: int | None, kind: Kind, needs: frozenset[str] = frozenset()
    ) -> Device | None:
        """The device with the most free memory among those big enough to ever hold the job."""
        device: Device
        for device in reversed(self._index[kind]):
            if (need_mb is None or device.total_mb >= need_mb) and needs <= device.worker.capabilities:
                return device
        return None

    def max_total(self, kind: Kind, needs: frozenset[str] = frozenset()) -> int:
        """The largest device of this kind in the fleet (busy or not) on a worker with `needs`."""
        if not needs:
            return self._max_total[kind]
        key = (kind, needs)
        if key not in self._max_total_for:
            self._max_total_for[key] = max(
                (
                    d.total_mb
                    for w in self.workers.values()
                    if needs <= w.capabilities
                    for d in w.devices
                    if d.kind == kind
                ),
                default=0,
            )
        return self._max_total_for[key]

    def available(self, kind: Kind) -> int:
        return len(self._index[kind])

    # -- changes ---------------------------------------------------------------------------------------

    def take(self, device: Device, mb: int) -> None:
        """Reserve `mb` on `device` and one slot on its worker."""
        index = self._index[device.kind]
        index.discard(device)
        device.free_mb -= mb
        worker = device.worker
        worker.held += 1
        if worker.free_slots <= 0:
            for other in worker.devices:
                self._index[other.kind].discard(other)
        elif id(device) not in self._held:
            index.add(device)

    def give_back(self, device: Device, mb: int) -> None:
        """Undo a `take` (a job finished, or a claim lost its race)."""
        worker = device.worker
        was_full = worker.free_slots <= 0
        self._index[device.kind].discard(device)
        device.free_mb += mb
        worker.held -= 1
        if was_full and worker.free_slots > 0:
            for other in worker.devices:
                if other is not device and id(other) not in self._held:
                    self._index[other.kind].add(other)
        if worker.free_slots > 0 and id(device) not in self._held:
            self._index[device.kind].add(device)

    def hold(self, device: Device) -> None:
        """Keep `device` out of this plan: it is being saved for a job that has waited too long."""
        self._held.add(id(device))
        self._index[device.kind].discard(device)
        self._held_devices.append(device)

    def release_holds(self) -> None:
        """Holds last one plan: the next plan decides afresh which device each starving job needs."""
        for device in self._held_devices:
            self._held.discard(id(device))
            if device.worker.free_slots > 0:
                self._index[device.kind].add(device)
        self._held_devices.clear()


def _too_big(job: JobRequest, fleet: Fleet) -> str:
    if job.needs and not fleet.max_total("gpu", job.needs) and not fleet.max_total("cpu", job.needs):
        return (
            f"The job needs a worker with {', '.join(sorted(job.needs))} (4-bit quantization needs a worker with "
            "bitsandbytes >= 0.50), and no live worker has it. Use quantization 'none', or add such a worker."
        )
    if fleet.count["gpu"]:
        return (
            f"The job needs ~{gb(job.gpu_mb or 0)} GB of GPU memory, more than the largest GPU of this fleet holds "
            f"({gb(fleet.max_total('gpu', job.needs))} GB). Lower batch_size, max_seq_length or lora_rank, use "
            "quantization '4bit', or add a larger GPU worker."
        )
    return (
        f"The job needs ~{gb(job.cpu_mb or 0)} GB of memory, more than the largest CPU worker offers "
        f"({gb(fleet.max_total('cpu', job.needs))} GB). Lower batch_size, max_seq_length or lora_rank, or add a "
        "GPU worker."
    )


def plan(
    queue: Sequence[JobRequest],
    fleet: Fleet,
    *,
    running_by_org: Mapping[str, int] | None = None,
    quota_for: Callable[[str], int] | None = None,
    now: float = 0.0,
    reserve_after_s: float = float("inf"),
    max_holds: int = 2,
    max_placements: int | None = None,
) -> PlanResult:
    """Decide, for each queued job in order, where it goes now or why it waits. Mutates `fleet` (each
    placement takes its memory and slot) and leaves `queue` alone. Written for speed: the scheduler runs
    it on every tick over its whole window, and the forecast replays it many times."""
    fleet.release_holds()
    result = PlanResult()
    placed, waiting = result.placed, result.waiting
    running = dict(running_by_org or {})
    over_quota: list[tuple[int, JobRequest]] = []
    holds = 0
    limits: dict[frozenset[str], tuple[int, int]] = {}  # needs -> (largest GPU, largest CPU device)
    any_device = bool(fleet.count["gpu"] or fleet.count["cpu"])

    def try_place(position: int, job: JobRequest, borrowed: bool, quota: int) -> None:
        nonlocal holds
        result.evaluated += 1
        needs = job.needs
        if needs not in limits:
            limits[needs] = (fleet.max_total("gpu", needs), fleet.max_total("cpu", needs))
        gpu_max, cpu_max = limits[needs]
        kind: Kind
        if gpu_max and (job.gpu_mb is None or job.gpu_mb <= gpu_max):
            kind, need = "gpu", job.gpu_mb
        elif cpu_max and (job.cpu_mb is None or job.cpu_mb <= cpu_max):
            kind, need = "cpu", job.cpu_mb
        elif any_device:
            result.rejected.append(
                Waiting(job, "too_big", job.gpu_mb, text=_too_big(job, fleet), position=position)
            )
            return
        else:
            waiting.append(Waiting(job, "no_worker", position=position))
            return
        largest = fleet.largest_free(kind, needs)
        if largest is not None and (need is None or largest.free_mb >= need):
            device = fleet.best_fit(need, kind, needs)
            if device is not None:
                reserve = device.total_mb if need is None else need
                fleet.take(device, reserve)
                placed.append(Placed(job, device, reserve, borrowed))
                running[job.org] = running.get(job.org, 0) + 1
                return
        if borrowed:  # over its quota, and nothing left that fits: the quota is the reason it waits
            waiting.append(
                Waiting(job, "quota", need, running=running.get(job.org, 0), quota=quota, position=position)
            )
            return
        held = None
        if holds < max_holds and now - job.waiting_since >= reserve_after_s:
            held = fleet.closest_to_fit(need, kind, needs)
            if held is not None:
                fleet.hold(held)
                holds += 1
        free = largest.free_mb if largest is not None else None
        waiting.append(Waiting(job, "no_room", need, held, kind, free, position=position))

    for position, job in enumerate(queue):
        if max_placements is not None and len(placed) >= max_placements:
            break
        quota = quota_for(job.org) if quota_for else 0
        if quota > 0 and running.get(job.org, 0) >= quota:
            over_quota.append((position, job))
            continue
        try_place(position, job, False, quota)
    if over_quota:  # borrowing: what the jobs within their quota could not use
        for position, job in over_quota:
            if max_placements is not None and len(placed) >= max_placements:
                break
            try_place(position, job, True, quota_for(job.org) if quota_for else 0)
        waiting.sort(key=lambda w: w.position)  # keep queue order
    return result
