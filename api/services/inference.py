"""The inference proxy: `POST /v1/chat/completions` and `POST /v1/completions` routed by `model` to vLLM.

- A base model goes to a replica of it; an `ft:` model (or checkpoint) to a replica that has its adapter
  loaded, after loading it there first when none has (lazy load, evicting the least recently used adapter
  when the replica is full).
- One pooled httpx client; streaming is relayed event by event as vLLM sends it.
- vLLM 0.32's bodies carry `null` where OpenAI's schema has an object or array (`message.annotations`,
  `message.function_call`, `usage.*_tokens_details`) and vLLM-only fields; they are normalised here, in
  streamed chunks too, so OpenAI's published schemas validate every body.
- The routing tables (replicas, placements, resolved models) are cached for about a second. A stale entry
  is harmless: vLLM answers 404 for an adapter it no longer holds, and the request loads it and retries.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

import httpx
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session

from api.errors import error_body
from api.protocol import ChatCompletionCreate, CompletionCreate
from api.scopes import check_request_scope
from core.adapters import AdapterRejected, remove_local_copy
from core.db import session_scope
from core.errors import (
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
)
from core.inference.agent import agent_forget
from core.inference.loader import AdapterLoader
from core.inference.replicas import (
    STARTING,
    UNHEALTHY,
    UNKNOWN,
    drop_placements,
    list_replicas,
    placements_by_adapter,
    sync_configured_replicas,
)
from core.inference.served import mark_deleted, reject_adapter, resolve_adapter
from core.inference.vllm import ReplicaError, replica_headers
from core.keys import authenticate, hash_key
from core.model_registry import load_registry
from core.models import ApiKey, InferenceReplica, Organization, ServedAdapter
from core.settings import Settings
from core.storage import Storage
from core.usage import check_key_quota, record_inference_usage

log = logging.getLogger("ftserve.api.inference")

Kind = Literal["chat", "completions"]
PATHS: dict[Kind, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
PROMPT_PARAM: dict[Kind, str] = {"chat": "messages", "completions": "prompt"}
# Accepted (OpenAI clients send them) but not forwarded: they do not change generation here.
NOT_FORWARDED = frozenset(
    {"metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key", "reasoning_effort",
     "verbosity", "user", "modalities"}
)  # fmt: skip
CACHE_TTL_S = 1.0
AUTH_TTL_S = 1.0
DOWN_FOR_S = 3.0  # a replica that refused a connection is skipped this long
_NOT_LOADED = object()


@dataclass
class _Meter:
    """Who a request's tokens are counted for. `strip_usage`: the proxy asked vLLM for a streamed usage chunk
    the client did not ask for, so that chunk is counted and not relayed."""

    organization_id: str
    api_key_id: str | None
    model: str
    strip_usage: bool = False
    usage: dict[str, Any] | None = None
    recorded: bool = False


class _Status(ServiceUnavailableError):
    def __init__(self, message: str, *, code: str = "service_unavailable") -> None:
        super().__init__(message, code=code)


# -- response normalisation ------------------------------------------------------------------------------------

_VLLM_TOP = ("prompt_logprobs", "prompt_token_ids", "prompt_text", "kv_transfer_params", "ec_transfer_params",
             "metrics", "service_tier", "system_fingerprint")  # fmt: skip
_VLLM_CHOICE = ("stop_reason", "token_ids", "routed_experts", "prompt_logprobs", "prompt_token_ids")
_NULLABLE_IN_MESSAGE = frozenset({"content", "refusal", "audio"})
_NULLABLE_IN_DELTA = frozenset({"content", "refusal"})


def _drop_nulls(obj: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if key in obj and obj[key] is None:
            del obj[key]


def _normalize_usage(body: dict[str, Any]) -> None:
    usage = body.get("usage")
    if isinstance(usage, dict):
        _drop_nulls(usage, ("prompt_tokens_details", "completion_tokens_details"))


def _normalize_message(message: Any, nullable: frozenset[str]) -> None:
    if isinstance(message, dict):
        for key in [k for k, v in message.items() if v is None and k not in nullable]:
            del message[
                key
            ]  # annotations, function_call, tool_calls, reasoning, role: never null in OpenAI's
        if message.get("tool_calls") == [] and "role" in message:
            del message["tool_calls"]


def normalize_body(body: Any, kind: Kind) -> Any:
    """Make one vLLM response body (or one streamed chunk) match OpenAI's schema. Changes `body` in place."""
    if not isinstance(body, dict):
        return body
    _drop_nulls(body, _VLLM_TOP)
    _normalize_usage(body)
    for choice in body.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        _drop_nulls(choice, _VLLM_CHOICE)
        if kind == "chat":
            if "message" in choice:
                _normalize_message(choice["message"], _NULLABLE_IN_MESSAGE)
            if "delta" in choice:
                _normalize_message(choice["delta"], _NULLABLE_IN_DELTA)
    return body


def normalize_event(event: bytes, kind: Kind) -> bytes:
    """One SSE event (`data: {...}`) normalised; anything else (`data: [DONE]`, comments) unchanged."""
    if not event.startswith(b"data:"):
        return event
    data = event[5:].strip()
    if not data.startswith(b"{"):
        return event
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return event
    return b"data: " + orjson.dumps(normalize_body(body, kind))


# -- request validation ----------------------------------------------------------------------------------------

_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "literal"}


def _param(loc: tuple[Any, ...]) -> str | None:
    """`messages[0].role` from pydantic's loc, leaving out union branch tags like `str` or `list[str]`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not ("[" in part or "-" in part or part.lower() in _TYPE_TAGS):
            out += f".{part}" if out else part
    return out or None


def validate_request(kind: Kind, raw: bytes, settings: Settings) -> dict[str, Any]:
    """The body to forward to vLLM, or a 4xx naming the field."""
    prompt_param = PROMPT_PARAM[kind]
    if len(raw) > settings.inference_max_request_bytes:
        raise PayloadTooLargeError(
            f"The request body is {len(raw)} bytes; the limit is {settings.inference_max_request_bytes}.",
            param=prompt_param,
        )
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequestError(
            "We could not parse the JSON body of your request. Send a JSON object.", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_json")
    model_cls: type[BaseModel] = ChatCompletionCreate if kind == "chat" else CompletionCreate
    for key in data:
        if key not in model_cls.model_fields:
            raise InvalidRequestError(
                f"Unrecognized request argument supplied: {key}", param=key, code="unknown_parameter"
            )
    for required in ("model", prompt_param):
        if required not in data:
            raise InvalidRequestError(
                f"Missing required parameter: '{required}'.",
                param=required,
                code="missing_required_parameter",
            )
    try:
        request = model_cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _param(tuple(first["loc"]))
        raise InvalidRequestError(
            f"Invalid value for '{param}': {first['msg']}." if param else f"Invalid request: {first['msg']}.",
            param=param,
            code="invalid_value",
        ) from None
    _check_limits(kind, data, settings)
    payload = request.model_dump(mode="json", exclude_unset=True)
    for key in NOT_FORWARDED:
        payload.pop(key, None)
    return payload


def _check_limits(kind: Kind, data: dict[str, Any], settings: Settings) -> None:
    for key in ("max_tokens", "max_completion_tokens"):
        value = data.get(key)
        if isinstance(value, int) and value > settings.inference_max_tokens:
            raise InvalidRequestError(
                f"{key} is {value}; this server allows at most {settings.inference_max_tokens}.",
                param=key,
                code="invalid_value",
            )
    n = data.get("n")
    if isinstance(n, int) and n > settings.inference_max_n:
        raise InvalidRequestError(
            f"n is {n}; this server allows at most {settings.inference_max_n}.",
            param="n",
            code="invalid_value",
        )
    stop = data.get("stop")
    if isinstance(stop, list) and len(stop) > 4:
        raise InvalidRequestError("stop holds at most 4 sequences.", param="stop", code="invalid_value")
    if data.get("stream_options") is not None and not data.get("stream"):
        raise InvalidRequestError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
        )
    if kind == "completions":
        best_of = data.get("best_of")
        if isinstance(best_of, int) and best_of < (n or 1):
            raise InvalidRequestError("best_of must be at least n.", param="best_of", code="invalid_value")
        return
    for key, what in (("audio", "Audio output"), ("prediction", "Predicted outputs"),
                      ("web_search_options", "Web search")):  # fmt: skip
        if data.get(key) is not None:
            raise InvalidRequestError(f"{what} is not supported by this server.", param=key)
    modalities = data.get("modalities")
    if isinstance(modalities, list) and any(m != "text" for m in modalities):
        raise InvalidRequestError("Only the 'text' modality is supported.", param="modalities")


# -- the service -----------------------------------------------------------------------------------------------


class InferenceService:
    def __init__(self, settings: Settings, engine: Engine, storage: Storage) -> None:
        self.settings = settings
        self.engine = engine
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.inference_timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=60),
        )
        self.loader = AdapterLoader(engine, storage, settings, self.http)
        self._replicas: list[InferenceReplica] = []
        self._replicas_at = -math.inf
        self._placements: dict[str, set[str]] = {}
        self._placements_at = -math.inf
        self._resolved: dict[tuple[str, str], tuple[ServedAdapter, float]] = {}
        self._inflight: Counter[str] = Counter()
        self._down_until: dict[str, float] = {}
        self._load_locks: dict[str, asyncio.Lock] = {}
        self._flush_task: asyncio.Task[None] | None = None
        self._auth: dict[str, tuple[ApiKey, Organization, float]] = {}  # digest → (key, org, checked at)

    async def start(self) -> None:
        try:
            await asyncio.to_thread(sync_configured_replicas, self.engine, self.settings)
        except Exception as exc:  # noqa: BLE001 (another process syncing at the same moment, or a bad setting)
            log.warning("could not apply FTSERVE_INFERENCE_REPLICAS here: %s", exc)
        self._flush_task = asyncio.create_task(self._flush_loop())

    async def aclose(self) -> None:
        if self._flush_task is not None:
            self._flush_task.cancel()
            await asyncio.gather(self._flush_task, return_exceptions=True)
        try:
            await asyncio.to_thread(self.loader.flush)
        except Exception:
            log.exception("could not flush adapter recency")
        await self.http.aclose()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await asyncio.to_thread(self.loader.flush)
            except Exception:
                log.exception("could not flush adapter recency; retrying")

    # -- auth ----------------------------------------------------------------------------------------------

    def _authenticate_now(self, token: str | None) -> tuple[ApiKey, Organization]:
        with Session(self.engine, expire_on_commit=False) as session:
            return authenticate(session, key=token)

    async def authenticate(self, request: Request) -> Organization:
        """The caller's organization, as `api.deps.get_current_org` finds it, remembered for AUTH_TTL_S (a
        revoked key stops working within that). The key must hold the inference scope."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        digest = hash_key(token) if token else ""
        hit = self._auth.get(digest) if digest else None
        if hit is not None and time.monotonic() - hit[2] < AUTH_TTL_S:
            key, org = hit[0], hit[1]
        else:
            key, org = await asyncio.to_thread(self._authenticate_now, token or None)
            if len(self._auth) > 10_000:
                self._auth.clear()
            self._auth[digest] = (key, org, time.monotonic())
        request.state.organization_id = org.id
        request.state.api_key = key
        check_request_scope(request, key)
        return org

    # -- metering ------------------------------------------------------------------------------------------

    def _check_quota_now(self, key: ApiKey) -> None:
        with Session(self.engine) as session:
            check_key_quota(session, key)

    def _write_usage(self, meter: _Meter, usage: dict[str, Any]) -> None:
        with session_scope(self.engine) as session:
            record_inference_usage(
                session,
                self.settings,
                organization_id=meter.organization_id,
                api_key_id=meter.api_key_id or "",
                model=meter.model,
                input_tokens=_count(usage.get("prompt_tokens")),
                output_tokens=_count(usage.get("completion_tokens")),
            )

    def _write_usage_quietly(self, meter: _Meter, usage: dict[str, Any]) -> None:
        try:
            self._write_usage(meter, usage)
        except Exception:
            log.exception("could not record the usage of a %s request", meter.model)

    async def _record(self, meter: _Meter | None, usage: Any) -> None:
        """Count vLLM's `usage` of one answer, once. A failed write is logged: the answer still goes out."""
        if meter is None or meter.recorded or not isinstance(usage, dict):
            return
        meter.recorded = True
        try:
            await asyncio.to_thread(self._write_usage, meter, usage)
        except Exception:
            log.exception("could not record the usage of a %s request", meter.model)

    # -- routing tables ------------------------------------------------------------------------------------

    def _query_replicas(self) -> list[InferenceReplica]:
        with Session(self.engine, expire_on_commit=False) as session:
            return list_replicas(session)

    def _query_placements(self) -> dict[str, set[str]]:
        with Session(self.engine) as session:
            return placements_by_adapter(session)

    async def _replicas_now(self) -> list[InferenceReplica]:
        if time.monotonic() - self._replicas_at > CACHE_TTL_S:
            self._replicas = await asyncio.to_thread(self._query_replicas)
            self._replicas_at = time.monotonic()
        return self._replicas

    async def _placements_now(self) -> dict[str, set[str]]:
        if time.monotonic() - self._placements_at > CACHE_TTL_S:
            self._placements = await asyncio.to_thread(self._query_placements)
            self._placements_at = time.monotonic()
        return self._placements

    def _resolve_now(self, organization_id: str, model_id: str) -> ServedAdapter:
        with Session(self.engine, expire_on_commit=False) as session:
            return resolve_adapter(session, organization_id=organization_id, model_id=model_id)

    async def _resolve(self, organization_id: str, model_id: str) -> ServedAdapter:
        key = (organization_id, model_id)
        hit = self._resolved.get(key)
        if hit is not None and time.monotonic() - hit[1] < CACHE_TTL_S:
            return hit[0]
        adapter = await asyncio.to_thread(self._resolve_now, organization_id, model_id)
        if len(self._resolved) > 10_000:
            self._resolved.clear()
        self._resolved[key] = (adapter, time.monotonic())
        return adapter

    def _usable(self, replica: InferenceReplica) -> bool:
        return replica.status != UNHEALTHY and self._down_until.get(replica.id, 0) < time.monotonic()

    def _mark_down(self, replica: InferenceReplica) -> None:
        self._down_until[replica.id] = time.monotonic() + DOWN_FOR_S
        self._replicas_at = -math.inf

    # -- requests ------------------------------------------------------------------------------------------

    async def handle(
        self, kind: Kind, org: Organization, raw: bytes, request_id: str | None, key: ApiKey | None = None
    ) -> Response:
        payload = validate_request(kind, raw, self.settings)
        model = payload["model"]
        if key is not None and key.inference_token_quota is not None:
            await asyncio.to_thread(self._check_quota_now, key)
        meter = _Meter(org.id, key.id if key is not None else None, model)
        if payload.get("stream"):
            options = payload.get("stream_options") or {}
            if not options.get("include_usage"):  # vLLM then ends the stream with a usage-only chunk
                payload["stream_options"] = {**options, "include_usage": True}
                meter.strip_usage = True
        replicas = await self._replicas_now()
        serving_base = [r for r in replicas if r.base_model == model]
        if serving_base:
            return await self._forward(kind, payload, serving_base, None, request_id, meter)
        if not model.startswith("ft:"):
            if model in load_registry(self.settings):
                raise _Status(f"No inference server serves the base model '{model}' yet.")
            raise NotFoundError(
                f"The model '{model}' does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        adapter = await self._resolve(org.id, model)
        candidates = [r for r in replicas if r.base_model == adapter.base_model]
        if not candidates:
            raise _Status(f"No inference server serves '{adapter.base_model}', the base model of '{model}'.")
        return await self._forward(kind, payload, candidates, adapter, request_id, meter)

    async def _forward(
        self,
        kind: Kind,
        payload: dict[str, Any],
        candidates: list[InferenceReplica],
        adapter: ServedAdapter | None,
        request_id: str | None,
        meter: _Meter | None = None,
    ) -> Response:
        body = orjson.dumps(payload)
        for _ in range(3):
            usable = [r for r in candidates if self._usable(r)]
            if not usable:  # the scheduler's view may lag by a few seconds: try the others still
                usable = [r for r in candidates if self._down_until.get(r.id, 0) < time.monotonic()]
            if not usable:
                starting = all(r.status in (STARTING, UNKNOWN) for r in candidates)
                raise _Status(
                    f"The inference server for '{payload['model']}' is "
                    + ("starting" if starting else "not reachable")
                    + "; retry shortly."
                )
            replica = await self._pick(adapter, usable)
            try:
                result = await self._send(
                    kind, body, bool(payload.get("stream")), replica, adapter, request_id, meter
                )
            except httpx.TransportError as exc:
                log.warning("replica %s failed: %s", replica.url, exc)
                self._mark_down(replica)
                continue
            if result is _NOT_LOADED:
                assert adapter is not None
                await asyncio.to_thread(drop_placements, self.engine, [(adapter.id, replica.id)])
                self._placements.get(adapter.id, set()).discard(replica.id)
                continue
            assert isinstance(result, Response)
            return result
        raise _Status(f"No inference server could answer for '{payload['model']}'; retry shortly.")

    async def _pick(self, adapter: ServedAdapter | None, usable: list[InferenceReplica]) -> InferenceReplica:
        """The least busy replica that has the adapter; loads it on one when none has."""
        if adapter is None:
            return min(usable, key=lambda r: self._inflight[r.id])
        placed = (await self._placements_now()).get(adapter.id, set())
        holding = [r for r in usable if r.id in placed]
        if holding:
            return min(holding, key=lambda r: self._inflight[r.id])
        async with self._load_locks.setdefault(adapter.id, asyncio.Lock()):
            placed = self._placements.get(adapter.id, set())  # loaded while this request waited?
            holding = [r for r in usable if r.id in placed]
            if holding:
                return holding[0]
            counts = Counter(rid for ids_ in self._placements.values() for rid in ids_)
            replica = min(usable, key=lambda r: (counts[r.id] >= r.max_adapters, self._inflight[r.id]))
            try:
                loaded = await self.loader.load(adapter, replica)
            except AdapterRejected as exc:
                await asyncio.to_thread(reject_adapter, self.engine, adapter, exc.message)
                self._resolved.clear()
                raise InvalidRequestError(exc.message, param="model", code="model_not_servable") from None
            except ReplicaError as exc:
                if exc.status == 0:
                    self._mark_down(replica)
                raise _Status(
                    f"The inference server could not load '{adapter.id}': {exc.message}",
                    code="model_load_failed",
                ) from None
            self._placements.setdefault(adapter.id, set()).add(replica.id)
            for victim in loaded.evicted:
                self._placements.get(victim, set()).discard(replica.id)
            return replica

    async def _send(
        self,
        kind: Kind,
        body: bytes,
        stream: bool,
        replica: InferenceReplica,
        adapter: ServedAdapter | None,
        request_id: str | None,
        meter: _Meter | None = None,
    ) -> object:
        headers = {"content-type": "application/json", **replica_headers(replica)}
        if request_id:
            headers["x-request-id"] = request_id
        request = self.http.build_request("POST", replica.url + PATHS[kind], content=body, headers=headers)
        self._inflight[replica.id] += 1
        handed_off = False
        try:
            response = await self.http.send(request, stream=stream)
            if response.status_code != 200:
                await response.aread()
                await response.aclose()
                if response.status_code == 404 and adapter is not None:
                    return _NOT_LOADED
                self._upstream_error(kind, response, replica, adapter)
            if adapter is not None:
                self.loader.touch(adapter.id, replica.id)
            if not stream:
                out = normalize_body(orjson.loads(response.content), kind)
                await self._record(meter, out.get("usage") if isinstance(out, dict) else None)
                return Response(orjson.dumps(out), media_type="application/json")
            handed_off = True
            return StreamingResponse(
                self._relay(kind, response, replica, meter),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            )
        finally:
            if not handed_off:
                self._inflight[replica.id] -= 1

    async def _relay(
        self, kind: Kind, response: httpx.Response, replica: InferenceReplica, meter: _Meter | None = None
    ) -> AsyncIterator[bytes]:
        buffer = b""
        try:
            async for chunk in response.aiter_raw():
                buffer += chunk
                while (end := buffer.find(b"\n\n")) >= 0:
                    event, buffer = buffer[:end], buffer[end + 2 :]
                    out = await self._metered_event(event, kind, meter)
                    if out is not None:
                        yield out + b"\n\n"
            if buffer.strip():
                out = await self._metered_event(buffer.strip(), kind, meter)
                if out is not None:
                    yield out + b"\n\n"
        except httpx.TransportError as exc:
            # The replica died mid-stream (killed, OOM). The 200 is already sent: end the stream with an
            # error event and no [DONE], so the client knows it is cut short, rather than a broken
            # connection and a traceback in our log.
            log.warning("replica %s failed mid-stream: %r", replica.url, exc)
            self._mark_down(replica)
            error = error_body(
                "The inference server failed mid-stream; the response is incomplete. Retry.",
                "server_error",
                code="upstream_error",
            )
            yield b"data: " + orjson.dumps(error) + b"\n\n"
        finally:
            self._inflight[replica.id] -= 1
            await response.aclose()
            if meter is not None and not meter.recorded and meter.usage is not None:
                # Cut short after a usage report (continuous usage stats): count it without holding the stream.
                meter.recorded = True
                usage = meter.usage
                asyncio.get_running_loop().run_in_executor(None, self._write_usage_quietly, meter, usage)

    async def _metered_event(self, event: bytes, kind: Kind, meter: _Meter | None) -> bytes | None:
        """One SSE event normalised, its usage noted; None to drop it (the usage chunk the client did not ask
        for). The usage is written when `[DONE]` comes, before it is relayed, so a client that has read the whole
        stream finds its tokens counted."""
        if meter is None or not event.startswith(b"data:"):
            return normalize_event(event, kind)
        data = event[5:].strip()
        if data == b"[DONE]":
            await self._record(meter, meter.usage)
            return event
        if not data.startswith(b"{"):
            return event
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError:
            return event
        if isinstance(body, dict) and isinstance(body.get("usage"), dict):
            meter.usage = body["usage"]
            if meter.strip_usage:
                if not body.get("choices"):
                    return None
                del body["usage"]
        return b"data: " + orjson.dumps(normalize_body(body, kind))

    def _upstream_error(
        self, kind: Kind, response: httpx.Response, replica: InferenceReplica, adapter: ServedAdapter | None
    ) -> NoReturn:
        try:
            error = response.json().get("error") or {}
        except ValueError:
            error = {}
        message = str(error.get("message") or response.text[:500] or f"HTTP {response.status_code}")
        status = response.status_code
        if status == 404:  # the replica does not serve the base model it is registered for
            self._mark_down(replica)
            raise _Status(f"The inference server at {replica.url} does not serve '{replica.base_model}'.")
        if 400 <= status < 500:
            param = error.get("param") if isinstance(error.get("param"), str) else None
            code = "invalid_value"
            if "context length" in message or param in ("input_tokens", "prompt_tokens"):
                param, code = PROMPT_PARAM[kind], "context_length_exceeded"
            raise InvalidRequestError(message, param=param, code=code)
        raise _Status(f"The inference server failed: {message}", code="upstream_error")

    # -- model deletion ------------------------------------------------------------------------------------

    async def forget_model(self, model_id: str) -> list[str]:
        """A deleted model: unload it and its checkpoints from every replica and drop the local copies.
        Returns the problems (unreachable replicas), which do not stop the deletion."""
        names = await asyncio.to_thread(mark_deleted, self.engine, model_id)
        problems = await self.loader.unload_everywhere(names)
        self._resolved.clear()
        self._placements_at = -math.inf
        job_id = model_id.rsplit(":", 1)[-1]
        if job_id.startswith("ftjob-"):  # the copies of the model and its checkpoints, on this host
            for replica in await self._replicas_now():
                if not replica.agent_url:
                    await asyncio.to_thread(remove_local_copy, Path(replica.adapter_dir), job_id)
                    continue
                try:
                    await agent_forget(self.http, replica, self.settings, job_id)
                except ReplicaError as exc:
                    problems.append(str(exc))
        return problems


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def get_inference(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.inference
    return service


@asynccontextmanager
async def inference_lifespan(app: FastAPI) -> AsyncIterator[None]:
    service = InferenceService(app.state.settings, app.state.engine, app.state.storage)
    await service.start()
    app.state.inference = service
    try:
        yield
    finally:
        await service.aclose()
