"""Idempotency-Key on creates (Stripe's semantics), shared by POST /v1/fine_tuning/jobs and POST /v1/files.

A created object records the key; the same key with the same request within 24 h gets that object back and
creates nothing, and another request under the key is refused. The unique index on (organization, key) of
each table is what makes two concurrent creates with one key insert one row. Each service decides what "the
same request" means and when an old holder gives its key up.
"""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import update
from sqlmodel import Session, col, select

from core.errors import IdempotencyKeyReusedError, InvalidRequestError
from core.models import File, FineTuningJob, now_s

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_IDEMPOTENCY_KEY = 255
# A key names its object for this long; after it, the same key creates a new one (Stripe keeps keys 24 h too).
IDEMPOTENCY_KEY_TTL_S = 24 * 3600

KeyedRow = TypeVar("KeyedRow", File, FineTuningJob)


def check_idempotency_key(key: str | None) -> str | None:
    """The Idempotency-Key header as given, or None without one; 1 to 255 printable ASCII characters."""
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not all(" " <= ch <= "~" for ch in key):
        raise InvalidRequestError(
            f"The {IDEMPOTENCY_HEADER} header must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters "
            "(a UUID is a good choice).",
            param=IDEMPOTENCY_HEADER,
            code="invalid_idempotency_key",
        )
    return key


def key_expired(created_at: int) -> bool:
    """Whether a key recorded by an object created at `created_at` is past its 24 h."""
    return created_at <= now_s() - IDEMPOTENCY_KEY_TTL_S


def key_holder(session: Session, table: type[KeyedRow], *, organization_id: str, key: str) -> KeyedRow | None:
    """The row of `table` that records this organization's key, whether or not the key is still live."""
    return session.exec(
        select(table).where(table.organization_id == organization_id, table.idempotency_key == key)
    ).first()


def release_key(session: Session, table: type[KeyedRow], *, holder: KeyedRow, key: str) -> None:
    """The holder gives its expired key up, in the transaction that inserts the key's new row; a no-op if a
    concurrent request already took it (that one's insert then wins the unique index)."""
    session.execute(
        update(table)
        .where(col(table.seq) == holder.seq, col(table.idempotency_key) == key)
        .values(idempotency_key=None)
    )


def key_reused(*, kind: str, object_id: str, request: str, original: str) -> IdempotencyKeyReusedError:
    """The 422 for a key that already names another request's `kind` (job, file)."""
    return IdempotencyKeyReusedError(
        f"This {IDEMPOTENCY_HEADER} was already used with a different {request} ({kind} {object_id}). "
        f"Use a new key for a new {kind}, or resend the original {original} to get that {kind} back.",
        param=IDEMPOTENCY_HEADER,
    )
