"""The adapter agent: beside each vLLM server of a split deployment, it puts adapters on that host's disk.

The API and the scheduler decide what goes where (placement, LRU eviction) as they do for a local replica;
the only step that needs the vLLM host's own disk is the copy. They ask this agent for it:

    POST /v1/adapters/sync {storage_prefix, rel_dir, expected_version, max_lora_rank, base_model}
      → 200 {"path": "/abs/versioned/dir", "version": "<sha16>"}   (422: the adapter can't be served)

and then call vLLM's `POST /v1/load_lora_adapter` with that path, exactly as for a local replica. The copy is
`core.adapters.materialize`: from object storage, validated against what vLLM accepts and against the base
model's shapes, read-only, at an immutable versioned path, published by an atomic rename.

    DELETE /v1/adapters/{job_id}   drops the local copies of a deleted model.
    /healthz, /readyz (its vLLM answers /health, storage answers), /metrics.

Only the control plane may call it (a bearer token, FTSERVE_AGENT_TOKEN): what it writes, vLLM loads.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field

from core.adapters import AdapterRejected, materialize, remove_local_copy
from core.model_registry import local_base_dir
from core.settings import Settings, get_settings
from core.storage import make_storage_from_settings

log = logging.getLogger("ftserve.adapter_agent")

SYNCS = Counter("ftserve_agent_syncs_total", "Adapter copies asked of this agent, by result.", ["result"])
SYNC_SECONDS = Histogram(
    "ftserve_agent_sync_seconds",
    "Time to put one adapter on this host (a download when it is new, a lookup when it is there).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

# What the control plane sends: `jobs/<job>/...` prefixes and `<job>/final|ckpt-step-N` directories.
STORAGE_PREFIX = re.compile(r"^jobs/ftjob-[A-Za-z0-9]{1,64}(/[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}){1,3}/?$")
REL_DIR = re.compile(r"^ftjob-[A-Za-z0-9]{1,64}/(final|ckpt-step-[0-9]{1,9})$")
JOB_ID = re.compile(r"^ftjob-[A-Za-z0-9]{1,64}$")


class AgentUnauthorized(Exception):
    """The caller did not send the agent token."""


class SyncRequest(BaseModel):
    storage_prefix: str = Field(pattern=STORAGE_PREFIX.pattern, description="Where the adapter is stored.")
    rel_dir: str = Field(pattern=REL_DIR.pattern, description="Its directory below the agent's adapter dir.")
    expected_version: str | None = Field(None, pattern=r"^[0-9a-f]{8,64}$")
    max_lora_rank: int = Field(ge=1, le=512, description="The vLLM's --max-lora-rank.")
    base_model: str = Field(max_length=256, description="The base model id the vLLM serves.")


class SyncResponse(BaseModel):
    path: str
    version: str


def _error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def create_agent_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    adapter_dir = (settings.agent_adapter_dir or settings.adapters_dir).expanduser().resolve()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        adapter_dir.mkdir(parents=True, exist_ok=True)
        app.state.storage = make_storage_from_settings(settings)
        async with httpx.AsyncClient(timeout=5.0) as http:
            app.state.http = http
            yield

    app = FastAPI(title="ftserve adapter agent", lifespan=lifespan, docs_url=None, redoc_url=None)

    def authorized(request: Request) -> None:
        if not settings.agent_token:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), settings.agent_token.encode()):
            raise AgentUnauthorized

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return _error(400, f"{param}: {first.get('msg', 'invalid request')}", "invalid_value", param)

    @app.exception_handler(AgentUnauthorized)
    async def _unauthorized(request: Request, exc: AgentUnauthorized) -> JSONResponse:
        return _error(401, "Missing or wrong agent token.", "invalid_api_key")

    @app.post("/v1/adapters/sync", response_model=SyncResponse, dependencies=[Depends(authorized)])
    async def sync(body: SyncRequest, request: Request) -> SyncResponse | JSONResponse:
        base_dir = local_base_dir(settings, body.base_model)
        started = time.perf_counter()
        try:
            path, version = await asyncio.to_thread(
                materialize,
                request.app.state.storage,
                body.storage_prefix,
                adapter_dir,
                body.rel_dir,
                max_lora_rank=body.max_lora_rank,
                base_model_dir=base_dir,
                base_model_id=body.base_model,
                expected_version=body.expected_version,
            )
        except AdapterRejected as exc:
            SYNCS.labels("rejected").inc()
            return _error(422, exc.message, exc.code)
        except Exception:
            SYNCS.labels("error").inc()
            raise
        SYNC_SECONDS.observe(time.perf_counter() - started)
        SYNCS.labels("ok").inc()
        log.info("synced %s → %s", body.storage_prefix, path)
        return SyncResponse(path=str(path), version=version)

    @app.delete("/v1/adapters/{job_id}", status_code=204, dependencies=[Depends(authorized)])
    async def forget(job_id: str) -> Response:
        if not JOB_ID.match(job_id):
            return _error(400, f"{job_id!r} is not a job id", "invalid_value", "job_id")
        await asyncio.to_thread(remove_local_copy, adapter_dir, job_id)
        return Response(status_code=204)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        failed: list[str] = []
        try:
            response = await request.app.state.http.get(f"{settings.agent_vllm_url.rstrip('/')}/health")
            if response.status_code != 200:
                failed.append(f"vllm: HTTP {response.status_code}")
        except httpx.HTTPError as exc:
            failed.append(f"vllm: {type(exc).__name__}")
        try:
            await asyncio.to_thread(request.app.state.storage.exists, "ftserve-readyz-probe")
        except Exception as exc:  # noqa: BLE001 (any storage backend error means not ready)
            failed.append(f"storage: {type(exc).__name__}")
        if not Path(adapter_dir).is_dir():
            failed.append("adapter_dir: missing")
        if failed:
            return JSONResponse({"status": "not ready", "failed": failed}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
