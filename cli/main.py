"""The `ftserve` command: server verbs (up, api, keys) on top of the packages."""

from __future__ import annotations

import typer
from rich.console import Console

from core.settings import get_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="ftserve: self-hosted fine-tuning as a service.")
keys_app = typer.Typer(no_args_is_help=True, help="Manage API keys (server side: talks to the database).")
app.add_typer(keys_app, name="keys")

err = Console(stderr=True)


@app.command()
def up() -> None:
    """Run the whole service on this machine: API, Redis (embedded unless FTSERVE_REDIS_URL is set), and more."""
    from cli.supervisor import Supervisor, default_children

    settings = get_settings()
    raise typer.Exit(Supervisor(settings, default_children(settings)).run())


@app.command()
def api(
    host: str = typer.Option(None, help="Bind address (default FTSERVE_HOST)."),
    port: int = typer.Option(None, help="Port (default FTSERVE_PORT)."),
) -> None:
    """Run the API server alone."""
    import uvicorn

    settings = get_settings()
    uvicorn.run(
        "api.main:app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )


@keys_app.command("create")
def keys_create(
    org: str = typer.Option(..., "--org", help="Organization name; created if it does not exist."),
    name: str = typer.Option(None, help="A label for the key."),
) -> None:
    """Create an API key. The key is printed once, alone on the last line."""
    from core.db import make_engine, migrate, session_scope
    from core.errors import FtserveError
    from core.keys import create_key

    settings = get_settings()
    url = settings.resolved_database_url
    migrate(url)
    engine = make_engine(url)
    try:
        with session_scope(engine) as session:
            row, key = create_key(session, org_name=org, name=name)
            org_id = row.organization_id
    except FtserveError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from None
    err.print(f"Created key {row.id} for organization {org} ({org_id}). Store it now; it is not shown again.")
    print(key)


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key's id (key-...), not the secret.")) -> None:
    """Revoke an API key at once."""
    from core.db import make_engine, migrate, session_scope
    from core.errors import FtserveError
    from core.keys import revoke_key

    settings = get_settings()
    migrate(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(engine) as session:
            revoke_key(session, key_id=key_id)
    except FtserveError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from None
    err.print(f"Revoked {key_id}.")


if __name__ == "__main__":
    app()
