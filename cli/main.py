"""The `ftserve` command: server verbs (up, api, scheduler, worker, keys, models) on top of the packages,
and user verbs (files, jobs, models, chat, config) on the SDK."""

from __future__ import annotations

import logging

import typer
from rich.console import Console

from cli import config_file
from cli.budgets import budgets_app
from cli.chat import chat
from cli.evals import evals_app
from cli.exports import register_export_commands
from cli.files import files_app
from cli.inference import inference_app
from cli.jobs import jobs_app
from cli.models import register_api_model_commands, register_server_model_commands
from cli.org import org_app
from core.settings import Settings, get_settings

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="ftserve: self-hosted fine-tuning as a service."
)
keys_app = typer.Typer(no_args_is_help=True, help="Manage API keys (server side: talks to the database).")
app.add_typer(keys_app, name="keys")
models_app = typer.Typer(
    no_args_is_help=True,
    help="Models: through the API when FTSERVE_API_KEY is set (list, get, delete), else the server's "
    "registry of base models (FTSERVE_MODEL_REGISTRY; add, import-gguf, remove, create-demo, list --server).",
)
app.add_typer(models_app, name="models")
app.add_typer(inference_app, name="inference")
# User verbs go through the API with the SDK (FTSERVE_API_KEY, FTSERVE_BASE_URL): cli/files.py, cli/jobs.py,
# cli/chat.py and the API side of cli/models.py, one module per noun like api/routes/.
app.add_typer(files_app, name="files")
register_export_commands(jobs_app)
app.add_typer(jobs_app, name="jobs")
app.add_typer(evals_app, name="evals")
app.add_typer(config_file.config_app, name="config")
app.add_typer(org_app, name="org")
app.add_typer(budgets_app, name="budgets")

err = Console(stderr=True)


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migrations run on every start: not news


@app.command()
def up() -> None:
    """Run the whole service on this machine: API, scheduler, one worker and a vLLM per base model (see
    docs/inference.md), with Redis embedded unless FTSERVE_REDIS_URL is set."""
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
    _configure_logging(settings)  # ftserve's own loggers (adapter loads, evictions); uvicorn sets up its own
    uvicorn.run(
        "api.main:app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )


@app.command("adapter-agent")
def adapter_agent(
    port: int = typer.Option(None, help="Port (default FTSERVE_AGENT_PORT)."),
) -> None:
    """Run the adapter agent beside a vLLM server of a split deployment: it copies adapters from object
    storage to this host for its vLLM (docs/deploy.md)."""
    import uvicorn

    from adapter_agent.app import is_loopback

    settings = get_settings()
    _configure_logging(settings)
    if not settings.agent_token and not is_loopback(settings.host):
        err.print(
            f"[red]error:[/red] the agent would listen on {settings.host} without a token: set FTSERVE_AGENT_TOKEN "
            "(the same value on the API and the scheduler)"
        )
        raise typer.Exit(2)
    uvicorn.run(
        "adapter_agent.app:create_agent_app",
        factory=True,
        host=settings.host,
        port=port or settings.agent_port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )


@app.command()
def scheduler() -> None:
    """Run the scheduler alone: validates waiting jobs and places queued ones on live workers."""
    from scheduler.main import main

    settings = get_settings()
    _configure_logging(settings)
    main(settings)


@app.command()
def worker(
    worker_id: str = typer.Option(
        None, "--id", help="This worker's id (default FTSERVE_WORKER_ID or host-pid)."
    ),
) -> None:
    """Run a training worker: trains the jobs the scheduler places on its queue, one child process each."""
    from gpu_worker.worker import build_worker

    settings = get_settings()
    _configure_logging(settings)
    build_worker(settings, worker_id=worker_id).run()


@keys_app.command("create")
def keys_create(
    org: str = typer.Option(..., "--org", help="Organization name; created if it does not exist."),
    name: str = typer.Option(None, help="A label for the key."),
    scope: list[str] = typer.Option(
        [], "--scope", help="admin, fine_tune or inference; repeatable. Default: every scope (an admin key)."
    ),
    inference_token_quota: int = typer.Option(
        None, "--inference-token-quota", min=1, help="Prompt + completion tokens it may use per month (UTC)."
    ),
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
            row, key = create_key(
                session,
                org_name=org,
                name=name,
                scopes=scope or None,
                inference_token_quota=inference_token_quota,
            )
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


# Registered last, so that `ftserve --help` lists them after the server verbs.
app.command("chat")(chat)
register_server_model_commands(models_app)
register_api_model_commands(models_app)

if __name__ == "__main__":
    app()
