"""Pinning a runner to the device the scheduler placed its job on: which device it may see
(`runner_pinning`, the worker side) and how much of its memory (`apply_memory_cap`, the runner side).

Plain standard library (torch only inside `apply_memory_cap`), so the worker, which never imports torch, and a bare
GPU machine (tests/gpu_worker/test_gpu_pinning.py) can use it. See docs/scheduling.md, "GPU pinning".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

# What the worker tells a runner about its placement, in the runner's environment (see `runner_pinning`).
RUNNER_GPU_INDEX = "FTSERVE_RUNNER_GPU_INDEX"  # the placement's device, as the worker reported it
RUNNER_MEMORY_CAP_MB = "FTSERVE_RUNNER_MEMORY_CAP_MB"  # the reservation to cap the runner at, if any


class DeviceNotVisible(LookupError):
    """The placement names a device this worker cannot show its runner (gone from its device list)."""


def cuda_visible_list(environ: Mapping[str, str] | None = None) -> list[str] | None:
    """The worker's own CUDA_VISIBLE_DEVICES as a list of entries ("2", "GPU-8f6c...", ...), or None when it is
    unset (every device visible). An empty value is an empty list: no device."""
    value = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def runner_pinning(
    gpu_index: int,
    *,
    total_mb: int,
    reserved_mb: int | None,
    visible: list[str] | None,
    simulated: bool = False,
) -> dict[str, str]:
    """The environment that pins a runner to the worker's device `gpu_index` (as the worker reported it) and
    caps its memory to the job's reservation. Not for CPU pseudo-devices: those get nothing.

    - CUDA_VISIBLE_DEVICES: the worker reports its devices numbered 0..n-1 in the order of its own
      CUDA_VISIBLE_DEVICES (or nvidia-smi's indices when that is unset), so index i is entry i of that list (or
      `str(i)`): a worker started with CUDA_VISIBLE_DEVICES=2,3 runs a job placed on its #1 with "3". The entry
      is passed through as written, so GPU UUIDs work too.
    - CUDA_DEVICE_ORDER=PCI_BUS_ID: numeric entries are nvidia-smi's indices, which are in PCI bus order;
      CUDA's default order (fastest first) may differ on a machine with mixed GPUs.
    - RUNNER_MEMORY_CAP_MB: set when the reservation is less than the device (so another job may share it);
      the runner applies it with `apply_memory_cap`.

    A simulated GPU (FTSERVE_WORKER_GPUS) is mapped the same way; one beyond the worker's visible list is no
    real device at all, and its runner sees none (CUDA_VISIBLE_DEVICES=""), so it trains on the CPU. A real
    device beyond the list raises DeviceNotVisible."""
    if visible is None:
        cuda_visible = str(gpu_index)
    elif 0 <= gpu_index < len(visible):
        cuda_visible = visible[gpu_index]
    elif simulated:
        cuda_visible = ""
    else:
        raise DeviceNotVisible(f"device #{gpu_index} is not among CUDA_VISIBLE_DEVICES={','.join(visible)!r}")
    env = {
        "CUDA_VISIBLE_DEVICES": cuda_visible,
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        RUNNER_GPU_INDEX: str(gpu_index),
    }
    if reserved_mb is not None and 0 < reserved_mb < total_mb:
        env[RUNNER_MEMORY_CAP_MB] = str(reserved_mb)
    return env


def apply_memory_cap(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """In the runner, after torch is imported and before the model is loaded: cap the CUDA caching allocator at
    the job's reservation with `torch.cuda.set_per_process_memory_fraction(reserved / device total)` (the
    device's total as torch sees it, so the cap in bytes is the reservation). Returns what was applied, for the
    job's events, or None when the worker pinned nothing (a CPU worker, or a runner started by hand).

    No headroom on top of the reservation: it is already the estimated peak plus 10%, and the estimate's
    1 GiB for the CUDA context and workspaces is largely outside the allocator, which this cap does not
    count. More would let the jobs sharing a GPU together overrun it, which is what the cap is there to stop:
    a job that outgrows its reservation gets an out-of-memory error of its own instead of crashing a
    neighbour. Nothing is capped where training runs on the CPU."""
    environ = os.environ if environ is None else environ
    if RUNNER_GPU_INDEX not in environ:
        return None
    import torch

    applied: dict[str, Any] = {
        "gpu_index": int(environ[RUNNER_GPU_INDEX]),
        "cuda_visible_devices": environ.get("CUDA_VISIBLE_DEVICES"),
        "memory_cap_mb": int(environ[RUNNER_MEMORY_CAP_MB]) if RUNNER_MEMORY_CAP_MB in environ else None,
        "memory_fraction": None,
        "device": "cpu",
    }
    if not torch.cuda.is_available():
        return applied
    applied["device"] = torch.cuda.get_device_name(0)
    cap_mb = applied["memory_cap_mb"]
    if cap_mb is not None:
        total = torch.cuda.get_device_properties(0).total_memory
        fraction = min(1.0, cap_mb * 2**20 / total)
        if fraction < 1.0:
            torch.cuda.set_per_process_memory_fraction(fraction, 0)
            applied["memory_fraction"] = round(fraction, 6)
    return applied
