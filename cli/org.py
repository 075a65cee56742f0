"""`ftserve org ...`: an org admin's usage, API keys and audit log, through the API (the SDK), as
api/routes/usage.py and api/routes/api_keys.py serve them. The key in FTSERVE_API_KEY needs the admin scope."""

from __future__ import annotations

import time

import typer

from cli.user_common import JSON_HELP, UserError, cli_errors, make_client, print_json, print_table, when
from ftserve_client.types import CompletionsUsageResult, FineTuningUsageResult

org_app = typer.Typer(no_args_is_help=True, help="Your organization: usage, API keys, audit log (admin key).")
keys_app = typer.Typer(no_args_is_help=True, help="List, create and revoke your organization's API keys.")
org_app.add_typer(keys_app, name="keys")

GROUPS = ("model", "job_id", "api_key_id")
SCOPES = ("admin", "fine_tune", "inference")


def _day(ts: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


@org_app.command("usage")
def org_usage(
    days: int = typer.Option(7, "--days", min=1, max=31, help="Days back from today (UTC), today included."),
    group_by: list[str] = typer.Option([], "--group-by", help="model, job_id or api_key_id; repeatable."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Usage per day: fine-tuning (trained tokens, GPU-seconds per GPU class, cost) and chat tokens."""
    with cli_errors({"group_by": "--group-by"}):
        for name in group_by:
            if name not in GROUPS:
                raise UserError(f"unknown --group-by '{name}'. Use {', '.join(GROUPS)}.")
        today = int(time.time()) // 86400 * 86400
        page = make_client().organization.usage(
            start_time=today - (days - 1) * 86400,
            bucket_width="1d",
            limit=days,
            group_by=group_by or None,  # type: ignore[arg-type]
        )
        if as_json:
            print_json(page)
            return
        rows: list[list[str]] = []
        for bucket in page.data:
            for result in bucket.results:
                if isinstance(result, FineTuningUsageResult):
                    what = f"fine-tuning {result.gpu_class}"
                    amounts = f"{result.trained_tokens} trained tokens, {result.gpu_seconds:.1f} GPU-s"
                    key = result.job_id or result.model or ""
                elif isinstance(result, CompletionsUsageResult):
                    what = "completions"
                    amounts = (
                        f"{result.input_tokens} in + {result.output_tokens} out tokens, "
                        f"{result.num_model_requests} requests"
                    )
                    key = result.api_key_id or result.model or ""
                else:
                    continue
                cost = f"{result.cost.value:.4f} {result.cost.currency}"
                rows.append([_day(bucket.start_time), what, key, amounts, cost])
        if not rows:
            print(f"No usage in the last {days} day(s).")
            return
        print_table(["day", "kind", "group", "usage", "cost"], rows)


@keys_app.command("list")
def keys_list(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """The organization's keys that are not revoked."""
    with cli_errors():
        keys = list(make_client().organization.api_keys.list())
        if as_json:
            print_json(keys)
            return
        rows = [
            [k.id, k.name or "-", k.redacted_value, ",".join(k.scopes),
             str(k.inference_token_quota or "-"), when(k.created_at), when(k.last_used_at)]
            for k in keys
        ]  # fmt: skip
        print_table(["id", "name", "key", "scopes", "token quota/month", "created", "last used"], rows)


@keys_app.command("create")
def keys_create(
    name: str = typer.Option(None, "--name", help="A label for the key."),
    scope: list[str] = typer.Option(
        [], "--scope", help="admin, fine_tune or inference; repeatable (default: fine_tune and inference)."
    ),
    inference_token_quota: int = typer.Option(
        None, "--inference-token-quota", min=1, help="Prompt + completion tokens it may use per month."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Create a key. The secret is printed once, alone on the last line."""
    with cli_errors(
        {"scopes": "--scope", "inference_token_quota": "--inference-token-quota", "name": "--name"}
    ):
        for value in scope:
            if value not in SCOPES:
                raise UserError(f"unknown --scope '{value}'. Use {', '.join(SCOPES)}.")
        key = make_client().organization.api_keys.create(
            name=name,
            scopes=scope or None,  # type: ignore[arg-type]  # checked against SCOPES above
            inference_token_quota=inference_token_quota,
        )
        if as_json:
            print_json(key)
            return
        typer.echo(
            f"Created {key.id} ({', '.join(key.scopes)}). Store the key now; it is not shown again.", err=True
        )
        print(key.value)


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key's id (key-...), not the secret.")) -> None:
    """Revoke a key at once."""
    with cli_errors():
        make_client().organization.api_keys.delete(key_id)
        typer.echo(f"Revoked {key_id}.", err=True)


@org_app.command("audit-logs")
def audit_logs(
    limit: int = typer.Option(20, "--limit", min=1, max=100, help="How many, newest first."),
    event_type: list[str] = typer.Option([], "--type", help="Only these types (e.g. api_key.created)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Who created, cancelled or deleted what, and key changes, newest first."""
    with cli_errors({"event_types[]": "--type"}):
        page = make_client().organization.audit_logs.list(event_types=event_type or None, limit=limit)
        entries = page.data
        if as_json:
            print_json(entries)
            return
        rows = [
            [when(e.effective_at), e.type, str(e.details.get("id") or "-"),
             str((e.actor.get("api_key") or {}).get("id") or e.actor.get("type"))]
            for e in entries
        ]  # fmt: skip
        print_table(["when", "type", "object", "by"], rows)
