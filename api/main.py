"""The API process: `create_app()` builds the FastAPI app; uvicorn serves `api.main:app`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.errors import install_error_handlers
from api.log_redaction import install_log_redaction
from api.metrics import HttpMetricsMiddleware, metrics_endpoint
from api.middleware import RequestIdMiddleware
from api.protocol import ErrorResponse
from api.ratelimit import RateLimitMiddleware
from api.routes import (
    api_keys,
    estimates,
    evals,
    exports,
    files,
    fine_tuning,
    graders,
    inference,
    models,
    ui,
    usage,
    webhooks,
)
from api.services.evals import evals_lifespan
from api.services.inference import inference_lifespan
from core.db import make_engine, migrate
from core.ratelimit import RateLimiter
from core.settings import Settings, get_settings
from core.storage import Storage, make_storage_from_settings

STALE_UPLOAD_S = 3600.0  # an upload's temporary object untouched this long belongs to a dead process
SWEPT_PREFIXES = ("files/", "jobs/")  # what the API uploads, and what workers upload

log = logging.getLogger(__name__)


def _sweep_stale_uploads(storage: Storage) -> None:
    """Reclaim writes cut short by a crash (a temporary file, an S3 multipart upload): uploads of an earlier API
    under files/, and adapters, checkpoints and results of a killed worker under jobs/.

    Housekeeping only: an API that cannot sweep (say, an S3 user without ListBucketMultipartUploads) still
    starts.
    """
    for prefix in SWEPT_PREFIXES:
        try:
            swept = storage.sweep_temporaries(prefix, older_than_s=STALE_UPLOAD_S)
        except Exception:
            log.warning("could not sweep stale uploads under %s", prefix, exc_info=True)
            continue
        if swept:
            log.info("swept %d stale upload(s) under %s left by a killed writer", swept, prefix)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        url = settings.resolved_database_url
        migrate(url)
        app.state.settings = settings
        app.state.engine = make_engine(url)
        app.state.storage = make_storage_from_settings(settings)
        _sweep_stale_uploads(app.state.storage)
        async with inference_lifespan(app):  # pooled client to the vLLM replicas
            async with evals_lifespan(app):  # eval runs sample through that client, in the background
                yield
        await limiter.aclose()
        app.state.engine.dispose()

    app = FastAPI(
        title="ftserve",
        version="0.1.0",
        description="OpenAI-compatible fine-tuning as a service.",
        lifespan=lifespan,
        # Any /v1 call may meet the per-key rate limit; creates may also meet an organization quota.
        responses={429: {"model": ErrorResponse, "description": "Rate limit or quota reached."}},
    )
    install_log_redaction("uvicorn.access", "uvicorn.error")  # request lines carry query strings
    limiter = RateLimiter(
        per_minute=settings.rate_limit_requests_per_minute,
        burst=settings.rate_limit_burst,
        redis_url=settings.redis_url,
    )
    app.add_middleware(RateLimitMiddleware, limiter=limiter)  # inside the request id: 429s carry one too
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(HttpMetricsMiddleware)  # added last: outermost, so it sees every response
    install_error_handlers(app)
    app.include_router(files.router)
    app.include_router(fine_tuning.router)
    app.include_router(exports.router)
    app.include_router(estimates.router)
    app.include_router(graders.router)
    app.include_router(evals.router)
    app.include_router(models.router)
    app.include_router(webhooks.router)
    app.include_router(inference.router)
    app.include_router(usage.router)
    app.include_router(api_keys.router)
    app.include_router(ui.router)

    @app.get("/healthz", tags=["health"], include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], include_in_schema=False)
    def readyz() -> JSONResponse:
        try:
            with app.state.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception:  # noqa: BLE001 (any failure means: not ready)
            return JSONResponse({"status": "not ready", "failed": ["database"]}, status_code=503)
        return JSONResponse({"status": "ready"})

    app.get("/metrics", tags=["health"], include_in_schema=False)(metrics_endpoint)  # Prometheus text format

    return app


def app() -> FastAPI:
    """uvicorn factory: `uvicorn --factory api.main:app`."""
    return create_app()
