"""The base of every response model."""

from __future__ import annotations

from typing import Any

import pydantic


class BaseModel(pydantic.BaseModel):
    """Unknown fields are kept (`model_extra`), so a newer server never breaks an older client."""

    model_config = pydantic.ConfigDict(extra="allow", populate_by_name=True, protected_namespaces=())

    def to_dict(self) -> dict[str, Any]:
        """The object as JSON-ready data, exactly the fields the server sent."""
        return self.model_dump(mode="json", exclude_unset=True)

    def to_json(self, *, indent: int | None = 2) -> str:
        return self.model_dump_json(indent=indent, exclude_unset=True)
