"""Metering, budgets and caps: what each organization, job and key used, and the limits on it.

- Training: one `TrainingUsage` row per attempt of a job (trained tokens, GPU-seconds on its GPU class, cost),
  written by the worker as the attempt ends (`record_training_usage`).
- Inference: one `InferenceUsage` row per answered request, from vLLM's `usage` (`record_inference_usage`).
- Budgets: per organization and calendar month (UTC), operator-set (`OrganizationBudget`, else the settings'
  defaults); per key, a monthly inference-token quota (`ApiKey.inference_token_quota`).
- Caps: per job, `max_trained_tokens` and `max_cost`; the worker pauses the job when one is reached.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func
from sqlmodel import Session, col, select

from core.errors import InsufficientQuotaError
from core.models import ApiKey, InferenceUsage, Organization, OrganizationBudget, TrainingUsage, now_s
from core.pricing import CPU_CLASS, inference_cost, training_cost
from core.settings import Settings

MAX_TRAINED_TOKENS, MAX_COST = "max_trained_tokens", "max_cost"


def month_start(at: int | None = None) -> int:
    """Unix seconds of the first instant of the UTC calendar month holding `at` (default: now)."""
    when = dt.datetime.fromtimestamp(now_s() if at is None else at, tz=dt.UTC)
    return calendar.timegm((when.year, when.month, 1, 0, 0, 0))


def gpu_class_of(gpu_name: str | None) -> str:
    """A job's GPU class as metered: the placed GPU's name, or "cpu" where it was placed on no GPU."""
    return gpu_name or CPU_CLASS


# -- writes ----------------------------------------------------------------------------------------------------


def record_training_usage(
    session: Session,
    settings: Settings,
    *,
    organization_id: str,
    job_id: str,
    attempt: int,
    model: str,
    gpu_class: str,
    trained_tokens: int,
    gpu_seconds: float,
) -> TrainingUsage:
    """What one attempt used, priced now. Called by the worker as the attempt ends; calling it again for the same
    attempt replaces the row (a retried commit counts once). The caller commits."""
    trained_tokens, gpu_seconds = max(0, int(trained_tokens)), max(0.0, round(float(gpu_seconds), 3))
    cost = training_cost(
        settings, trained_tokens=trained_tokens, gpu_seconds=gpu_seconds, gpu_class=gpu_class
    )
    row = session.exec(
        select(TrainingUsage).where(TrainingUsage.job_id == job_id, TrainingUsage.attempt == attempt)
    ).first()
    if row is None:
        row = TrainingUsage(organization_id=organization_id, job_id=job_id, attempt=attempt, model=model,
                            gpu_class=gpu_class)  # fmt: skip
    row.trained_tokens, row.gpu_seconds, row.cost = trained_tokens, gpu_seconds, round(cost, 9)
    row.gpu_class, row.created_at = gpu_class, now_s()
    session.add(row)
    return row


def record_inference_usage(
    session: Session,
    settings: Settings,
    *,
    organization_id: str,
    api_key_id: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
) -> InferenceUsage:
    """One answered inference request, as vLLM counted it. The caller commits."""
    row = InferenceUsage(
        organization_id=organization_id,
        api_key_id=api_key_id,
        model=model,
        input_tokens=max(0, int(input_tokens)),
        output_tokens=max(0, int(output_tokens)),
        cost=round(inference_cost(settings, input_tokens=input_tokens, output_tokens=output_tokens), 9),
    )
    session.add(row)
    return row


# -- reads -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobUsage:
    trained_tokens: int
    gpu_seconds: float
    cost: float


def job_usage(session: Session, job_id: str, *, except_attempt: int | None = None) -> JobUsage:
    """The sum of a job's attempts' usage (all, or all but one)."""
    query = select(
        func.coalesce(func.sum(TrainingUsage.trained_tokens), 0),
        func.coalesce(func.sum(TrainingUsage.gpu_seconds), 0.0),
        func.coalesce(func.sum(TrainingUsage.cost), 0.0),
    ).where(TrainingUsage.job_id == job_id)
    if except_attempt is not None:
        query = query.where(TrainingUsage.attempt != except_attempt)
    tokens, seconds, cost = session.exec(query).one()
    return JobUsage(int(tokens), float(seconds), float(cost))


@dataclass(frozen=True)
class MonthUsage:
    since: int
    cost: float
    trained_tokens: int
    inference_tokens: int


def org_month_usage(session: Session, organization_id: str, *, at: int | None = None) -> MonthUsage:
    since = month_start(at)
    tokens, training = session.exec(
        select(
            func.coalesce(func.sum(TrainingUsage.trained_tokens), 0),
            func.coalesce(func.sum(TrainingUsage.cost), 0.0),
        ).where(TrainingUsage.organization_id == organization_id, col(TrainingUsage.created_at) >= since)
    ).one()
    inference_tokens, inference = session.exec(
        select(
            func.coalesce(func.sum(InferenceUsage.input_tokens + InferenceUsage.output_tokens), 0),
            func.coalesce(func.sum(InferenceUsage.cost), 0.0),
        ).where(InferenceUsage.organization_id == organization_id, col(InferenceUsage.created_at) >= since)
    ).one()
    return MonthUsage(since, float(training) + float(inference), int(tokens), int(inference_tokens))


def key_month_tokens(session: Session, api_key_id: str, *, at: int | None = None) -> int:
    total = session.exec(
        select(func.coalesce(func.sum(InferenceUsage.input_tokens + InferenceUsage.output_tokens), 0)).where(
            InferenceUsage.api_key_id == api_key_id, col(InferenceUsage.created_at) >= month_start(at)
        )
    ).one()
    return int(total)


# -- budgets and quotas ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    monthly_cost: float | None  # None: no cost budget
    monthly_trained_tokens: int | None
    source: str  # "organization" (set for it) or "default" (the settings)


def budget_for(session: Session, settings: Settings, organization_id: str) -> Budget:
    row = session.exec(
        select(OrganizationBudget).where(OrganizationBudget.organization_id == organization_id)
    ).first()
    if row is not None:
        return Budget(row.monthly_cost, row.monthly_trained_tokens, "organization")
    return Budget(
        settings.org_monthly_cost_budget or None,
        settings.org_monthly_trained_tokens_budget or None,
        "default",
    )


def set_budget(
    session: Session, *, organization_id: str, monthly_cost: float | None, monthly_trained_tokens: int | None
) -> OrganizationBudget:
    """The organization's own budget (None in both: remove it, so the settings' default applies). The caller
    commits."""
    row = session.exec(
        select(OrganizationBudget).where(OrganizationBudget.organization_id == organization_id)
    ).first()
    if row is None:
        row = OrganizationBudget(organization_id=organization_id)
    row.monthly_cost, row.monthly_trained_tokens, row.updated_at = (
        monthly_cost,
        monthly_trained_tokens,
        now_s(),
    )
    if monthly_cost is None and monthly_trained_tokens is None and row.seq is not None:
        session.delete(row)
    elif monthly_cost is not None or monthly_trained_tokens is not None:
        session.add(row)
    return row


def check_org_budget(session: Session, settings: Settings, org: Organization) -> None:
    """Refuse new spending (429 insufficient_quota) once the month's cost or trained tokens reach the budget."""
    budget = budget_for(session, settings, org.id)
    if budget.monthly_cost is None and budget.monthly_trained_tokens is None:
        return
    used = org_month_usage(session, org.id)
    resets = _next_month(used.since)
    if budget.monthly_cost is not None and used.cost >= budget.monthly_cost:
        raise InsufficientQuotaError(
            f"The organization has used {used.cost:.2f} {settings.price_currency} this month, its monthly budget "
            f"is {budget.monthly_cost:.2f}. New jobs are refused until the month ends ({_day(resets)}) or an "
            "operator raises the budget (ftserve budgets set)."
        )
    if budget.monthly_trained_tokens is not None and used.trained_tokens >= budget.monthly_trained_tokens:
        raise InsufficientQuotaError(
            f"The organization has trained {used.trained_tokens} tokens this month, its monthly budget is "
            f"{budget.monthly_trained_tokens}. New jobs are refused until the month ends ({_day(resets)}) or an "
            "operator raises the budget (ftserve budgets set)."
        )


def check_key_quota(session: Session, key: ApiKey) -> None:
    """Refuse inference (429 insufficient_quota) once the key's monthly inference tokens are spent."""
    if key.inference_token_quota is None:
        return
    used = key_month_tokens(session, key.id)
    if used >= key.inference_token_quota:
        raise InsufficientQuotaError(
            f"This API key has used {used} inference tokens this month, its quota is {key.inference_token_quota}. "
            f"It can chat again from {_day(_next_month(month_start()))}, or an admin can give it a larger quota "
            "(a new key: POST /v1/organization/api_keys)."
        )


def _next_month(start: int) -> int:
    return month_start(start + 32 * 86400)


def _day(at: int) -> str:
    return dt.datetime.fromtimestamp(at, tz=dt.UTC).strftime("%Y-%m-%d")


# -- per-job caps ----------------------------------------------------------------------------------------------


def cap_reached(
    *, max_trained_tokens: int | None, max_cost: float | None, trained_tokens: int, cost: float
) -> tuple[str, float, float] | None:
    """(which cap, its value, what is used) when a cap of the job is reached, else None."""
    if max_trained_tokens is not None and trained_tokens >= max_trained_tokens:
        return MAX_TRAINED_TOKENS, max_trained_tokens, trained_tokens
    if max_cost is not None and cost >= max_cost:
        return MAX_COST, max_cost, cost
    return None


def cap_message(job_id: str, cap: str, limit: float, used: float, *, currency: str, step: int) -> str:
    """The event a capped job pauses with: which cap, and how to go on."""
    if cap == MAX_TRAINED_TOKENS:
        what = f"max_trained_tokens reached: {int(used)} tokens trained, the cap is {int(limit)}"
        raise_it = '{"max_trained_tokens": <a higher cap>}'
    else:
        what = f"max_cost reached: {used:.4f} {currency} spent, the cap is {limit:.4f}"
        raise_it = '{"max_cost": <a higher cap>}'
    return (
        f"Job paused at step {step}, {what}. To go on, resume it with a higher cap: "
        f"POST /v1/fine_tuning/jobs/{job_id}/resume with {raise_it} (or null for no cap)."
    )
