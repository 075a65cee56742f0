"""Models: base models the server can fine-tune and your fine-tuned ones."""

from __future__ import annotations

from typing import Literal

from .._models import BaseModel

__all__ = ["Model", "ModelDeleted"]


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    """'system' for base models, your organization for fine-tuned ones."""


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool
