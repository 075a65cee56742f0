"""The API's /metrics: requests counted and timed by route template (never the raw path), streams timed to
their end, /metrics and the probes kept out of the OpenAPI document, /readyz 503 when the DB is gone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from api.metrics import HttpMetricsMiddleware
from core.db import make_engine
from tests.support.prometheus import value

JOB_ROUTE = "/v1/fine_tuning/jobs/{job_id}"


def scrape(client: TestClient) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_a_request_moves_the_counter_and_histogram_of_its_route_template(
    client: TestClient, org_a_key: str
) -> None:
    labels = {"method": "GET", "route": JOB_ROUTE}
    before = scrape(client)
    count_before = value(before, "ftserve_http_requests_total", **labels, status="404") or 0
    observed_before = value(before, "ftserve_http_request_duration_seconds_count", **labels) or 0

    headers = {"Authorization": f"Bearer {org_a_key}"}
    assert client.get("/v1/fine_tuning/jobs/ftjob-nosuchjob1", headers=headers).status_code == 404
    assert client.get("/v1/fine_tuning/jobs/ftjob-nosuchjob2", headers=headers).status_code == 404
    assert client.get("/v1/fine_tuning/jobs/ftjob-nosuchjob3").status_code == 401  # no key

    after = scrape(client)
    assert value(after, "ftserve_http_requests_total", **labels, status="404") == count_before + 2
    assert (value(after, "ftserve_http_requests_total", **labels, status="401") or 0) >= 1
    assert value(after, "ftserve_http_request_duration_seconds_count", **labels) == observed_before + 3
    assert "nosuchjob" not in after  # ids never become labels


def test_unknown_paths_share_one_label(client: TestClient) -> None:
    before = value(
        scrape(client), "ftserve_http_requests_total", method="GET", route="unmatched", status="404"
    )
    for n in range(3):
        assert client.get(f"/wp-admin/{n}.php").status_code == 404
    text = scrape(client)
    assert (
        value(text, "ftserve_http_requests_total", method="GET", route="unmatched", status="404")
        == (before or 0) + 3
    )
    assert "wp-admin" not in text


def test_metrics_and_probes_stay_out_of_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/metrics", "/healthz", "/readyz"} & set(paths)
    # Scraping is itself counted, under its own template.
    scrape(client)
    assert (
        value(scrape(client), "ftserve_http_requests_total", method="GET", route="/metrics", status="200")
        or 0
    ) >= 1


def test_readyz_says_503_and_what_failed_when_the_database_is_gone(client: TestClient) -> None:
    assert client.get("/readyz").json() == {"status": "ready"}
    app = client.app
    assert isinstance(app, FastAPI)
    working = app.state.engine
    app.state.engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2")
    try:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json() == {"status": "not ready", "failed": ["database"]}
    finally:
        app.state.engine.dispose()
        app.state.engine = working


def test_a_streamed_response_is_timed_until_its_last_chunk() -> None:
    app = FastAPI()
    app.add_middleware(HttpMetricsMiddleware)

    @app.get("/test-metrics/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"data: x\n\n"
                await asyncio.sleep(0.15)

        return StreamingResponse(chunks(), media_type="text/event-stream")

    labels = {"method": "GET", "route": "/test-metrics/stream"}
    with TestClient(app) as client:
        from prometheus_client import generate_latest

        before = (
            value(generate_latest().decode(), "ftserve_http_request_duration_seconds_sum", **labels) or 0.0
        )
        assert client.get("/test-metrics/stream").text.count("data:") == 3
        after = value(generate_latest().decode(), "ftserve_http_request_duration_seconds_sum", **labels)
    assert after is not None and after - before >= 0.45
