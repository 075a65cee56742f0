"""`client.organization`: usage, API keys and the audit log (an admin-scoped key)."""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

from .._resource import AsyncAPIResource, SyncAPIResource
from ..pagination import AsyncPaginator, SyncCursorPage
from ..types.organization import ApiKey, ApiKeyDeleted, AuditLog, UsagePage

__all__ = ["Organization", "AsyncOrganization", "ApiKeys", "AsyncApiKeys", "AuditLogs", "AsyncAuditLogs"]

UsageKind = Literal["fine_tuning", "completions"]
GroupBy = Literal["model", "job_id", "api_key_id"]
Scopes = list[Literal["admin", "fine_tune", "inference"]]


def _usage_request(
    kind: UsageKind | None,
    *,
    start_time: int,
    end_time: int | None,
    bucket_width: str | None,
    group_by: list[GroupBy] | None,
    limit: int | None,
    page: str | None,
    models: list[str] | None,
    job_ids: list[str] | None,
    api_key_ids: list[str] | None,
) -> tuple[str, dict[str, Any]]:
    path = "organization/usage" + (f"/{kind}" if kind else "")
    params = {
        "start_time": start_time, "end_time": end_time, "bucket_width": bucket_width, "limit": limit,
        "page": page, "group_by": group_by, "models": models, "job_ids": job_ids, "api_key_ids": api_key_ids,
    }  # fmt: skip
    return path, params


def _key_body(
    name: str | None, scopes: list[str] | None, inference_token_quota: int | None
) -> dict[str, Any]:
    body = {"name": name, "scopes": scopes, "inference_token_quota": inference_token_quota}
    return {k: v for k, v in body.items() if v is not None}


class ApiKeys(SyncAPIResource):
    def list(self, *, after: str | None = None, limit: int | None = None) -> SyncCursorPage[ApiKey]:
        """The organization's keys that are not revoked (no secrets)."""
        return self._client._get_api_list(
            "organization/api_keys", ApiKey, params={"after": after, "limit": limit}
        )

    def create(
        self,
        *,
        name: str | None = None,
        scopes: Scopes | None = None,
        inference_token_quota: int | None = None,
    ) -> ApiKey:
        """A new key; its secret is `value`, shown this once. `scopes` default: fine_tune and inference.
        `inference_token_quota`: prompt + completion tokens it may use per calendar month (UTC)."""
        body = _key_body(name, list(scopes) if scopes else None, inference_token_quota)
        return self._client._post("organization/api_keys", ApiKey, body=body)

    def delete(self, key_id: str) -> ApiKeyDeleted:
        """Revoke a key at once."""
        return self._client._delete(f"organization/api_keys/{key_id}", ApiKeyDeleted)


class AuditLogs(SyncAPIResource):
    def list(
        self,
        *,
        event_types: list[str] | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> SyncCursorPage[AuditLog]:
        """Who did what, newest first."""
        params = {"event_types[]": event_types, "after": after, "limit": limit}
        return self._client._get_api_list("organization/audit_logs", AuditLog, params=params)


class Organization(SyncAPIResource):
    @cached_property
    def api_keys(self) -> ApiKeys:
        return ApiKeys(self._client)

    @cached_property
    def audit_logs(self) -> AuditLogs:
        return AuditLogs(self._client)

    def usage(
        self,
        *,
        start_time: int,
        end_time: int | None = None,
        bucket_width: Literal["1m", "1h", "1d"] | None = None,
        group_by: list[GroupBy] | None = None,
        limit: int | None = None,
        page: str | None = None,
        kind: UsageKind | None = None,
        models: list[str] | None = None,
        job_ids: list[str] | None = None,
        api_key_ids: list[str] | None = None,
    ) -> UsagePage:
        """Usage in time buckets (default 1 day): fine-tuning (trained tokens, GPU-seconds per GPU class, cost)
        and completions (tokens, requests, cost); `kind` keeps one of them. Pass `page=previous.next_page` for
        the buckets after a page with `has_more`."""
        path, params = _usage_request(
            kind, start_time=start_time, end_time=end_time, bucket_width=bucket_width, group_by=group_by,
            limit=limit, page=page, models=models, job_ids=job_ids, api_key_ids=api_key_ids,
        )  # fmt: skip
        return self._client._get(path, UsagePage, params=params)


class AsyncApiKeys(AsyncAPIResource):
    def list(self, *, after: str | None = None, limit: int | None = None) -> AsyncPaginator[ApiKey]:
        return self._client._get_api_list(
            "organization/api_keys", ApiKey, params={"after": after, "limit": limit}
        )

    async def create(
        self,
        *,
        name: str | None = None,
        scopes: Scopes | None = None,
        inference_token_quota: int | None = None,
    ) -> ApiKey:
        body = _key_body(name, list(scopes) if scopes else None, inference_token_quota)
        return await self._client._post("organization/api_keys", ApiKey, body=body)

    async def delete(self, key_id: str) -> ApiKeyDeleted:
        return await self._client._delete(f"organization/api_keys/{key_id}", ApiKeyDeleted)


class AsyncAuditLogs(AsyncAPIResource):
    def list(
        self,
        *,
        event_types: list[str] | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> AsyncPaginator[AuditLog]:
        params = {"event_types[]": event_types, "after": after, "limit": limit}
        return self._client._get_api_list("organization/audit_logs", AuditLog, params=params)


class AsyncOrganization(AsyncAPIResource):
    @cached_property
    def api_keys(self) -> AsyncApiKeys:
        return AsyncApiKeys(self._client)

    @cached_property
    def audit_logs(self) -> AsyncAuditLogs:
        return AsyncAuditLogs(self._client)

    async def usage(
        self,
        *,
        start_time: int,
        end_time: int | None = None,
        bucket_width: Literal["1m", "1h", "1d"] | None = None,
        group_by: list[GroupBy] | None = None,
        limit: int | None = None,
        page: str | None = None,
        kind: UsageKind | None = None,
        models: list[str] | None = None,
        job_ids: list[str] | None = None,
        api_key_ids: list[str] | None = None,
    ) -> UsagePage:
        path, params = _usage_request(
            kind, start_time=start_time, end_time=end_time, bucket_width=bucket_width, group_by=group_by,
            limit=limit, page=page, models=models, job_ids=job_ids, api_key_ids=api_key_ids,
        )  # fmt: skip
        return await self._client._get(path, UsagePage, params=params)
