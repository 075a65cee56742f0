"""Pinning a runner to the GPU it was placed on: the environment the worker gives it (`runner_pinning`) and the
memory cap the runner applies (`apply_memory_cap`); on a real CUDA device (marker `gpu`), that a runner child sees
exactly the pinned device and cannot allocate past its reservation.

Self-contained like test_cuda.py (stdlib, pytest and torch; no session fixtures from tests/conftest.py), so
`bench/gpu_check.sh` can run it on a bare GPU machine. The worker side, end to end on a real worker process with
two simulated GPUs, is in test_worker.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_worker.pinning import (
    RUNNER_GPU_INDEX,
    RUNNER_MEMORY_CAP_MB,
    DeviceNotVisible,
    apply_memory_cap,
    cuda_visible_list,
    runner_pinning,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_workers_own_cuda_visible_devices_is_read_as_a_list() -> None:
    assert cuda_visible_list({}) is None  # unset: every device
    assert cuda_visible_list({"CUDA_VISIBLE_DEVICES": ""}) == []  # set and empty: none
    assert cuda_visible_list({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert cuda_visible_list({"CUDA_VISIBLE_DEVICES": "GPU-8f6c1a2b,1"}) == ["GPU-8f6c1a2b", "1"]


def test_the_placement_index_maps_through_the_workers_visible_list() -> None:
    def visible_for(index: int, visible: list[str] | None, simulated: bool = False) -> str:
        env = runner_pinning(index, total_mb=81920, reserved_mb=None, visible=visible, simulated=simulated)
        assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # numeric entries are nvidia-smi's (PCI bus) indices
        assert env[RUNNER_GPU_INDEX] == str(index)
        return env["CUDA_VISIBLE_DEVICES"]

    assert [visible_for(i, None) for i in range(3)] == ["0", "1", "2"]
    assert [visible_for(i, ["2", "3"]) for i in range(2)] == ["2", "3"]
    assert visible_for(0, ["GPU-8f6c1a2b"]) == "GPU-8f6c1a2b"  # passed through as the worker got it
    with pytest.raises(DeviceNotVisible):
        visible_for(2, ["2", "3"])  # a real device the worker may not use
    # A simulated GPU beyond the real ones the worker may use is no device at all: its runner sees none.
    assert visible_for(2, ["2", "3"], simulated=True) == ""
    assert visible_for(1, [], simulated=True) == ""


def test_the_memory_cap_is_asked_for_only_where_the_reservation_leaves_room_for_others() -> None:
    def cap(reserved: int | None, total: int = 24576) -> str | None:
        return runner_pinning(0, total_mb=total, reserved_mb=reserved, visible=None).get(RUNNER_MEMORY_CAP_MB)

    assert cap(8000) == "8000"
    assert cap(24575) == "24575"
    assert cap(24576) is None  # the whole GPU: no one else fits there, nothing to cap
    assert cap(None) is None and cap(0) is None


def test_on_the_cpu_nothing_is_capped_and_what_was_pinned_is_reported() -> None:
    pytest.importorskip("torch")
    assert apply_memory_cap({}) is None  # a runner the worker pinned nothing for (a CPU worker)
    if _cuda():
        pytest.skip("this machine has a CUDA device; test_a_runner_sees_only_its_gpu_and_its_cap covers it")
    env = runner_pinning(1, total_mb=24576, reserved_mb=8000, visible=None)
    assert apply_memory_cap(env) == {
        "gpu_index": 1,
        "cuda_visible_devices": "1",
        "memory_cap_mb": 8000,
        "memory_fraction": None,  # never on the CPU
        "device": "cpu",
    }


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


# -- on a real CUDA device ------------------------------------------------------------------------------------

# The runner's side, as job_runner does it: torch imported with the pinned environment, then the cap applied.
RUNNER = """
import json, sys, torch
from gpu_worker.pinning import apply_memory_cap
applied = apply_memory_cap()
props = torch.cuda.get_device_properties(0)
out = {"applied": applied, "count": torch.cuda.device_count(), "uuid": str(props.uuid), "total": props.total_memory}
cap = applied["memory_cap_mb"]
if cap:
    mib = 2**20
    within = torch.empty(cap * mib // 2, dtype=torch.uint8, device="cuda")
    out["within_cap"] = "allocated"
    try:
        over = torch.empty(cap * mib, dtype=torch.uint8, device="cuda")  # with `within`: 1.5x the reservation
        out["over_cap"] = "allocated"
    except torch.OutOfMemoryError as exc:
        out["over_cap"] = "refused: " + str(exc).splitlines()[0]
print(json.dumps(out))
"""


def _nvidia_uuids() -> list[str]:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    return [line.strip() for line in out.splitlines() if line.strip()]


def _run_runner(env: dict[str, str]) -> dict[str, object]:
    base = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
    path = os.pathsep.join(p for p in (str(REPO_ROOT), base.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, "-c", RUNNER], env={**base, **env, "PYTHONPATH": path},
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.gpu
def test_a_runner_sees_only_its_gpu_and_its_cap() -> None:
    """On a real CUDA machine: the child sees exactly one device, the one the placement names (checked by UUID
    against nvidia-smi), also when the worker itself was restricted by UUID; and the memory cap holds: half the
    reservation allocates, past it the allocator refuses."""
    pytest.importorskip("torch")
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no nvidia-smi")
    uuids = _nvidia_uuids()
    last = len(uuids) - 1  # on a multi-GPU machine, not GPU 0: the pinning must move the job
    total_mb = 1 << 20  # larger than any GPU: the cap is what the reservation asks, whatever the device

    # A worker with every GPU visible; the job placed on its last GPU, reserving 1 GiB.
    seen = _run_runner(runner_pinning(last, total_mb=total_mb, reserved_mb=1024, visible=None))
    assert seen["count"] == 1
    assert str(seen["uuid"]).removeprefix("GPU-") == uuids[last].removeprefix("GPU-"), seen
    applied = seen["applied"]
    assert isinstance(applied, dict)
    assert applied["cuda_visible_devices"] == str(last) and applied["memory_cap_mb"] == 1024
    assert applied["memory_fraction"] == pytest.approx(1024 * 2**20 / int(str(seen["total"])), rel=1e-5)
    assert seen["within_cap"] == "allocated"
    assert str(seen["over_cap"]).startswith("refused"), seen

    # A worker started with CUDA_VISIBLE_DEVICES=<that GPU's UUID>: its device #0 is that GPU; no cap when the
    # job reserves the whole device.
    seen = _run_runner(runner_pinning(0, total_mb=1024, reserved_mb=1024, visible=[uuids[last]]))
    assert seen["count"] == 1
    assert str(seen["uuid"]).removeprefix("GPU-") == uuids[last].removeprefix("GPU-"), seen
    applied = seen["applied"]
    assert isinstance(applied, dict)
    assert applied["cuda_visible_devices"] == uuids[last]
    assert applied["memory_cap_mb"] is None and applied["memory_fraction"] is None
    assert "over_cap" not in seen
