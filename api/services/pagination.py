"""Cursor paging on the `seq` column: `after=<object id>`, newest first by default, like OpenAI."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from sqlmodel import Session, select

from core.errors import InvalidRequestError

RowT = TypeVar("RowT")


def paginate(
    session: Session,
    *,
    model: type[RowT],
    filters: list[Any],
    after: str | None,
    limit: int,
    order: Literal["asc", "desc"] = "desc",
) -> tuple[list[RowT], bool]:
    """Return one page of rows plus `has_more`. `after` must be the id of a row visible under `filters`."""
    seq_col: Any = model.seq  # type: ignore[attr-defined]
    id_col: Any = model.id  # type: ignore[attr-defined]
    query = select(model).where(*filters)
    if after:
        anchor = session.exec(select(seq_col).where(id_col == after, *filters)).first()
        if anchor is None:
            raise InvalidRequestError(f"Unknown cursor 'after={after}'.", param="after")
        query = query.where(seq_col < anchor if order == "desc" else seq_col > anchor)
    query = query.order_by(seq_col.desc() if order == "desc" else seq_col.asc()).limit(limit + 1)
    rows = list(session.exec(query).all())
    return rows[:limit], len(rows) > limit
