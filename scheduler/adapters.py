"""Adapter placement in the scheduler: hot-load every newly finished model onto the replicas of its base
model, and check the replicas' health.

Why here, polling the DB every `inference_poll_interval_s` (0.25 s), rather than in the job runner: the
worker may sit on a GPU box with no route to the vLLM servers, and a worker that dies right after `succeeded`
would leave a model that nobody loads. The DB is the truth: a scheduler (re)started at any time finds the
succeeded models that are not ready yet and loads them. The poll is one indexed query; loading itself takes
tens of milliseconds, so `model.ready` follows `succeeded` in well under a second.

Hot-loads run as background tasks beside this loop, so a slow replica never delays the next model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core import jobs
from core.adapters import AdapterRejected
from core.db import session_scope
from core.inference.loader import AdapterLoader
from core.inference.replicas import (
    HEALTHY,
    STARTING,
    UNHEALTHY,
    UNKNOWN,
    drop_placements,
    list_replicas,
    set_replica_health,
    sync_configured_replicas,
)
from core.inference.served import PENDING, reject_adapter, resolve_adapter
from core.inference.vllm import ReplicaError, replica_headers, vllm_models
from core.models import AdapterPlacement, FineTunedModel, InferenceReplica, ServedAdapter, now_s
from core.settings import Settings
from core.storage import Storage, make_storage_from_settings

log = logging.getLogger("ftserve.scheduler.adapters")

HOT_LOAD_WINDOW_S = 24 * 3600  # models finished longer ago than this are left to lazy loading
HEALTH_WRITE_EVERY_S = 15  # refresh last_checked_at at least this often even when nothing changed


class AdapterPlacer:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        storage: Storage | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.http = http or httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=3.0))
        self.loader = AdapterLoader(
            engine, storage or make_storage_from_settings(settings), settings, self.http
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._attempted: set[str] = set()  # hot-loaded (or tried) by this process; lazy loading does the rest
        self._last_health = 0.0
        self._health: dict[str, tuple[str, float]] = {}  # replica id → (status written, when)

    # -- the loop ------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        try:
            sync_configured_replicas(self.engine, self.settings)
        except Exception:
            log.exception("FTSERVE_INFERENCE_REPLICAS could not be applied")
        interval = self.settings.inference_poll_interval_s
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:
                log.exception("adapter placement tick failed; retrying in %.2fs", interval)
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                pass
        await self.aclose()

    async def aclose(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        try:
            self.loader.flush()
        except Exception:
            log.exception("could not flush adapter recency")
        await self.http.aclose()

    async def tick(self) -> list[str]:
        """Check health when due, then start a hot-load for each new model. Returns the models started."""
        if time.monotonic() - self._last_health >= self.settings.inference_health_interval_s:
            self._last_health = time.monotonic()
            await self.check_health()
        new = [m for m in self._new_models() if m.id not in self._tasks and m.id not in self._attempted]
        if not new:
            return []
        with Session(self.engine) as session:  # one query, not one per waiting model
            serving = {r.base_model for r in list_replicas(session) if r.status in (HEALTHY, UNKNOWN)}
        started = []
        for model in new:
            if model.base_model not in serving:
                continue  # no replica up for its base model (yet): it waits, or loads on first use
            self._tasks[model.id] = asyncio.create_task(self._hot_load_task(model))
            started.append(model.id)
        return started

    async def wait_idle(self) -> None:
        """Wait for the hot-loads in flight (tests)."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    # -- hot load ------------------------------------------------------------------------------------------

    def _new_models(self) -> list[FineTunedModel]:
        """Final models of succeeded jobs that are not ready, rejected or deleted yet."""
        since = now_s() - HOT_LOAD_WINDOW_S
        with Session(self.engine, expire_on_commit=False) as session:
            rows = session.exec(
                select(FineTunedModel)
                .outerjoin(ServedAdapter, col(ServedAdapter.id) == col(FineTunedModel.id))
                .where(
                    col(FineTunedModel.deleted_at).is_(None),
                    col(FineTunedModel.checkpoint_step).is_(None),
                    col(FineTunedModel.created_at) >= since,
                    col(ServedAdapter.id).is_(None) | (col(ServedAdapter.status) == PENDING),
                )
                .order_by(col(FineTunedModel.seq))
                .limit(50)
            ).all()
        return list(rows)

    async def _hot_load_task(self, model: FineTunedModel) -> None:
        try:
            done = await self.hot_load(model)
            if done:
                self._attempted.add(model.id)
        except Exception:
            log.exception("hot load of %s failed", model.id)
            self._attempted.add(model.id)
        finally:
            self._tasks.pop(model.id, None)

    def _served_row(self, model: FineTunedModel) -> ServedAdapter:
        with Session(self.engine, expire_on_commit=False) as session:
            return resolve_adapter(session, organization_id=model.organization_id, model_id=model.id)

    async def hot_load(self, model: FineTunedModel) -> bool:
        """Load `model` on every usable replica of its base model, then mark it ready. False when no replica
        is up yet (the next tick tries again)."""
        with Session(self.engine) as session:
            replicas = [r for r in list_replicas(session, model.base_model) if r.status in (HEALTHY, UNKNOWN)]
        if not replicas:
            return False
        try:
            adapter = await asyncio.to_thread(self._served_row, model)
        except Exception as exc:  # noqa: BLE001 (rejected, or deleted meanwhile: logged, and this model is skipped)
            log.info("not hot-loading %s: %s", model.id, exc)
            return True
        started = time.monotonic()
        results = await asyncio.gather(
            *(self._load_and_warm(adapter, replica) for replica in replicas), return_exceptions=True
        )
        loaded = [r.id for r, result in zip(replicas, results, strict=True) if result is None]
        rejected = [res for res in results if isinstance(res, AdapterRejected)]
        if rejected:
            reject_adapter(self.engine, adapter, rejected[0].message)
            return True
        unreachable = [res for res in results if isinstance(res, ReplicaError) and res.status == 0]
        if not loaded and len(unreachable) == len(results):
            return False  # down (or restarting) since the last health check: try again once it is back
        failures = [f"{r.url}: {res}" for r, res in zip(replicas, results, strict=True) if res is not None]
        with session_scope(self.engine) as session:
            if loaded:
                jobs.mark_model_ready(session, job_id=model.job_id, model_id=model.id, replicas=loaded)
            for failure in failures:
                jobs.append_event(
                    session,
                    job_id=model.job_id,
                    level="warn",
                    message=f"Could not load {model.id} on replica {failure}; it loads on first use instead",
                    data={"event": "model.load_failed", "model": model.id},
                )
        log.info("hot-loaded %s on %d/%d replicas in %.0f ms", model.id, len(loaded), len(replicas),
                 (time.monotonic() - started) * 1000)  # fmt: skip
        return True

    async def _load_and_warm(self, adapter: ServedAdapter, replica: InferenceReplica) -> None:
        """Load, then one 1-token completion: the first request after a load is the slow one (vLLM #8559),
        and a model is only 'ready' once it has answered."""
        await self.loader.load(adapter, replica, trigger="hot")
        try:
            response = await self.http.post(
                f"{replica.url}/v1/completions",
                json={"model": adapter.id, "prompt": "ok", "max_tokens": 1},
                headers=replica_headers(replica),
                timeout=self.settings.inference_load_timeout_s,
            )
        except httpx.HTTPError as exc:
            raise ReplicaError(replica, 0, f"warm-up failed: {exc}") from None
        if response.status_code != 200:
            raise ReplicaError(replica, response.status_code, f"warm-up failed: {response.text[:300]}")

    # -- health --------------------------------------------------------------------------------------------

    async def check_health(self) -> dict[str, str]:
        """List what each replica serves: mark it healthy or not, and drop the placements it lost (a vLLM
        restart forgets every adapter)."""
        with Session(self.engine) as session:
            replicas = list_replicas(session)
            placed: dict[str, dict[str, str]] = {}
            for row in session.exec(select(AdapterPlacement)).all():
                placed.setdefault(row.replica_id, {})[row.adapter_id] = row.lora_path
        results = await asyncio.gather(*(self._probe(r) for r in replicas), return_exceptions=True)
        statuses: dict[str, str] = {}
        lost: list[tuple[str, str]] = []
        for replica, result in zip(replicas, results, strict=True):
            error: str | None
            cards: dict[str, Any] | None
            if isinstance(result, BaseException):
                status, error, cards = UNHEALTHY, str(result), None
            else:
                status, error, cards = result
            statuses[replica.id] = status
            self._write_health(replica, status, error)
            if cards is not None:
                for adapter_id, path in placed.get(replica.id, {}).items():
                    if cards.get(adapter_id, {}).get("root") != path:
                        lost.append((adapter_id, replica.id))
        if lost:
            log.info("replicas no longer hold %s; dropping those placements", lost)
            drop_placements(self.engine, lost)
        return statuses

    async def _probe(self, replica: InferenceReplica) -> tuple[str, str | None, dict[str, Any] | None]:
        try:
            cards = await vllm_models(self.http, replica, timeout_s=3.0)
        except ReplicaError as exc:
            # Not answering since it was registered: still starting (vLLM takes 20-50 s on a CPU).
            return (STARTING if replica.status in (UNKNOWN, STARTING) else UNHEALTHY), exc.message, None
        if replica.base_model not in cards:
            served = ", ".join(sorted(c for c, card in cards.items() if not card.get("parent"))) or "nothing"
            return UNHEALTHY, f"serves {served}, not base model {replica.base_model!r}", cards
        return HEALTHY, None, cards

    def _write_health(self, replica: InferenceReplica, status: str, error: str | None) -> None:
        last = self._health.get(replica.id)
        if (
            last is not None
            and last[0] == status
            and replica.status == status
            and time.monotonic() - last[1] < HEALTH_WRITE_EVERY_S
        ):
            return
        if replica.status != status:
            log.info(
                "replica %s (%s) is %s%s",
                replica.url,
                replica.base_model,
                status,
                f": {error}" if error else "",
            )
        set_replica_health(self.engine, replica.id, status, error)
        self._health[replica.id] = (status, time.monotonic())
