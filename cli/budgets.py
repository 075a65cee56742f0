"""`ftserve budgets ...` (server side: talks to the database): each organization's monthly budget, and what it
has used this month. Over a budget, creating or resuming a job gets 429 insufficient_quota (docs/usage.md)."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from core.models import Organization
from core.settings import Settings

budgets_app = typer.Typer(
    no_args_is_help=True, help="Monthly budgets per organization (server side: talks to the database)."
)
err = Console(stderr=True, highlight=False)


def _engine() -> tuple[Settings, Engine]:
    from core.db import make_engine, migrate
    from core.settings import get_settings

    settings = get_settings()
    migrate(settings.resolved_database_url)
    return settings, make_engine(settings.resolved_database_url)


def _org(session: Session, name: str) -> Organization:
    org = session.exec(select(Organization).where(Organization.name == name)).first()
    if org is None:
        err.print(
            f"[red]error:[/red] no organization named {name!r} (`ftserve keys create --org {name}` makes one)"
        )
        raise typer.Exit(2)
    return org


@budgets_app.command("set")
def budgets_set(
    org: str = typer.Argument(..., help="Organization name."),
    cost: float = typer.Option(None, "--cost", min=0, help="Monthly cost budget, in FTSERVE_PRICE_CURRENCY."),
    trained_tokens: int = typer.Option(None, "--trained-tokens", min=0, help="Monthly trained-token budget."),
) -> None:
    """Set an organization's monthly budget (replacing its own; 0 means none for that part)."""
    from core import audit
    from core.db import session_scope
    from core.usage import set_budget

    if cost is None and trained_tokens is None:
        err.print("[red]error:[/red] give --cost and/or --trained-tokens")
        raise typer.Exit(2)
    _settings, engine = _engine()
    with session_scope(engine) as session:
        row = _org(session, org)
        set_budget(
            session,
            organization_id=row.id,
            monthly_cost=cost or None,
            monthly_trained_tokens=trained_tokens or None,
        )
        data = {"monthly_cost": cost or None, "monthly_trained_tokens": trained_tokens or None}
        audit.record(
            session,
            organization_id=row.id,
            type="budget.updated",
            object_id=row.id,
            actor_type="operator",
            data=data,
        )
    err.print(f"Budget of {org}: {json.dumps(data)}")


@budgets_app.command("clear")
def budgets_clear(org: str = typer.Argument(..., help="Organization name.")) -> None:
    """Remove an organization's own budget: the defaults (FTSERVE_ORG_MONTHLY_*) apply again."""
    from core import audit
    from core.db import session_scope
    from core.usage import set_budget

    _settings, engine = _engine()
    with session_scope(engine) as session:
        row = _org(session, org)
        set_budget(session, organization_id=row.id, monthly_cost=None, monthly_trained_tokens=None)
        audit.record(
            session, organization_id=row.id, type="budget.updated", object_id=row.id, actor_type="operator",
            data={"cleared": True},
        )  # fmt: skip
    err.print(f"Budget of {org} cleared: the defaults apply.")


@budgets_app.command("show")
def budgets_show(
    org: str = typer.Argument(None, help="Organization name (default: every organization)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """Each organization's budget and what it has used this month (UTC)."""
    from core.usage import budget_for, org_month_usage

    settings, engine = _engine()
    out = []
    with Session(engine) as session:
        orgs = [_org(session, org)] if org else list(session.exec(select(Organization)).all())
        for row in orgs:
            budget = budget_for(session, settings, row.id)
            used = org_month_usage(session, row.id)
            out.append(
                {"organization": row.name, "id": row.id, "budget_source": budget.source,
                 "monthly_cost": budget.monthly_cost, "monthly_trained_tokens": budget.monthly_trained_tokens,
                 "month_start": used.since, "cost_used": round(used.cost, 6),
                 "trained_tokens_used": used.trained_tokens, "inference_tokens_used": used.inference_tokens,
                 "currency": settings.price_currency}
            )  # fmt: skip
    if as_json:
        print(json.dumps(out, indent=2))
        return
    for entry in out:
        cost = "-" if entry["monthly_cost"] is None else f"{entry['monthly_cost']:.2f}"
        tokens = "-" if entry["monthly_trained_tokens"] is None else str(entry["monthly_trained_tokens"])
        print(
            f"{entry['organization']}\tcost {entry['cost_used']:.4f}/{cost} {entry['currency']}\t"
            f"trained tokens {entry['trained_tokens_used']}/{tokens}\tinference tokens "
            f"{entry['inference_tokens_used']}\t({entry['budget_source']})"
        )
