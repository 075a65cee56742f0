"""The `ftserve` command: server verbs (up, api, scheduler, worker, keys, models) on top of the packages,
and user verbs (files, jobs, models, chat, config) on the SDK."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer
from rich.console import Console

from cli import config_file, user
from cli.inference import inference_app
from core.settings import Settings, get_settings

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="ftserve: self-hosted fine-tuning as a service."
)
keys_app = typer.Typer(no_args_is_help=True, help="Manage API keys (server side: talks to the database).")
app.add_typer(keys_app, name="keys")
models_app = typer.Typer(
    no_args_is_help=True,
    help="Models: through the API when FTSERVE_API_KEY is set (list, get, delete), else the server's "
    "registry of base models (FTSERVE_MODEL_REGISTRY; create-demo, list --server).",
)
app.add_typer(models_app, name="models")
app.add_typer(inference_app, name="inference")
# User verbs go through the API with the SDK (FTSERVE_API_KEY, FTSERVE_BASE_URL); see cli/user.py.
app.add_typer(user.files_app, name="files")
app.add_typer(user.jobs_app, name="jobs")
app.add_typer(config_file.config_app, name="config")

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


@models_app.command("create-demo")
def models_create_demo(
    if_missing: bool = typer.Option(
        False, "--if-missing", help="Do nothing when demo-tiny is registered and built by the current recipe."
    ),
    seed: int = typer.Option(0, help="Seed of the deterministic build."),
) -> None:
    """Build the tiny demo base model (~30 s on 2 CPU cores) into DATA_DIR/models and register it."""
    import json

    from core.model_registry import load_registry, register_model
    from gpu_worker.demo_model import DEMO_MODEL_NAME, INFO_FILE, build_demo_model, demo_model_is_current

    settings = get_settings()
    registered = load_registry(settings).get(DEMO_MODEL_NAME)
    if if_missing and registered is not None and demo_model_is_current(registered.path):
        built_seed = json.loads((registered.path / INFO_FILE).read_text()).get("seed")
        if built_seed == seed:
            err.print(f"{DEMO_MODEL_NAME} is registered and current at {registered.path}")
            return
    target = settings.data_dir / "models" / DEMO_MODEL_NAME
    err.print(f"Building {DEMO_MODEL_NAME} into {target} ...")
    build_demo_model(target, seed=seed)
    model = register_model(settings, DEMO_MODEL_NAME, target)
    err.print(f"Registered {model.id} -> {model.path} in {settings.resolved_model_registry}")


@models_app.command("list")
def models_list(
    server: bool = typer.Option(
        False, "--server", help="Read this machine's registry (id, path) even when FTSERVE_API_KEY is set."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List models: through the API (base models and your fine-tuned ones) when FTSERVE_API_KEY is set,
    otherwise this server's registry of base models (id, local path, registration time)."""
    import os
    import time

    if os.environ.get("FTSERVE_API_KEY") and not server:
        user.models_list_api(as_json)
        return

    from core.model_registry import load_registry

    settings = get_settings()
    models = load_registry(settings)
    if as_json:
        rows = [{"id": m.id, "path": str(m.path), "created": m.created} for m in models.values()]
        print(json.dumps(sorted(rows, key=lambda r: str(r["id"])), indent=2))
        return
    if not models:
        err.print(f"No base models in {settings.resolved_model_registry}; try `ftserve models create-demo`.")
        return
    for model in sorted(models.values(), key=lambda m: m.id):
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(model.created))
        missing = "" if Path(model.path).is_dir() else "  (missing)"
        print(f"{model.id}\t{model.path}\t{created}{missing}")


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


# Registered last, so that `ftserve --help` lists them after the server verbs.
app.command("chat")(user.chat)
user.register_model_commands(models_app)

if __name__ == "__main__":
    app()
