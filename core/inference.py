"""Inference replicas and adapter placement, shared by the API (lazy loads, routing) and the scheduler (hot
loads on success, health checks).

- A replica is one vLLM server for one base model (`inference_replicas`). vLLM's own runtime LoRA API does
  the loading: `POST /v1/load_lora_adapter {lora_name, lora_path}` with an absolute, versioned path.
- A served adapter (`served_adapters`) is a model name inference can serve: a job's final adapter or one of
  its checkpoints. Its files are copied from storage to `<replica.adapter_dir>/<job>/<final|ckpt-step-N>/
  <sha16>/` once, read-only, and never rewritten (vLLM re-reads evicted adapters from that path, and its
  prefix cache keys on it).
- A placement (`adapter_placements`) says an adapter is loaded on a replica. Each replica holds at most
  `max_adapters`; loading one more first unloads the least recently used.

vLLM keeps its registry per process and forgets it on restart; the placements are ftserve's view, corrected
by the scheduler's health check (which lists what each replica really serves) and by the API, which treats a
404 from vLLM for a placed adapter as "not loaded any more" and loads it again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import delete, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from core import ids, jobs, metrics
from core.adapters import AdapterRejected, adapter_rel_dir, materialize
from core.db import session_scope
from core.errors import InvalidRequestError, NotFoundError
from core.model_registry import local_base_dir
from core.models import (
    AdapterPlacement,
    FineTunedModel,
    InferenceReplica,
    JobCheckpoint,
    ServedAdapter,
    now_s,
)
from core.settings import Settings
from core.storage import Storage

log = logging.getLogger("ftserve.inference")

MANAGED, FROM_SETTINGS, FROM_CLI = "managed", "settings", "cli"
# unknown: never checked; starting: not answering yet since it was registered; unhealthy: stopped answering.
HEALTHY, UNHEALTHY, UNKNOWN, STARTING = "healthy", "unhealthy", "unknown", "starting"
PENDING, READY, REJECTED, DELETED = "pending", "ready", "rejected", "deleted"
CHECKPOINT_NAME = re.compile(r"^(?P<model>ft:.+):ckpt-step-(?P<step>\d+)$")


def now_ms() -> int:
    return int(time.time() * 1000)


# -- replicas --------------------------------------------------------------------------------------------------


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


# -- servable adapters -----------------------------------------------------------------------------------------


def resolve_adapter(session: Session, *, organization_id: str, model_id: str) -> ServedAdapter:
    """The servable adapter behind `model_id` for this organization, its row created on first use. Another
    organization's model, a deleted one and an expired checkpoint are all 'not found'."""
    not_found = NotFoundError(
        f"The model '{model_id}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )
    match = CHECKPOINT_NAME.match(model_id)
    parent_name = match.group("model") if match else model_id
    parent = session.exec(select(FineTunedModel).where(FineTunedModel.id == parent_name)).first()
    if parent is not None and (parent.organization_id != organization_id or parent.deleted_at is not None):
        raise not_found
    if match:
        checkpoint = session.exec(
            select(JobCheckpoint).where(
                JobCheckpoint.fine_tuned_model_checkpoint == model_id,
                JobCheckpoint.organization_id == organization_id,
                col(JobCheckpoint.deleted_at).is_(None),
            )
        ).first()
        if checkpoint is None:
            raise not_found
        source: dict[str, Any] = {
            "job_id": checkpoint.job_id,
            "storage_prefix": checkpoint.storage_prefix,
            "checkpoint_step": checkpoint.step_number,
        }
        base_model = _job_base_model(session, checkpoint.job_id)
    else:
        if parent is None:
            raise not_found
        source = {"job_id": parent.job_id, "storage_prefix": parent.adapter_prefix, "checkpoint_step": None}
        base_model = parent.base_model
    row = session.exec(select(ServedAdapter).where(ServedAdapter.id == model_id)).first()
    if row is not None and row.organization_id != organization_id:
        raise not_found
    if row is not None and row.status == DELETED:
        raise not_found
    if row is not None and row.status == REJECTED:
        raise InvalidRequestError(
            row.error or f"The model '{model_id}' cannot be served.", param="model", code="model_not_servable"
        )
    if row is None:
        row = ServedAdapter(
            id=model_id, organization_id=organization_id, base_model=base_model, status=PENDING, **source
        )
        session.add(row)
        try:
            session.commit()
        except IntegrityError:  # created by another process at the same moment
            session.rollback()
            row = session.exec(select(ServedAdapter).where(ServedAdapter.id == model_id)).one()
    return row


def _job_base_model(session: Session, job_id: str) -> str:
    from core.models import FineTuningJob

    job = session.exec(select(FineTuningJob).where(FineTuningJob.id == job_id)).one()
    return job.model


def set_adapter_version(engine: Engine, adapter_id: str, version: str, rel_path: str) -> None:
    with session_scope(engine) as session:
        session.execute(
            update(ServedAdapter)
            .where(col(ServedAdapter.id) == adapter_id, col(ServedAdapter.version).is_(None))
            .values(version=version, rel_path=rel_path)
        )


def reject_adapter(engine: Engine, adapter: ServedAdapter, reason: str) -> bool:
    """Mark an adapter unservable and tell its job, once. Returns whether this call did it."""
    with session_scope(engine) as session:
        changed = session.execute(
            update(ServedAdapter)
            .where(col(ServedAdapter.id) == adapter.id, col(ServedAdapter.status) != REJECTED)
            .values(status=REJECTED, error=reason)
        ).rowcount  # type: ignore[attr-defined]
        if changed:
            jobs.append_event(
                session,
                job_id=adapter.job_id,
                level="error",
                message=f"Model {adapter.id} cannot be served: {reason}",
                data={"event": "model.rejected", "model": adapter.id, "reason": reason},
            )
    return bool(changed)


# -- placements ------------------------------------------------------------------------------------------------


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


# -- talking to vLLM -------------------------------------------------------------------------------------------


class ReplicaError(Exception):
    """A replica answered with an error (status >= 400) or not at all (status 0)."""

    def __init__(self, replica: InferenceReplica, status: int, message: str) -> None:
        super().__init__(f"{replica.url}: {message}" + (f" (HTTP {status})" if status else ""))
        self.status = status
        self.message = message


def replica_headers(replica: InferenceReplica) -> dict[str, str]:
    return {"authorization": f"Bearer {replica.api_key}"} if replica.api_key else {}


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return str(body["error"].get("message") or body)
        return str(body.get("detail") if isinstance(body, dict) and "detail" in body else body)
    except ValueError:
        return response.text[:500]


async def vllm_models(
    http: httpx.AsyncClient, replica: InferenceReplica, *, timeout_s: float = 5.0
) -> dict[str, Any]:
    """What the replica serves: {model id: card}, base model(s) and LoRA adapters (card `root` = path)."""
    try:
        response = await http.get(
            f"{replica.url}/v1/models", headers=replica_headers(replica), timeout=timeout_s
        )
    except httpx.HTTPError as exc:
        raise ReplicaError(replica, 0, f"unreachable: {type(exc).__name__}: {exc}") from None
    if response.status_code != 200:
        raise ReplicaError(replica, response.status_code, _error_message(response))
    return {card["id"]: card for card in response.json().get("data", [])}


async def vllm_load(
    http: httpx.AsyncClient, replica: InferenceReplica, name: str, path: str, *, timeout_s: float
) -> None:
    try:
        response = await http.post(
            f"{replica.url}/v1/load_lora_adapter",
            json={"lora_name": name, "lora_path": path},
            headers=replica_headers(replica),
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        raise ReplicaError(replica, 0, f"unreachable: {type(exc).__name__}: {exc}") from None
    if response.status_code == 404 and "Not Found" in response.text and "lora" not in response.text.lower():
        raise ReplicaError(
            replica, 404, "runtime LoRA loading is off: start vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
        )
    if response.status_code != 200:
        raise ReplicaError(replica, response.status_code, _error_message(response))


async def vllm_unload(
    http: httpx.AsyncClient, replica: InferenceReplica, name: str, *, timeout_s: float = 30.0
) -> bool:
    """Unload `name`; False when the replica did not have it."""
    try:
        response = await http.post(
            f"{replica.url}/v1/unload_lora_adapter",
            json={"lora_name": name},
            headers=replica_headers(replica),
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        raise ReplicaError(replica, 0, f"unreachable: {type(exc).__name__}: {exc}") from None
    if response.status_code == 404:
        return False
    if response.status_code != 200:
        raise ReplicaError(replica, response.status_code, _error_message(response))
    return True


# -- talking to adapter agents ---------------------------------------------------------------------------------


def agent_headers(settings: Settings) -> dict[str, str]:
    return {"authorization": f"Bearer {settings.agent_token}"} if settings.agent_token else {}


async def agent_sync(
    http: httpx.AsyncClient,
    replica: InferenceReplica,
    settings: Settings,
    *,
    storage_prefix: str,
    rel_dir: str,
    expected_version: str | None,
    timeout_s: float,
) -> tuple[str, str]:
    """Have the replica's adapter agent copy an adapter from storage to its host: (absolute path, version).
    Raises AdapterRejected (the agent refused the adapter) or ReplicaError (the agent failed)."""
    body = {
        "storage_prefix": storage_prefix,
        "rel_dir": rel_dir,
        "expected_version": expected_version,
        "max_lora_rank": replica.max_lora_rank,
        "base_model": replica.base_model,
    }
    try:
        response = await http.post(
            f"{replica.agent_url}/v1/adapters/sync",
            json=body,
            headers=agent_headers(settings),
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        raise ReplicaError(replica, 0, f"adapter agent unreachable: {type(exc).__name__}: {exc}") from None
    if response.status_code == 422:
        raise AdapterRejected(_error_message(response))
    if response.status_code != 200:
        raise ReplicaError(replica, response.status_code, f"adapter agent: {_error_message(response)}")
    answer = response.json()
    return str(answer["path"]), str(answer["version"])


async def agent_forget(
    http: httpx.AsyncClient, replica: InferenceReplica, settings: Settings, job_id: str
) -> None:
    """Delete the local copies of one job's adapters on the agent's host (best effort: raises ReplicaError)."""
    try:
        response = await http.delete(
            f"{replica.agent_url}/v1/adapters/{job_id}", headers=agent_headers(settings), timeout=30.0
        )
    except httpx.HTTPError as exc:
        raise ReplicaError(replica, 0, f"adapter agent unreachable: {type(exc).__name__}: {exc}") from None
    if response.status_code not in (200, 204, 404):
        raise ReplicaError(replica, response.status_code, f"adapter agent: {_error_message(response)}")


# -- loading ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    replica_id: str
    lora_path: str
    evicted: tuple[str, ...] = ()


class AdapterLoader:
    """Puts adapters on replicas: copy (once per version), make room (LRU), load, verify, record."""

    def __init__(self, engine: Engine, storage: Storage, settings: Settings, http: httpx.AsyncClient) -> None:
        self.engine = engine
        self.storage = storage
        self.settings = settings
        self.http = http
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._replica_locks: dict[str, asyncio.Lock] = {}
        # (adapter, replica) → last use in ms, not yet written to the DB.
        self.recency: dict[tuple[str, str], int] = {}

    def touch(self, adapter_id: str, replica_id: str) -> None:
        self.recency[(adapter_id, replica_id)] = now_ms()

    def flush(self) -> None:
        recency, self.recency = self.recency, {}
        try:
            flush_recency(self.engine, recency)
        except Exception:
            for key, ms in recency.items():  # keep them for the next flush
                self.recency[key] = max(ms, self.recency.get(key, 0))
            raise

    async def path_on(self, adapter: ServedAdapter, replica: InferenceReplica) -> str:
        """The adapter's absolute path on the replica's host: copied there by its adapter agent when it has
        one, else by this process into the replica's adapter_dir."""
        if not replica.agent_url:
            return await asyncio.to_thread(self.copy_for, adapter, replica)
        rel_dir = adapter_rel_dir(adapter.job_id, adapter.checkpoint_step)
        path, version = await agent_sync(
            self.http,
            replica,
            self.settings,
            storage_prefix=adapter.storage_prefix,
            rel_dir=rel_dir,
            expected_version=adapter.version,
            timeout_s=self.settings.inference_load_timeout_s,
        )
        if adapter.version is None:
            await asyncio.to_thread(
                set_adapter_version, self.engine, adapter.id, version, f"{rel_dir}/{version}"
            )
        return path

    def copy_for(self, adapter: ServedAdapter, replica: InferenceReplica) -> str:
        """The adapter's immutable local path under the replica's adapter_dir (copied there if missing)."""
        base_dir = local_base_dir(self.settings, adapter.base_model)
        rel_dir = adapter_rel_dir(adapter.job_id, adapter.checkpoint_step)
        path, version = materialize(
            self.storage,
            adapter.storage_prefix,
            Path(replica.adapter_dir),
            rel_dir,
            max_lora_rank=replica.max_lora_rank,
            base_model_dir=base_dir,
            base_model_id=adapter.base_model,
            expected_version=adapter.version,
        )
        if adapter.version is None:
            set_adapter_version(self.engine, adapter.id, version, f"{rel_dir}/{version}")
        return str(path)

    async def load(
        self, adapter: ServedAdapter, replica: InferenceReplica, *, trigger: str = "lazy"
    ) -> Loaded:
        """Load `adapter` on `replica` (idempotent). Raises AdapterRejected (the adapter can't be served) or
        ReplicaError (the replica failed). `trigger` labels the metrics: "lazy" (a request for it) or "hot"
        (the scheduler, as soon as the model is ready)."""
        started = time.perf_counter()
        lock = self._locks.setdefault((adapter.id, replica.id), asyncio.Lock())
        async with lock:
            path = await self.path_on(adapter, replica)
            # One eviction + load at a time per replica, so two loads can't both take the last free slot.
            async with self._replica_locks.setdefault(replica.id, asyncio.Lock()):
                evicted = await self._make_room(replica, keep=adapter.id)
                timeout = self.settings.inference_load_timeout_s
                try:
                    await vllm_load(self.http, replica, adapter.id, path, timeout_s=timeout)
                except ReplicaError as exc:
                    if exc.status != 400 or "already been loaded" not in exc.message:
                        raise
                    # Loaded already (by another process, or before a lost placement row): check the path.
                    cards = await vllm_models(self.http, replica)
                    if cards.get(adapter.id, {}).get("root") != path:
                        await vllm_unload(self.http, replica, adapter.id)
                        await vllm_load(self.http, replica, adapter.id, path, timeout_s=timeout)
                cards = await vllm_models(self.http, replica)
                if cards.get(adapter.id, {}).get("root") != path:
                    raise ReplicaError(replica, 0, f"loaded {adapter.id} but the replica does not list it")
                await asyncio.to_thread(record_placement, self.engine, adapter.id, replica.id, path)
                self.touch(adapter.id, replica.id)
        metrics.ADAPTER_LOADS.labels(trigger=trigger).inc()
        metrics.ADAPTER_LOAD_SECONDS.observe(time.perf_counter() - started)
        log.info(
            "loaded %s on %s from %s (evicted %s)", adapter.id, replica.url, path, list(evicted) or "none"
        )
        return Loaded(replica.id, path, tuple(evicted))

    async def _make_room(self, replica: InferenceReplica, *, keep: str) -> list[str]:
        victims = await asyncio.to_thread(lru_victims, self.engine, replica, keep=keep, recency=self.recency)
        for victim in victims:
            await vllm_unload(self.http, replica, victim)
            await asyncio.to_thread(drop_placements, self.engine, [(victim, replica.id)])
            self.recency.pop((victim, replica.id), None)
            metrics.ADAPTER_EVICTIONS.inc()
            log.info("evicted %s from %s (least recently used)", victim, replica.url)
        return victims

    async def unload_everywhere(self, adapter_ids: list[str]) -> list[str]:
        """Unload these adapters from every replica that has them; returns the errors (replicas that could
        not be reached keep nothing: their placements are dropped, and the health check reconciles)."""
        with Session(self.engine) as session:
            placed = placements_by_adapter(session, adapter_ids)
            replicas = {r.id: r for r in list_replicas(session)}
        problems: list[str] = []
        dropped: list[tuple[str, str]] = []
        for adapter_id, replica_ids in placed.items():
            for replica_id in replica_ids:
                replica = replicas.get(replica_id)
                if replica is not None:
                    try:
                        await vllm_unload(self.http, replica, adapter_id)
                    except ReplicaError as exc:
                        problems.append(str(exc))
                dropped.append((adapter_id, replica_id))
                self.recency.pop((adapter_id, replica_id), None)
        await asyncio.to_thread(drop_placements, self.engine, dropped)
        return problems


def mark_deleted(engine: Engine, model_id: str) -> list[str]:
    """A deleted fine-tuned model: it and its checkpoints are no longer served. Returns the served names."""
    with session_scope(engine) as session:
        rows = session.exec(
            select(ServedAdapter).where(
                (col(ServedAdapter.id) == model_id)
                | col(ServedAdapter.id).startswith(model_id + ":ckpt-step-", autoescape=True)
            )
        ).all()
        for row in rows:
            row.status, row.deleted_at = DELETED, now_s()
            session.add(row)
        names = {row.id for row in rows}
        names |= set(placements_by_adapter(session, [model_id]))
        for adapter_id in session.exec(
            select(AdapterPlacement.adapter_id).where(
                col(AdapterPlacement.adapter_id).startswith(model_id + ":", autoescape=True)
            )
        ).all():
            names.add(adapter_id)
    return sorted(names)


__all__ = [
    "AdapterLoader",
    "AdapterRejected",
    "ReplicaError",
    "mark_deleted",
    "resolve_adapter",
]
