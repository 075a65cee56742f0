"""/v1/organization/usage: metered fine-tuning and inference usage in time buckets (admin scope)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import CurrentOrg, SessionDep, SettingsDep
from api.protocol import ErrorResponse
from api.protocol_org import UsagePage
from api.services import usage as service

router = APIRouter(
    prefix="/v1/organization/usage",
    tags=["organization"],
    responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}},
)

PARAMS = {
    "parameters": [
        {"name": "start_time", "in": "query", "required": True, "schema": {"type": "integer"},
         "description": "Start of the range, Unix seconds, inclusive."},
        {"name": "end_time", "in": "query", "schema": {"type": "integer"},
         "description": "End of the range, Unix seconds, exclusive. Default: the end of the current bucket."},
        {"name": "bucket_width", "in": "query", "schema": {"type": "string", "enum": ["1m", "1h", "1d"],
                                                            "default": "1d"}},
        {"name": "group_by", "in": "query", "schema": {"type": "array", "items": {
            "type": "string", "enum": ["model", "job_id", "api_key_id"]}}},
        {"name": "limit", "in": "query", "schema": {"type": "integer"},
         "description": "Buckets per page: 1d 7 (at most 31), 1h 24 (168), 1m 60 (1440)."},
        {"name": "page", "in": "query", "schema": {"type": "string"}, "description": "next_page of the last page."},
        {"name": "models", "in": "query", "schema": {"type": "array", "items": {"type": "string"}}},
        {"name": "job_ids", "in": "query", "schema": {"type": "array", "items": {"type": "string"}}},
        {"name": "api_key_ids", "in": "query", "schema": {"type": "array", "items": {"type": "string"}}},
    ]
}  # fmt: skip


def _page(request: Request, org: CurrentOrg, session: SessionDep, settings: SettingsDep,
          kinds: tuple[service.Kind, ...]) -> UsagePage:  # fmt: skip
    # Read by hand, not as typed parameters: arrays come repeated, comma-separated or as name[], and a bad value
    # must be a 400 naming it (the page size's bounds depend on bucket_width).
    query = request.query_params

    def values(name: str) -> list[str]:
        return service.parse_list(query.getlist(name) + query.getlist(f"{name}[]"))

    return service.usage_page(
        session=session, settings=settings, org=org, kinds=kinds,
        start_time=query.get("start_time"), end_time=query.get("end_time"),
        bucket_width=query.get("bucket_width") or "1d", group_by=values("group_by"), limit=query.get("limit"),
        page=query.get("page"), models=values("models"), job_ids=values("job_ids"),
        api_key_ids=values("api_key_ids"),
    )  # fmt: skip


@router.get("", response_model=UsagePage, openapi_extra=PARAMS)
def organization_usage(
    request: Request, org: CurrentOrg, session: SessionDep, settings: SettingsDep
) -> UsagePage:
    """Fine-tuning (trained tokens, GPU-seconds by GPU class, cost) and completions (tokens, requests, cost)
    usage, in buckets."""
    return _page(request, org, session, settings, service.KINDS)


@router.get("/fine_tuning", response_model=UsagePage, openapi_extra=PARAMS)
def fine_tuning_usage(
    request: Request, org: CurrentOrg, session: SessionDep, settings: SettingsDep
) -> UsagePage:
    """Fine-tuning usage only."""
    return _page(request, org, session, settings, ("fine_tuning",))


@router.get("/completions", response_model=UsagePage, openapi_extra=PARAMS)
def completions_usage(
    request: Request, org: CurrentOrg, session: SessionDep, settings: SettingsDep
) -> UsagePage:
    """Chat and completions usage only (OpenAI's /v1/organization/usage/completions)."""
    return _page(request, org, session, settings, ("completions",))
