"""GET /v1/organization/usage: an organization's metered usage in time buckets, shaped like OpenAI's usage API.

Buckets are aligned to their width in UTC (a `1d` bucket is a calendar day) and clipped to the query's range, and
every bucket of the range is listed, empty or not. Fine-tuning results are always per GPU class (GPU-seconds of
different classes are not comparable), and also per model or job when grouped by them; completions results per
model or API key when grouped by them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Literal

from sqlmodel import Session, col, select

from api.protocol_org import (
    CompletionsUsageResult,
    Cost,
    FineTuningUsageResult,
    UsageBucket,
    UsagePage,
    UsageResult,
)
from core.errors import InvalidRequestError
from core.models import InferenceUsage, Organization, TrainingUsage, now_s
from core.settings import Settings

Kind = Literal["fine_tuning", "completions"]
KINDS: tuple[Kind, ...] = ("fine_tuning", "completions")
WIDTHS = {"1m": 60, "1h": 3600, "1d": 86400}
# (default, largest) buckets per page, as OpenAI's usage API has them.
LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}
GROUPS: dict[Kind, tuple[str, ...]] = {
    "fine_tuning": ("model", "job_id"),
    "completions": ("model", "api_key_id"),
}
GROUP_BY = ("model", "job_id", "api_key_id")
MAX_TIME = 2**31 - 1  # the time columns are 32-bit integers on PostgreSQL


def _int(value: str | None, param: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        raise InvalidRequestError(
            f"Invalid value for '{param}': {value[:40]!r} is not an integer (Unix seconds).",
            param=param,
            code="invalid_value",
        ) from None
    if not 0 <= number <= MAX_TIME:
        raise InvalidRequestError(
            f"'{param}' must be 0 to {MAX_TIME} (Unix seconds).", param=param, code="invalid_value"
        )
    return number


def parse_list(values: Iterable[str]) -> list[str]:
    """Repeated (`group_by=a&group_by=b`) or comma-separated (`group_by=a,b`) values."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def usage_page(
    *,
    session: Session,
    settings: Settings,
    org: Organization,
    kinds: tuple[Kind, ...],
    start_time: str | None,
    end_time: str | None,
    bucket_width: str,
    group_by: list[str],
    limit: str | None,
    page: str | None,
    models: list[str],
    job_ids: list[str],
    api_key_ids: list[str],
) -> UsagePage:
    start = _int(start_time, "start_time")
    if start is None:
        raise InvalidRequestError(
            "Missing required parameter: 'start_time' (Unix seconds, inclusive).",
            param="start_time",
            code="missing_required_parameter",
        )
    if bucket_width not in WIDTHS:
        raise InvalidRequestError(
            f"Invalid value for 'bucket_width': {bucket_width[:20]!r}; use one of {', '.join(WIDTHS)}.",
            param="bucket_width",
            code="invalid_value",
        )
    width = WIDTHS[bucket_width]
    end = _int(end_time, "end_time")
    if end is None:
        end = (now_s() // width + 1) * width  # through the end of the current bucket
    if end <= start:
        raise InvalidRequestError(
            "'end_time' must be after 'start_time'.", param="end_time", code="invalid_value"
        )
    default_limit, max_limit = LIMITS[bucket_width]
    count = _int(limit, "limit")
    count = default_limit if count is None else count
    if not 1 <= count <= max_limit:
        raise InvalidRequestError(
            f"'limit' is {count}; with bucket_width {bucket_width} it must be 1 to {max_limit}.",
            param="limit",
            code="invalid_value",
        )
    for name in group_by:
        if name not in GROUP_BY:
            raise InvalidRequestError(
                f"Invalid value for 'group_by': {name[:40]!r}; group by {', '.join(GROUP_BY)}.",
                param="group_by",
                code="invalid_value",
            )
    first = start
    if page is not None:
        first = _int(page, "page") or 0
        if not start <= first < end:
            raise InvalidRequestError(
                "'page' is not a cursor of this query: pass the next_page of the previous answer, with the same "
                "start_time and end_time.",
                param="page",
                code="invalid_value",
            )
    # The buckets of this page: [lo, hi) each, aligned to the width, clipped to the query's range.
    buckets: list[tuple[int, int]] = []
    lo = first
    while lo < end and len(buckets) < count:
        hi = min((lo // width + 1) * width, end)
        buckets.append((lo, hi))
        lo = hi
    page_end = buckets[-1][1]
    results: dict[int, list[UsageResult]] = {b[0]: [] for b in buckets}

    def bucket_of(at: int) -> int:
        return max(first, (at // width) * width)

    currency = settings.price_currency
    if "fine_tuning" in kinds:
        query = select(TrainingUsage).where(
            TrainingUsage.organization_id == org.id,
            col(TrainingUsage.created_at) >= first,
            col(TrainingUsage.created_at) < page_end,
        )
        if models:
            query = query.where(col(TrainingUsage.model).in_(models))
        if job_ids:
            query = query.where(col(TrainingUsage.job_id).in_(job_ids))
        if not api_key_ids:  # training is not metered per key: a key filter leaves it out
            keys = [g for g in GROUPS["fine_tuning"] if g in group_by]
            sums: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0, 0.0, 0, 0.0])
            for row in session.exec(query).all():
                group = (bucket_of(row.created_at), row.gpu_class, *(getattr(row, k) for k in keys))
                acc = sums[group]
                acc[0] += row.trained_tokens
                acc[1] += row.gpu_seconds
                acc[2] += 1
                acc[3] += row.cost
            for group, (tokens, seconds, attempts, cost) in sorted(sums.items(), key=_order):
                results[group[0]].append(
                    FineTuningUsageResult(
                        trained_tokens=int(tokens), gpu_seconds=round(seconds, 3), gpu_class=group[1],
                        num_attempts=int(attempts), cost=Cost(value=round(cost, 6), currency=currency),
                        **dict(zip(keys, group[2:], strict=True)),
                    )
                )  # fmt: skip
    if "completions" in kinds and not job_ids:  # inference is not per job: a job filter leaves it out
        query_i = select(InferenceUsage).where(
            InferenceUsage.organization_id == org.id,
            col(InferenceUsage.created_at) >= first,
            col(InferenceUsage.created_at) < page_end,
        )
        if models:
            query_i = query_i.where(col(InferenceUsage.model).in_(models))
        if api_key_ids:
            query_i = query_i.where(col(InferenceUsage.api_key_id).in_(api_key_ids))
        keys = [g for g in GROUPS["completions"] if g in group_by]
        isums: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])
        for irow in session.exec(query_i).all():
            group = (bucket_of(irow.created_at), *(getattr(irow, k) for k in keys))
            acc = isums[group]
            acc[0] += irow.input_tokens
            acc[1] += irow.output_tokens
            acc[2] += 1
            acc[3] += irow.cost
        for group, (inputs, outputs, requests, cost) in sorted(isums.items(), key=_order):
            results[group[0]].append(
                CompletionsUsageResult(
                    input_tokens=int(inputs), output_tokens=int(outputs), num_model_requests=int(requests),
                    cost=Cost(value=round(cost, 6), currency=currency), **dict(zip(keys, group[1:], strict=True)),
                )
            )  # fmt: skip
    has_more = page_end < end
    return UsagePage(
        data=[UsageBucket(start_time=lo, end_time=hi, results=results[lo]) for lo, hi in buckets],
        has_more=has_more,
        next_page=str(page_end) if has_more else None,
    )


def _order(item: tuple[tuple[Any, ...], Any]) -> tuple[str, ...]:
    return tuple("" if part is None else str(part) for part in item[0])
