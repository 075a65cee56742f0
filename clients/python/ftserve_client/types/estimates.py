"""Pre-flight VRAM estimates for a job that has not been created yet (an ftserve extension)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .._models import BaseModel

__all__ = ["Estimate", "GpuFit"]


class GpuFit(BaseModel):
    gpu_class: str
    """The device name workers report, e.g. "NVIDIA H100 80GB HBM3" or "A10-24GB"."""
    total_mb: int
    devices: int
    """How many live devices of this class there are."""
    free_now: int
    """How many of them could take the job right now."""


class Estimate(BaseModel):
    """What the scheduler would reserve for the job, itemised, and which live GPUs could run it."""

    object: Literal["fine_tuning.estimate"] = "fine_tuning.estimate"
    model: str
    method: str
    estimated_vram_mb: int
    """What the scheduler reserves on a GPU: the peak plus a margin."""
    peak_vram_mb: int | None = None
    breakdown: dict[str, int] = Field(default_factory=dict)
    """Megabytes per part: weights, LoRA, optimizer state, activations, overhead, ..."""
    gpu_class: str | None = None
    """Where the job would go now (best fit), else the smallest class that can hold it."""
    fits: list[GpuFit] = Field(default_factory=list)
    placeable: bool | None = None
    """True: a live GPU could hold it; False: GPUs are live and none could; None: no live GPU worker."""
    cpu_ram_mb: int | None = None
    parameters: int | None = None
    trainable_parameters: int | None = None
    tokens_per_micro_batch: int | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    """Resolved: what the job would train with."""
    notes: list[str] = Field(default_factory=list)
