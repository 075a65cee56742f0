"""`ftserve inference ...`: the vLLM replicas ftserve routes to (server side: talks to the database).

ftserve inference add --base-model llama-3-8b --url http://vllm-1:8000 --adapter-dir /shared/adapters
ftserve inference list
ftserve inference remove rep-...
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from sqlalchemy.engine import Engine

from core.settings import get_settings

inference_app = typer.Typer(
    no_args_is_help=True, help="vLLM replicas that serve base and fine-tuned models (server side)."
)
err = Console(stderr=True)


def _engine() -> Engine:
    from core.db import make_engine, migrate

    settings = get_settings()
    migrate(settings.resolved_database_url)
    return make_engine(settings.resolved_database_url)


@inference_app.command("add")
def inference_add(
    base_model: str = typer.Option(
        ..., "--base-model", help="The base model id it serves (its --served-model-name)."
    ),
    url: str = typer.Option(..., "--url", help="Its address, e.g. http://vllm-1:8000."),
    adapter_dir: Path = typer.Option(
        None,
        "--adapter-dir",
        help="Where ftserve copies adapters for it: a path that vLLM reads at the same absolute path (the same "
        "host, or a shared volume mounted there). Default: DATA_DIR/adapters.",
    ),
    agent_url: str = typer.Option(
        None,
        "--agent-url",
        help="The `ftserve adapter-agent` beside it (e.g. http://vllm-1:8300): adapters then reach its host "
        "through object storage and --adapter-dir is not used.",
    ),
    max_adapters: int = typer.Option(
        None, "--max-adapters", min=1, help="Adapters kept loaded before evicting."
    ),
    max_lora_rank: int = typer.Option(None, "--max-lora-rank", help="Its --max-lora-rank."),
    api_key: str = typer.Option(
        None, "--api-key", envvar="FTSERVE_REPLICA_API_KEY", help="Its --api-key, if any."
    ),
    check: bool = typer.Option(
        True, "--check/--no-check", help="Check it answers and serves the base model."
    ),
) -> None:
    """Register (or update) a vLLM replica. Start it with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True."""
    from core.db import session_scope
    from core.errors import FtserveError
    from core.inference.replicas import FROM_CLI, upsert_replica

    settings = get_settings()
    engine = _engine()
    try:
        with session_scope(engine) as session:
            row = upsert_replica(
                session,
                base_model=base_model,
                url=url,
                adapter_dir=(adapter_dir or settings.adapters_dir).expanduser().resolve(),
                max_adapters=max_adapters or settings.resolved_inference_max_adapters,
                max_lora_rank=max_lora_rank or settings.vllm_max_lora_rank,
                source=FROM_CLI,
                api_key=api_key,
                agent_url=agent_url,
            )
            replica_id, replica_url = row.id, row.url
    except FtserveError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from None
    finally:
        engine.dispose()
    err.print(f"Registered {replica_id}: {base_model} at {replica_url}")
    if check:
        problem = asyncio.run(_check(replica_url, base_model, api_key))
        if problem:
            err.print(
                f"[yellow]warning:[/yellow] {problem} (registered anyway; the scheduler keeps checking it)"
            )
    print(replica_id)


async def _check(url: str, base_model: str, api_key: str | None) -> str | None:
    import httpx

    from core.inference.vllm import ReplicaError, vllm_models
    from core.models import InferenceReplica

    probe = InferenceReplica(id="probe", base_model=base_model, url=url, adapter_dir="/", api_key=api_key)
    async with httpx.AsyncClient() as http:
        try:
            cards = await vllm_models(http, probe, timeout_s=5.0)
        except ReplicaError as exc:
            return f"{url} does not answer: {exc.message}"
    if base_model not in cards:
        return f"{url} serves {', '.join(sorted(cards)) or 'nothing'}, not {base_model!r}"
    return None


@inference_app.command("list")
def inference_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The registered replicas with their health and loaded adapters."""
    from sqlmodel import Session

    from core.inference.replicas import list_replicas, placements_by_adapter

    engine = _engine()
    try:
        with Session(engine) as session:
            replicas = list_replicas(session)
            placed = placements_by_adapter(session)
    finally:
        engine.dispose()
    loaded = {r.id: sorted(a for a, ids_ in placed.items() if r.id in ids_) for r in replicas}
    rows: list[dict[str, Any]] = [
        {
            "id": r.id,
            "base_model": r.base_model,
            "url": r.url,
            "source": r.source,
            "status": r.status,
            "last_error": r.last_error,
            "adapter_dir": r.adapter_dir,
            "agent_url": r.agent_url,
            "max_adapters": r.max_adapters,
            "max_lora_rank": r.max_lora_rank,
            "adapters": loaded[r.id],
        }
        for r in replicas
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        err.print(
            "No replicas. `ftserve up` starts one per base model; `ftserve inference add` registers others."
        )
        return
    for row in rows:
        error = f"  ({row['last_error']})" if row["last_error"] and row["status"] != "healthy" else ""
        print(
            f"{row['id']}\t{row['base_model']}\t{row['url']}\t{row['source']}\t{row['status']}\t"
            f"{len(row['adapters'])}/{row['max_adapters']} adapters{error}"
        )


@inference_app.command("remove")
def inference_remove(replica: str = typer.Argument(..., help="The replica's id (rep-...) or URL.")) -> None:
    """Stop routing to a replica (its vLLM keeps running)."""
    from core.db import session_scope
    from core.inference.replicas import remove_replica

    engine = _engine()
    try:
        with session_scope(engine) as session:
            row = remove_replica(session, replica)
    finally:
        engine.dispose()
    if row is None:
        err.print(f"[red]error:[/red] no replica {replica!r}")
        raise typer.Exit(2)
    err.print(f"Removed {row.id} ({row.base_model} at {row.url}).")
