"""Replay a synthetic fine-tuning workload on a simulated heterogeneous GPU fleet, twice: with ftserve's
placement (`scheduler.placement.plan`, the function the scheduler runs) and with FIFO + first-fit, and
compare them.

    python bench/scheduler_sim.py                  # 12,000 jobs on 520 GPUs; one JSON line
    python bench/scheduler_sim.py --jobs 300 --gpus 40   # a quick run

Workload (seeded, reproducible):
- Base models with their real config.json shapes, 0.5B to 70B (Qwen2.5-0.5B ... Llama-3.1-70B), the small
  ones more common. Methods: LoRA, QLoRA and full fine-tunes (full only up to 8B; 70B only as QLoRA).
  Micro-batch 1-8 and max_seq_length 512-4096, the small ones more common. Each job's memory is `core.vram.estimate` under the
  `ftserve-cuda` profile (what the scheduler reserves). Jobs no GPU here could hold are not generated.
- Durations: log-normal around 20 min x sqrt(size in B) x tokens factor, 3 min to 12 h.
- Arrivals: Poisson, at a rate giving an offered load of --load (VRAM-seconds asked / VRAM-seconds the
  fleet has during the arrival window); 0.9 by default: a busy service, where queues form and the
  placement policy decides how long they get.
- Tenants: 40 organizations (Zipf-distributed), quota 60 running jobs each (borrowing when idle);
  10% of jobs carry priority 1.
- Fleet: 24, 48, 80 and 141 GB GPUs (A10, L40S, H100, H200; 30/25/30/15%), one per worker, up to 4 jobs per GPU as memory
  allows (training jobs co-located by memory; compute interference is not modelled).

Metrics, per policy: mean VRAM utilisation (reserved / total, time-averaged over the arrival window, the
steady state; also up to each policy's makespan), mean and p95 queueing delay (arrival to start), makespan,
stranded VRAM (Part C.3's: free memory on GPUs whose free memory is below the smallest waiting job,
time-averaged up to the makespan), and placement decisions per second (jobs
evaluated by `plan`, each getting a device or a reason to wait, per second of time inside `plan`; also
placements per second). Targets (issue #4): utilisation >= 1.2x FIFO, p95 wait <= 0.7x FIFO, >= 5,000
decisions/s.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.queue import Device, WorkerInfo
from core.vram import ModelArch, TrainSpec, estimate
from scheduler.placement import Device as FleetDevice
from scheduler.placement import Fleet, JobRequest, plan

MODELS: dict[str, tuple[dict[str, object], float]] = {  # config, popularity
    "qwen2.5-0.5b": ({"hidden_size": 896, "num_hidden_layers": 24, "intermediate_size": 4864, "vocab_size": 151936,
                      "num_attention_heads": 14, "num_key_value_heads": 2, "tie_word_embeddings": True}, 0.12),
    "llama-3.2-1b": ({"hidden_size": 2048, "num_hidden_layers": 16, "intermediate_size": 8192, "vocab_size": 128256,
                      "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "tie_word_embeddings": True}, 0.15),
    "llama-3.2-3b": ({"hidden_size": 3072, "num_hidden_layers": 28, "intermediate_size": 8192, "vocab_size": 128256,
                      "num_attention_heads": 24, "num_key_value_heads": 8, "tie_word_embeddings": True}, 0.18),
    "llama-3.1-8b": ({"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 128256,
                      "num_attention_heads": 32, "num_key_value_heads": 8}, 0.25),
    "qwen2.5-14b": ({"hidden_size": 5120, "num_hidden_layers": 48, "intermediate_size": 13824, "vocab_size": 152064,
                     "num_attention_heads": 40, "num_key_value_heads": 8}, 0.13),
    "qwen2.5-32b": ({"hidden_size": 5120, "num_hidden_layers": 64, "intermediate_size": 27648, "vocab_size": 152064,
                     "num_attention_heads": 40, "num_key_value_heads": 8}, 0.10),
    "llama-3.1-70b": ({"hidden_size": 8192, "num_hidden_layers": 80, "intermediate_size": 28672, "vocab_size": 128256,
                       "num_attention_heads": 64, "num_key_value_heads": 8}, 0.08),
}  # fmt: skip
GPU_TYPES = (
    ("A10-24GB", 24 * 1024),
    ("L40S-48GB", 48 * 1024),
    ("H100-80GB", 80 * 1024),
    ("H200-141GB", 141 * 1024),
)
GPU_MIX = (0.30, 0.25, 0.30, 0.15)
BATCHES, BATCH_WEIGHTS = (1, 2, 4, 8), (0.35, 0.30, 0.25, 0.10)
SEQS, SEQ_WEIGHTS = (512, 1024, 2048, 4096), (0.30, 0.35, 0.25, 0.10)
JOBS_PER_GPU = 4
ORGS = 40
QUOTA = 60
RESERVE_AFTER_S = 3600.0
WINDOW = 256  # queued jobs `plan` looks at per decision round, as the scheduler's window does


@dataclass
class SimJob:
    id: str
    org: str
    model: str
    method: str
    mem_mb: int
    duration_s: float
    arrival_s: float
    priority: int
    start_s: float | None = None
    request: JobRequest | None = None


def make_workload(n_jobs: int, n_gpus: int, load: float, seed: int) -> tuple[list[SimJob], list[WorkerInfo]]:
    rng = random.Random(seed)
    archs = {name: ModelArch.from_config(cfg) for name, (cfg, _) in MODELS.items()}
    names, weights = list(MODELS), [w for _, w in MODELS.values()]
    biggest = GPU_TYPES[-1][1]
    cache: dict[tuple[str, str, int, int], int] = {}
    jobs: list[SimJob] = []
    while len(jobs) < n_jobs:
        model = rng.choices(names, weights)[0]
        arch = archs[model]
        size_b = arch.params / 1e9
        if size_b > 40:
            method = "qlora"
        elif size_b > 9:
            method = rng.choices(["lora", "qlora"], [0.4, 0.6])[0]
        else:
            method = rng.choices(["lora", "qlora", "full"], [0.5, 0.35, 0.15])[0]
        batch = rng.choices(BATCHES, BATCH_WEIGHTS)[0]
        seq = rng.choices(SEQS, SEQ_WEIGHTS)[0]
        key = (model, method, batch, seq)
        if key not in cache:
            spec = TrainSpec(micro_batch=batch, seq_len=seq, method=method)  # type: ignore[arg-type]
            cache[key] = estimate(arch, spec, profile="ftserve-cuda").reservation_mb
        if cache[key] > biggest:
            continue
        tokens_factor = math.sqrt(batch * seq / 4096)
        minutes = 20 * math.sqrt(size_b) * tokens_factor * rng.lognormvariate(0, 0.8)
        duration = min(12 * 3600.0, max(180.0, minutes * 60))
        org = f"org-{min(ORGS - 1, int(rng.paretovariate(1.2)) - 1):02d}"
        jobs.append(SimJob(f"job-{len(jobs):05d}", org, model, method, cache[key], duration, 0.0,
                           1 if rng.random() < 0.1 else 0))  # fmt: skip

    workers = []
    counts = [round(n_gpus * share) for share in GPU_MIX]
    counts[0] += n_gpus - sum(counts)
    order = [t for t, c in zip(GPU_TYPES, counts, strict=True) for _ in range(c)]
    rng.shuffle(order)  # a fleet grown over time: no size order for first-fit to exploit
    for i, (name, mb) in enumerate(order):
        device = Device(index=0, name=name, total_mb=mb, free_mb=mb)
        workers.append(WorkerInfo(id=f"gpu-{i:04d}", gpus=[device], max_jobs=JOBS_PER_GPU))

    capacity = sum(mb for _, mb in order)
    demand = sum(j.mem_mb * j.duration_s for j in jobs)
    window_s = demand / (capacity * load)  # arrivals spread so that demand = load x capacity over it
    t = 0.0
    rate = len(jobs) / window_s
    for job in jobs:
        t += rng.expovariate(rate)
        job.arrival_s = t
        job.request = JobRequest(id=job.id, org=job.org, gpu_mb=job.mem_mb, cpu_mb=None, priority=job.priority,
                                 waiting_since=t)  # fmt: skip
    return jobs, workers


@dataclass
class Result:
    policy: str
    waits: list[float] = field(default_factory=list)
    makespan: float = 0.0
    reserved_time: float = 0.0  # integral of reserved MiB over time, as a fraction of the fleet's
    reserved_arrivals: float = 0.0  # the same, over the arrival window only
    arrivals_end: float = 0.0
    stranded_time: float = 0.0  # integral of stranded MiB over time, while jobs wait
    plan_seconds: float = 0.0
    decisions: int = 0
    placements: int = 0


class Policy(ABC):
    """A placement policy under test: FIFO + first-fit, or ftserve's own `plan`."""

    name = ""

    def __init__(self, workers: list[WorkerInfo]) -> None:
        self.fleet = Fleet.from_registry(workers, reserved_mb={}, held={})
        self.devices = [d for w in self.fleet.workers.values() for d in w.devices]

    @abstractmethod
    def place(self, queue: list[SimJob], now: float, result: Result) -> list[tuple[SimJob, FleetDevice]]: ...

    def finish(self, device: FleetDevice, mb: int) -> None:
        self.fleet.give_back(device, mb)


class Ftserve(Policy):
    """The scheduler's own `plan`: priority then age, best fit, backfill with the starvation guard, quotas."""

    name = "ftserve"

    def __init__(self, workers: list[WorkerInfo]) -> None:
        super().__init__(workers)
        self.running: dict[str, int] = {}

    def place(self, queue: list[SimJob], now: float, result: Result) -> list[tuple[SimJob, FleetDevice]]:
        queue.sort(key=lambda j: (-j.priority, j.arrival_s))
        window = queue[:WINDOW]
        by_id = {j.id: j for j in window}
        t0 = time.perf_counter()
        out = plan(
            [j.request for j in window if j.request is not None], self.fleet, running_by_org=self.running,
            quota_for=lambda _org: QUOTA, now=now, reserve_after_s=RESERVE_AFTER_S,
        )  # fmt: skip
        result.plan_seconds += time.perf_counter() - t0
        result.decisions += out.evaluated
        placed = []
        for p in out.placed:
            self.running[p.job.org] = self.running.get(p.job.org, 0) + 1
            placed.append((by_id[p.job.id], p.device))
        return placed

    def finish(self, device: FleetDevice, mb: int, org: str = "") -> None:  # type: ignore[override]
        super().finish(device, mb)
        self.running[org] -= 1


class FifoFirstFit(Policy):
    """The naive baseline: strict arrival order (the head blocks), first device in fleet order with room."""

    name = "fifo_first_fit"

    def place(self, queue: list[SimJob], now: float, result: Result) -> list[tuple[SimJob, FleetDevice]]:
        placed = []
        t0 = time.perf_counter()
        while queue:
            job = queue[0]
            result.decisions += 1
            device = next(
                (d for d in self.devices if d.free_mb >= job.mem_mb and d.worker.free_slots > 0), None
            )
            if device is None:
                break
            self.fleet.take(device, job.mem_mb)
            placed.append((queue.pop(0), device))
        result.plan_seconds += time.perf_counter() - t0
        return placed

    def finish(self, device: FleetDevice, mb: int, org: str = "") -> None:  # type: ignore[override]
        super().finish(device, mb)


def simulate(policy: Policy, jobs: list[SimJob]) -> Result:
    for job in jobs:
        job.start_s = None
    result = Result(policy.name)
    total = sum(d.total_mb for d in policy.devices)
    events: list[tuple[float, int, str, SimJob, FleetDevice | None]] = []
    for n, job in enumerate(jobs):
        heapq.heappush(events, (job.arrival_s, n, "arrive", job, None))
    counter = len(jobs)
    queue: list[SimJob] = []
    reserved = 0
    now = 0.0
    result.arrivals_end = max(j.arrival_s for j in jobs)
    while events:
        t = events[0][0]
        # integrate the state over [now, t]
        dt = t - now
        result.reserved_time += reserved * dt
        result.reserved_arrivals += reserved * max(0.0, min(t, result.arrivals_end) - now)
        if queue and dt > 0:
            smallest = min(j.mem_mb for j in queue[:WINDOW])
            result.stranded_time += dt * sum(d.free_mb for d in policy.devices if 0 < d.free_mb < smallest)
        now = t
        while events and events[0][0] <= t:
            _, _, kind, job, device = heapq.heappop(events)
            if kind == "arrive":
                queue.append(job)
            else:
                assert device is not None
                policy.finish(device, job.mem_mb, job.org)  # type: ignore[call-arg]
                reserved -= job.mem_mb
        for job, device in policy.place(queue, now, result):
            if job in queue:
                queue.remove(job)
            job.start_s = now
            result.waits.append(now - job.arrival_s)
            result.placements += 1
            reserved += job.mem_mb
            counter += 1
            heapq.heappush(events, (now + job.duration_s, counter, "finish", job, device))
        assert all(d.free_mb >= 0 for d in policy.devices), "over-committed a GPU"
    assert not queue and result.placements == len(jobs), "jobs left unplaced"
    result.makespan = now
    result.reserved_time /= total
    result.reserved_arrivals /= total
    return result


def summary(r: Result, total_mb: int) -> dict[str, float]:
    waits = sorted(r.waits)
    return {
        "mean_vram_util": round(r.reserved_arrivals / r.arrivals_end, 4),
        "mean_vram_util_to_makespan": round(r.reserved_time / r.makespan, 4),
        "mean_wait_s": round(statistics.fmean(waits), 1),
        "p95_wait_s": round(waits[int(0.95 * (len(waits) - 1))], 1),
        "makespan_h": round(r.makespan / 3600, 2),
        "stranded_vram_gb": round(r.stranded_time / r.makespan / 1024, 1),
        "decisions_per_s": round(r.decisions / r.plan_seconds) if r.plan_seconds else 0,
        "placements_per_s": round(r.placements / r.plan_seconds) if r.plan_seconds else 0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=12000)
    parser.add_argument("--gpus", type=int, default=520)
    parser.add_argument("--load", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    jobs, workers = make_workload(args.jobs, args.gpus, args.load, args.seed)
    total = sum(w.gpus[0].total_mb for w in workers)
    t0 = time.perf_counter()
    ours = summary(simulate(Ftserve(workers), jobs), total)
    fifo = summary(simulate(FifoFirstFit(workers), jobs), total)
    out = {
        "bench": "scheduler_sim",
        "jobs": len(jobs),
        "gpus": len(workers),
        "gpu_mix": {name: sum(1 for w in workers if w.gpus[0].name == name) for name, _ in GPU_TYPES},
        "methods": {m: sum(1 for j in jobs if j.method == m) for m in ("lora", "qlora", "full")},
        "models": sorted(MODELS),
        "offered_load": args.load,
        "ftserve": ours,
        "fifo_first_fit": fifo,
        "util_ratio_vs_fifo": round(ours["mean_vram_util"] / fifo["mean_vram_util"], 3),
        "mean_wait_ratio_vs_fifo": round(ours["mean_wait_s"] / max(fifo["mean_wait_s"], 1e-9), 3),
        "p95_wait_ratio_vs_fifo": round(ours["p95_wait_s"] / max(fifo["p95_wait_s"], 1e-9), 3),
        "makespan_ratio_vs_fifo": round(ours["makespan_h"] / fifo["makespan_h"], 3),
        "decisions_per_s": ours["decisions_per_s"],
        "placements_per_s": ours["placements_per_s"],
        "wall_s": round(time.perf_counter() - t0, 1),
        "targets": {
            "util_ratio_vs_fifo": ">= 1.2",
            "p95_wait_ratio_vs_fifo": "<= 0.7",
            "decisions_per_s": ">= 5000",
        },
    }
    print(json.dumps(out))
    ok = (
        out["util_ratio_vs_fifo"] >= 1.2
        and out["p95_wait_ratio_vs_fifo"] <= 0.7
        and out["decisions_per_s"] >= 5000
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
