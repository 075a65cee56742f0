"""The adapter loader: hot-loads LoRA adapters onto replicas (the API lazily, on a request for the model; the
scheduler as soon as a model is ready) and unloads them."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import Session

from core import metrics
from core.adapters import adapter_rel_dir, materialize
from core.inference.agent import agent_sync
from core.inference.replicas import (
    drop_placements,
    flush_recency,
    list_replicas,
    lru_victims,
    now_ms,
    placements_by_adapter,
    record_placement,
)
from core.inference.served import set_adapter_version
from core.inference.vllm import ReplicaError, vllm_load, vllm_models, vllm_unload
from core.model_registry import local_base_dir
from core.models import InferenceReplica, ServedAdapter
from core.settings import Settings
from core.storage import Storage

log = logging.getLogger("ftserve.inference")


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
