"""OpenAI's /v1/fine_tuning/alpha/graders/validate and /run: check a grader, and score one sample with it."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import Request

from api.protocol import RunGraderRequest, RunGraderResponse, ValidateGraderRequest, ValidateGraderResponse
from api.services.inference import get_inference
from core import graders
from core.errors import InvalidRequestError, ServiceUnavailableError
from core.models import Organization

_ERROR_FLAGS = (
    "formula_parse_error",
    "invalid_variable_error",
    "model_grader_parse_error",
    "model_grader_refusal_error",
    "model_grader_server_error",
    "other_error",
    "python_grader_runtime_error",
    "python_grader_server_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
)


def validate(request: ValidateGraderRequest) -> ValidateGraderResponse:
    graders.check_grader(request.grader)
    return ValidateGraderResponse(grader=request.grader)


def model_caller(request: Request, org: Organization, loop: asyncio.AbstractEventLoop) -> graders.ModelCall:
    """A score_model grader's call, through the inference path the API serves (called from a worker thread)."""
    service = get_inference(request)
    key = getattr(request.state, "api_key", None)

    def call(model: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> str:
        body: dict[str, Any] = {"model": model, "messages": messages}
        for name in ("temperature", "top_p", "seed", "max_completion_tokens", "max_tokens"):
            if sampling.get(name) is not None:
                body[name] = sampling[name]
        future = asyncio.run_coroutine_threadsafe(
            service.handle("chat", org, orjson.dumps(body), getattr(request.state, "request_id", None), key),
            loop,
        )
        response = future.result()
        if response.status_code != 200:
            raise ServiceUnavailableError(
                f"The grader model '{model}' answered {response.status_code}: {bytes(response.body)[:300]!r}"
            )
        content = orjson.loads(response.body)["choices"][0]["message"].get("content")
        return content or ""

    return call


async def run(request: Request, org: Organization, body: RunGraderRequest) -> RunGraderResponse:
    grader = graders.check_grader(body.grader)
    if body.item is not None and not isinstance(body.item, dict):
        raise InvalidRequestError("item must be an object", param="item")
    call = model_caller(request, org, asyncio.get_running_loop())
    result, seconds = await asyncio.to_thread(
        graders.run_grader, body.grader, body.item, body.model_sample, model_call=call
    )
    errors: dict[str, Any] = dict.fromkeys(_ERROR_FLAGS, False)
    errors["model_grader_server_error_details"] = None
    errors["python_grader_runtime_error_details"] = None
    errors["python_grader_server_error_type"] = None
    if result.errors:
        errors["model_grader_parse_error"] = True
    scores = {grader.name: result.reward, **result.sub_rewards}
    return RunGraderResponse(
        reward=result.reward,
        metadata={
            "name": grader.name,
            "type": grader.type,
            "errors": errors,
            "execution_time": round(seconds, 6),
            "scores": scores,
            "token_usage": None,
            "sampled_model_name": None,
        },
        sub_rewards=result.sub_rewards,
        model_grader_token_usage_per_model={},
    )
