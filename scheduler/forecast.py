"""When will a queued job start? Replay the placement plan forward in time: free each running job's memory
at its expected finish, plan the queue again, and note when each job first gets a device.

Uses the very `plan()` the scheduler places with, so the forecast follows the same best-fit, priority and
quota rules. Expected finishes come from running jobs' progress (the worker's `estimated_finish`) and, for
queued jobs, from their step count times the base model's recent seconds per step.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence

from scheduler.placement import Device, Fleet, JobRequest, plan


def forecast_starts(
    queue: Sequence[JobRequest],
    fleet: Fleet,
    running: Sequence[tuple[str, int | None, int, float, str]],
    durations: Mapping[str, float],
    *,
    now: float,
    running_by_org: Mapping[str, int] | None = None,
    quota_for: Callable[[str], int] | None = None,
) -> dict[str, float]:
    """`running`: (worker id, device index, reserved MiB, expected finish, org) per running job. Returns the
    expected start time of each queued job that gets a device in the replay (no entry: unknown)."""
    devices: dict[tuple[str, int], Device] = {
        (w.id, d.index): d for w in fleet.workers.values() for d in w.devices
    }
    finishes: list[tuple[float, int, Device | None, int, str]] = []
    for n, (worker_id, index, mb, finish, org) in enumerate(running):
        device = devices.get((worker_id, index)) if index is not None else None
        heapq.heappush(finishes, (max(finish, now), n, device, mb, org))
    orgs = dict(running_by_org or {})
    remaining = list(queue)
    starts: dict[str, float] = {}
    t, counter = now, len(running)
    while remaining:
        result = plan(remaining, fleet, running_by_org=orgs, quota_for=quota_for, now=t)
        for placed in result.placed:
            starts[placed.job.id] = t
            orgs[placed.job.org] = orgs.get(placed.job.org, 0) + 1
            counter += 1
            end = t + durations.get(placed.job.id, 0.0)
            heapq.heappush(finishes, (end, counter, placed.device, placed.reserve_mb, placed.job.org))
        done = {p.job.id for p in result.placed} | {r.job.id for r in result.rejected}
        remaining = [job for job in remaining if job.id not in done]
        if not remaining or not finishes:
            break
        t = finishes[0][0]
        while finishes and finishes[0][0] <= t:  # every job that ends at this moment frees its device
            _, _, device, mb, org = heapq.heappop(finishes)
            if device is not None:
                fleet.give_back(device, mb)
            orgs[org] = max(0, orgs.get(org, 0) - 1)
    return starts
