"""SQLModel tables. The database is the source of truth for everything but queues and liveness.

Every table has an integer `seq` primary key for stable cursor paging (many rows share a `created_at`
second) and a public string `id` with OpenAI's prefix.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Text
from sqlmodel import Field, SQLModel


def now_s() -> int:
    return int(time.time())


class Organization(SQLModel, table=True):
    __tablename__ = "organizations"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(index=True, unique=True, max_length=64)
    name: str = Field(index=True, unique=True, max_length=128)
    created_at: int = Field(default_factory=now_s)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(index=True, unique=True, max_length=64)
    organization_id: str = Field(index=True, foreign_key="organizations.id", max_length=64)
    # SHA-256 hex of the full key; the key itself is shown once and never stored.
    key_hash: str = Field(index=True, unique=True, max_length=64)
    # First characters, so a user can tell their keys apart in listings.
    display_prefix: str = Field(max_length=32)
    name: str | None = Field(default=None, max_length=128)
    created_at: int = Field(default_factory=now_s)
    revoked_at: int | None = None
    last_used_at: int | None = None


class File(SQLModel, table=True):
    __tablename__ = "files"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(index=True, unique=True, max_length=64)
    organization_id: str = Field(index=True, max_length=64)
    filename: str = Field(max_length=512)
    purpose: str = Field(index=True, max_length=32)
    bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    created_at: int = Field(default_factory=now_s)
    expires_at: int | None = None
    # uploaded → processed | error. Only `processed` files can be trained on.
    status: str = Field(default="uploaded", max_length=16)
    status_details: str | None = Field(default=None, sa_column=Column(Text))
    # Detected training-data format: chat | prompt_completion | preference | sharegpt | alpaca.
    data_format: str | None = Field(default=None, max_length=32)
    example_count: int | None = None
    # The first 100 validation errors: [{line, field, message, code}], kept for the report endpoint.
    validation_errors: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    validation_error_count: int = 0
    storage_key: str = Field(max_length=512)
    sha256: str | None = Field(default=None, max_length=64)
    deleted_at: int | None = Field(default=None, index=True)
