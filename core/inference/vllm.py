"""The HTTP client of a replica's vLLM: what it serves (`/v1/models`) and its runtime LoRA API
(`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`). Every failure is a ReplicaError."""

from __future__ import annotations

from typing import Any

import httpx

from core.models import InferenceReplica


class ReplicaError(Exception):
    """A replica answered with an error (status >= 400) or not at all (status 0)."""

    def __init__(self, replica: InferenceReplica, status: int, message: str) -> None:
        super().__init__(f"{replica.url}: {message}" + (f" (HTTP {status})" if status else ""))
        self.status = status
        self.message = message


def replica_headers(replica: InferenceReplica) -> dict[str, str]:
    return {"authorization": f"Bearer {replica.api_key}"} if replica.api_key else {}


def error_message(response: httpx.Response) -> str:
    """The message of an error answer from vLLM or an adapter agent (OpenAI's or FastAPI's shape)."""
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return str(body["error"].get("message") or body)
        return str(body.get("detail") if isinstance(body, dict) and "detail" in body else body)
    except ValueError:
        return response.text[:500]


async def vllm_models(
    http: httpx.AsyncClient, replica: InferenceReplica, *, timeout_s: float = 5.0
) -> dict[str, Any]:
    """What the replica serves: {model id: card}, base model(s) and LoRA adapters (card `root` = path)."""
    try:
        response = await http.get(
            f"{replica.url}/v1/models", headers=replica_headers(replica), timeout=timeout_s
        )
    except httpx.HTTPError as exc:
        raise ReplicaError(replica, 0, f"unreachable: {type(exc).__name__}: {exc}") from None
    if response.status_code != 200:
        raise ReplicaError(replica, response.status_code, error_message(response))
    return {card["id"]: card for card in response.json().get("data", [])}


async def vllm_load(
    http: httpx.AsyncClient, replica: InferenceReplica, name: str, path: str, *, timeout_s: float
) -> None:
    try:
        response = await http.post(
            f"{replica.url}/v1/load_lora_adapter",
            json={"lora_name": name, "lora_path": path},
            headers=replica_headers(replica),
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        raise ReplicaError(replica, 0, f"unreachable: {type(exc).__name__}: {exc}") from None
    if response.status_code == 404 and "Not Found" in response.text and "lora" not in response.text.lower():
        raise ReplicaError(
            replica, 404, "runtime LoRA loading is off: start vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
        )
    if response.status_code != 200:
        raise ReplicaError(replica, response.status_code, error_message(response))


async def vllm_unload(
    http: httpx.AsyncClient, replica: InferenceReplica, name: str, *, timeout_s: float = 30.0
) -> bool:
    """Unload `name`; False when the replica did not have it."""
    try:
        response = await http.post(
            f"{replica.url}/v1/unload_lora_adapter",
            json={"lora_name": name},
            headers=replica_headers(replica),
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        raise ReplicaError(replica, 0, f"unreachable: {type(exc).__name__}: {exc}") from None
    if response.status_code == 404:
        return False
    if response.status_code != 200:
        raise ReplicaError(replica, response.status_code, error_message(response))
    return True
