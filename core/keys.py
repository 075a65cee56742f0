"""API keys: generated once, stored as SHA-256 hashes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re

from sqlmodel import Session, select

from core import ids
from core.errors import AuthenticationError, InvalidRequestError
from core.models import ApiKey, Organization, now_s

# Recognisable by secret scanners and by people: "ftsk-" then 48 base62 characters.
KEY_PREFIX = "ftsk-"
# What a key may do (api/scopes.py maps routes to them). "admin" includes the others.
ADMIN, FINE_TUNE, INFERENCE = "admin", "fine_tune", "inference"
SCOPES = (ADMIN, FINE_TUNE, INFERENCE)
_ORG_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + ids.new_id("", 48)


def get_or_create_org(session: Session, *, name: str) -> Organization:
    if not _ORG_NAME.match(name):
        raise InvalidRequestError(
            f"Invalid organization name {name!r}: use 1-64 lowercase letters, digits, '-' or '_'.",
            param="org",
        )
    org = session.exec(select(Organization).where(Organization.name == name)).first()
    if org is None:
        org = Organization(id=ids.org_id(), name=name)
        session.add(org)
        session.flush()
    return org


def check_scopes(scopes: list[str] | None, *, param: str = "scopes") -> list[str] | None:
    """The scopes, deduplicated in SCOPES' order; None (every scope) stays None."""
    if scopes is None:
        return None
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise InvalidRequestError(
            f"Invalid scopes {unknown or scopes!r}: give one or more of {', '.join(SCOPES)}.",
            param=param,
            code="invalid_value",
        )
    return [s for s in SCOPES if s in scopes]


def has_scope(key: ApiKey, scope: str) -> bool:
    return key.scopes is None or ADMIN in key.scopes or scope in key.scopes


def create_key(
    session: Session,
    *,
    org_name: str,
    name: str | None = None,
    scopes: list[str] | None = None,
    inference_token_quota: int | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for `org_name` (creating the org if needed). Returns the row and the key, shown once.
    `scopes` None: every scope."""
    org = get_or_create_org(session, name=org_name)
    key = generate_key()
    row = ApiKey(
        id=ids.new_id("key-"),
        organization_id=org.id,
        key_hash=hash_key(key),
        display_prefix=key[: len(KEY_PREFIX) + 4],
        name=name,
        scopes=check_scopes(scopes),
        inference_token_quota=inference_token_quota,
    )
    session.add(row)
    session.flush()
    return row, key


def revoke_key(session: Session, *, key_id: str) -> ApiKey:
    row = session.exec(select(ApiKey).where(ApiKey.id == key_id)).first()
    if row is None:
        raise InvalidRequestError(f"No API key with id {key_id!r}.", param="key_id")
    row.revoked_at = row.revoked_at or now_s()
    session.add(row)
    return row


def authenticate(session: Session, *, key: str | None) -> tuple[ApiKey, Organization]:
    if not key:
        raise AuthenticationError(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
        )
    digest = hash_key(key)
    row = session.exec(select(ApiKey).where(ApiKey.key_hash == digest)).first()
    # Compare the digests in constant time even though the lookup already matched.
    if row is None or not hmac.compare_digest(row.key_hash, digest) or row.revoked_at is not None:
        raise AuthenticationError("Incorrect API key provided.")
    org = session.exec(select(Organization).where(Organization.id == row.organization_id)).one()
    return row, org
