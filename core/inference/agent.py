"""The HTTP client of a replica's adapter agent (`ftserve adapter-agent`, split deployments): it copies adapters
from object storage to the vLLM host, and deletes a job's copies there."""

from __future__ import annotations

import httpx

from core.adapters import AdapterRejected
from core.inference.vllm import ReplicaError, error_message
from core.models import InferenceReplica
from core.settings import Settings


def agent_headers(settings: Settings) -> dict[str, str]:
    return {"authorization": f"Bearer {settings.agent_token}"} if settings.agent_token else {}


async def agent_sync(
    http: httpx.AsyncClient,
    replica: InferenceReplica,
    settings: Settings,
    *,
    storage_prefix: str,
    rel_dir: str,
    expected_version: str | None,
    timeout_s: float,
) -> tuple[str, str]:
    """Have the replica's adapter agent copy an adapter from storage to its host: (absolute path, version).
    Raises AdapterRejected (the agent refused the adapter) or ReplicaError (the agent failed)."""
    body = {
        "storage_prefix": storage_prefix,
        "rel_dir": rel_dir,
        "expected_version": expected_version,
        "max_lora_rank": replica.max_lora_rank,
        "base_model": replica.base_model,
    }
    try:
        response = await http.post(
            f"{replica.agent_url}/v1/adapters/sync",
            json=body,
            headers=agent_headers(settings),
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        raise ReplicaError(replica, 0, f"adapter agent unreachable: {type(exc).__name__}: {exc}") from None
    if response.status_code == 422:
        raise AdapterRejected(error_message(response))
    if response.status_code != 200:
        raise ReplicaError(replica, response.status_code, f"adapter agent: {error_message(response)}")
    answer = response.json()
    return str(answer["path"]), str(answer["version"])


async def agent_forget(
    http: httpx.AsyncClient, replica: InferenceReplica, settings: Settings, job_id: str
) -> None:
    """Delete the local copies of one job's adapters on the agent's host (best effort: raises ReplicaError)."""
    try:
        response = await http.delete(
            f"{replica.agent_url}/v1/adapters/{job_id}", headers=agent_headers(settings), timeout=30.0
        )
    except httpx.HTTPError as exc:
        raise ReplicaError(replica, 0, f"adapter agent unreachable: {type(exc).__name__}: {exc}") from None
    if response.status_code not in (200, 204, 404):
        raise ReplicaError(replica, response.status_code, f"adapter agent: {error_message(response)}")
