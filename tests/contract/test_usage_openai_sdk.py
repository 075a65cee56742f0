"""Usage against the session's real `ftserve up` (a real worker training demo-tiny, a real vLLM answering): two
organizations train a job and chat with it through the official `openai` SDK, and each one's usage buckets add up
exactly to its job's trained tokens and to the `usage` vLLM reported for its chats, streamed ones included."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest

from ftserve_client import Client
from ftserve_client.types import CompletionsUsageResult, FineTuningUsageResult
from tests.support.ftserve_process import FtserveProcess

pytestmark = pytest.mark.slow

ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"Code {i}?"},
            {"role": "assistant", "content": f"C{i * 7 % 10}."},
        ]
    }
    for i in range(12)
]


def _train(sdk: openai.OpenAI) -> Any:
    data = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    training_file = sdk.files.create(file=("train.jsonl", data), purpose="fine-tune")
    method: dict[str, Any] = {
        "type": "supervised",
        "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}},
    }
    job = sdk.fine_tuning.jobs.create(
        model="demo-tiny", training_file=training_file.id, seed=0, method=method
    )
    deadline = time.monotonic() + 600
    while (job := sdk.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"{job.id} did not finish"
        time.sleep(0.1)
    assert job.status == "succeeded", job.error
    return job


def _chats(sdk: openai.OpenAI, model: str) -> tuple[int, int, int]:
    """(prompt tokens, completion tokens, requests) as vLLM reported them to the client."""
    messages: Any = [{"role": "user", "content": "Code 3?"}]
    reply = sdk.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0)
    assert reply.usage is not None
    prompt, completion = reply.usage.prompt_tokens, reply.usage.completion_tokens
    stream = sdk.chat.completions.create(
        model=model, messages=messages, max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    usages = [chunk.usage for chunk in stream if chunk.usage is not None]
    assert len(usages) == 1
    prompt, completion = prompt + usages[0].prompt_tokens, completion + usages[0].completion_tokens
    # A stream that did not ask for usage gets no usage chunk, and is metered all the same (greedy: as above).
    plain = list(
        sdk.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0, stream=True)
    )
    assert all(chunk.usage is None for chunk in plain) and plain[-1].choices
    return prompt + reply.usage.prompt_tokens, completion + reply.usage.completion_tokens, 3


@pytest.fixture(scope="module")
def server(ftserve_server: FtserveProcess) -> FtserveProcess:
    ftserve_server.wait_inference_ready("demo-tiny")
    return ftserve_server


def test_two_orgs_usage_adds_up_to_their_jobs_and_chats_with_a_real_vllm(server: FtserveProcess) -> None:
    start = int(time.time()) // 86400 * 86400
    for org in ("usage-contract-a", "usage-contract-b"):
        key = server.create_key(org)
        sdk = openai.OpenAI(api_key=key, base_url=server.base_url, max_retries=0)
        job = _train(sdk)
        prompt, completion, requests = _chats(sdk, job.fine_tuned_model)

        page = Client(api_key=key, base_url=server.base_url).organization.usage(
            start_time=start, group_by=["job_id", "model"]
        )
        tuning = [r for r in page.results if isinstance(r, FineTuningUsageResult)]
        assert [(r.job_id, r.model, r.trained_tokens, r.gpu_class) for r in tuning] == [
            (job.id, "demo-tiny", job.trained_tokens, "cpu")
        ]
        assert tuning[0].gpu_seconds > 0 and tuning[0].num_attempts == 1
        [chats] = [r for r in page.results if isinstance(r, CompletionsUsageResult)]
        assert (chats.model, chats.input_tokens, chats.output_tokens, chats.num_model_requests) == (
            job.fine_tuned_model, prompt, completion, requests
        )  # fmt: skip
