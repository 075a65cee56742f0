"""Object ids with OpenAI's prefixes. Random, URL-safe, and sortable by nothing: order by created_at."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def new_id(prefix: str, n: int = 24) -> str:
    return f"{prefix}{_random(n)}"


def file_id() -> str:
    return new_id("file-")


def org_id() -> str:
    return new_id("org-")


def job_id() -> str:
    return new_id("ftjob-")


def event_id() -> str:
    return new_id("ftevent-")


def checkpoint_id() -> str:
    return new_id("ftckpt-")


def request_id() -> str:
    return new_id("req_", 20)
