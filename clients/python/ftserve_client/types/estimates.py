"""Pre-flight VRAM estimates for a job that has not been created yet."""

from __future__ import annotations

from typing import Any, Literal

from .._models import BaseModel

__all__ = ["Estimate"]


class Estimate(BaseModel):
    """What the scheduler would need to run the job. More fields may come; they land in `model_extra`."""

    object: Literal["fine_tuning.estimate"] = "fine_tuning.estimate"
    estimated_vram_mb: int
    breakdown: dict[str, Any] | None = None
    """Megabytes per part: weights, LoRA, optimizer state, activations, overhead, ..."""
    gpu_class: str | None = None
    """The smallest GPU class that fits, when the server knows one."""
