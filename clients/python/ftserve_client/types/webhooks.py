"""Webhook event payloads (OpenAI's thin shape: fetch the object named in `data.id` for details)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .._models import BaseModel

__all__ = ["WebhookEvent"]


class WebhookEvent(BaseModel):
    id: str
    object: Literal["event"] = "event"
    type: str
    """e.g. fine_tuning.job.succeeded, fine_tuning.job.failed, fine_tuning.job.model.ready"""
    created_at: int
    data: dict[str, Any] = Field(default_factory=dict)
