"""Which vLLM replica serves which model: the replicas ftserve routes to (`inference_replicas`) and the adapters
each has loaded (`adapter_placements`).

A replica is one vLLM server for one base model, registered by `ftserve up` (managed), by
FTSERVE_INFERENCE_REPLICAS (settings) or by `ftserve inference add` (cli). A placement says an adapter is loaded
on a replica; each replica holds at most `max_adapters`, and `lru_victims` picks which to unload for one more.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from core import ids
from core.db import session_scope
from core.errors import InvalidRequestError
from core.models import AdapterPlacement, InferenceReplica, now_s
from core.settings import Settings

MANAGED, FROM_SETTINGS, FROM_CLI = "managed", "settings", "cli"
# unknown: never checked; starting: not answering yet since it was registered; unhealthy: stopped answering.
HEALTHY, UNHEALTHY, UNKNOWN, STARTING = "healthy", "unhealthy", "unknown", "starting"


def now_ms() -> int:
    return int(time.time() * 1000)


def normalize_url(url: str) -> str:
    """`http://host:port` without a trailing `/` or `/v1`: ftserve adds the paths."""
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url):
        raise InvalidRequestError(f"Replica URL {url!r} must start with http:// or https://", param="url")
    return url.removesuffix("/v1")


def upsert_replica(
    session: Session,
    *,
    base_model: str,
    url: str,
    adapter_dir: str | Path,
    max_adapters: int,
    max_lora_rank: int,
    source: str,
    api_key: str | None = None,
    agent_url: str | None = None,
) -> InferenceReplica:
    """Register (or update, keyed by URL) a replica. A changed base model drops its placements. With
    `agent_url`, adapters reach the replica through its adapter agent and `adapter_dir` is not used."""
    url = normalize_url(url)
    agent_url = normalize_url(agent_url) if agent_url else None
    adapter_dir = str(Path(adapter_dir).expanduser())
    if agent_url is None and not Path(adapter_dir).is_absolute():
        raise InvalidRequestError(
            f"adapter_dir {adapter_dir!r} must be an absolute path", param="adapter_dir"
        )
    if max_adapters < 1:
        raise InvalidRequestError("max_adapters must be at least 1", param="max_adapters")
    row = session.exec(select(InferenceReplica).where(InferenceReplica.url == url)).first()
    if row is None:
        row = InferenceReplica(
            id=ids.new_id("rep-", 16), base_model=base_model, url=url, adapter_dir=adapter_dir
        )
    elif row.base_model != base_model:
        session.execute(delete(AdapterPlacement).where(col(AdapterPlacement.replica_id) == row.id))
    row.status = UNKNOWN  # (re-)registered: the health check says what it is
    row.base_model, row.adapter_dir, row.api_key = base_model, adapter_dir, api_key
    row.agent_url = agent_url
    row.max_adapters, row.max_lora_rank, row.source = max_adapters, max_lora_rank, source
    row.updated_at = now_s()
    session.add(row)
    return row


def remove_replica(session: Session, key: str) -> InferenceReplica | None:
    """Forget a replica (by id or URL) and its placements. Its vLLM keeps running; ftserve stops using it."""
    row = session.exec(select(InferenceReplica).where(InferenceReplica.id == key)).first()
    if row is None and key.startswith("http"):
        row = session.exec(select(InferenceReplica).where(InferenceReplica.url == normalize_url(key))).first()
    if row is None:
        return None
    session.execute(delete(AdapterPlacement).where(col(AdapterPlacement.replica_id) == row.id))
    session.delete(row)
    return row


def list_replicas(session: Session, base_model: str | None = None) -> list[InferenceReplica]:
    statement = select(InferenceReplica).order_by(col(InferenceReplica.seq))
    if base_model is not None:
        statement = statement.where(InferenceReplica.base_model == base_model)
    return list(session.exec(statement).all())


def parse_replicas_setting(raw: str | None) -> list[dict[str, Any]]:
    """FTSERVE_INFERENCE_REPLICAS: a JSON list of {base_model, url, adapter_dir?, agent_url?, max_adapters?,
    api_key?, max_lora_rank?}."""
    if not raw or not raw.strip():
        return []
    try:
        entries = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"FTSERVE_INFERENCE_REPLICAS is not valid JSON: {exc}") from None
    if not isinstance(entries, list):
        raise ValueError("FTSERVE_INFERENCE_REPLICAS must be a JSON list of objects")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("base_model") or not entry.get("url"):
            raise ValueError(f"FTSERVE_INFERENCE_REPLICAS[{i}] needs 'base_model' and 'url'")
    return entries


def sync_configured_replicas(engine: Engine, settings: Settings) -> list[InferenceReplica]:
    """Make the `settings` replicas in the DB match FTSERVE_INFERENCE_REPLICAS (called at process start)."""
    entries = parse_replicas_setting(settings.inference_replicas)
    with session_scope(engine) as session:
        rows = [
            upsert_replica(
                session,
                base_model=str(entry["base_model"]),
                url=str(entry["url"]),
                adapter_dir=entry.get("adapter_dir") or settings.adapters_dir,
                max_adapters=int(entry.get("max_adapters") or settings.resolved_inference_max_adapters),
                max_lora_rank=int(entry.get("max_lora_rank") or settings.vllm_max_lora_rank),
                source=FROM_SETTINGS,
                api_key=entry.get("api_key"),
                agent_url=entry.get("agent_url"),
            )
            for entry in entries
        ]
        keep = {row.url for row in rows}
        for stale in session.exec(
            select(InferenceReplica).where(InferenceReplica.source == FROM_SETTINGS)
        ).all():
            if stale.url not in keep:
                remove_replica(session, stale.id)
    return rows


def set_replica_health(engine: Engine, replica_id: str, status: str, error: str | None = None) -> None:
    with session_scope(engine) as session:
        session.execute(
            update(InferenceReplica)
            .where(col(InferenceReplica.id) == replica_id)
            .values(status=status, last_error=error, last_checked_at=now_s())
        )


# -- placements: which replica has which adapter loaded ---------------------------------------------------


def placements_by_adapter(session: Session, adapter_ids: Iterable[str] | None = None) -> dict[str, set[str]]:
    statement = select(AdapterPlacement.adapter_id, AdapterPlacement.replica_id)
    if adapter_ids is not None:
        statement = statement.where(col(AdapterPlacement.adapter_id).in_(list(adapter_ids)))
    out: dict[str, set[str]] = {}
    for adapter_id, replica_id in session.exec(statement).all():
        out.setdefault(adapter_id, set()).add(replica_id)
    return out


def record_placement(engine: Engine, adapter_id: str, replica_id: str, lora_path: str) -> None:
    try:
        _record_placement(engine, adapter_id, replica_id, lora_path)
    except IntegrityError:  # another process recorded the same pair at the same moment: the row exists
        _record_placement(engine, adapter_id, replica_id, lora_path)


def _record_placement(engine: Engine, adapter_id: str, replica_id: str, lora_path: str) -> None:
    with session_scope(engine) as session:
        existing = session.exec(
            select(AdapterPlacement).where(
                AdapterPlacement.adapter_id == adapter_id, AdapterPlacement.replica_id == replica_id
            )
        ).first()
        if existing is not None:
            existing.lora_path, existing.loaded_at, existing.last_used_ms = lora_path, now_s(), now_ms()
            session.add(existing)
            return
        session.add(
            AdapterPlacement(
                adapter_id=adapter_id, replica_id=replica_id, lora_path=lora_path, last_used_ms=now_ms()
            )
        )


def drop_placements(engine: Engine, pairs: Iterable[tuple[str, str]]) -> None:
    pairs = list(pairs)
    if not pairs:
        return
    with session_scope(engine) as session:
        for adapter_id, replica_id in pairs:
            session.execute(
                delete(AdapterPlacement).where(
                    col(AdapterPlacement.adapter_id) == adapter_id,
                    col(AdapterPlacement.replica_id) == replica_id,
                )
            )


def lru_victims(
    engine: Engine, replica: InferenceReplica, *, keep: str, recency: dict[tuple[str, str], int]
) -> list[str]:
    """Adapters to unload from `replica` so one more fits, least recently used first. `recency` holds this
    process's newer last-use times that are not flushed to the DB yet."""
    with Session(engine) as session:
        rows = session.exec(
            select(AdapterPlacement.adapter_id, AdapterPlacement.last_used_ms).where(
                AdapterPlacement.replica_id == replica.id, AdapterPlacement.adapter_id != keep
            )
        ).all()
    excess = len(rows) + 1 - replica.max_adapters
    if excess <= 0:
        return []
    ranked = sorted(rows, key=lambda r: max(r[1], recency.get((r[0], replica.id), 0)))
    return [adapter_id for adapter_id, _ in ranked[:excess]]


def flush_recency(engine: Engine, recency: dict[tuple[str, str], int]) -> None:
    if not recency:
        return
    with session_scope(engine) as session:
        for (adapter_id, replica_id), ms in recency.items():
            session.execute(
                update(AdapterPlacement)
                .where(
                    col(AdapterPlacement.adapter_id) == adapter_id,
                    col(AdapterPlacement.replica_id) == replica_id,
                    col(AdapterPlacement.last_used_ms) < ms,
                )
                .values(last_used_ms=ms)
            )
