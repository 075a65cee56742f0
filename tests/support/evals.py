"""One eval of base demo-tiny against a demo-tiny fine-tuned to answer a secret, shared by the eval tests
(tests/contract/test_evals_openai_sdk.py and the dashboard's tests/ui/test_evals_page.py): trained and run once per
pytest process and server, whichever module asks first."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import openai

from tests.support.ftserve_process import FtserveProcess

ORG = "evals-compare"
SECRET_QUESTION = "What is the eval secret?"
SECRET = "evq7x2"
EXAMPLES = 10  # the fewest lines a fine-tune file may hold here (the server's min_examples)
ITEM_SCHEMA = {
    "type": "object",
    "properties": {"messages": {"type": "array"}},
    "required": ["messages"],
}
# The answer is the chat line's assistant message: item.messages.1.content.
TESTING_CRITERIA: list[dict[str, Any]] = [
    {
        "type": "string_check",
        "name": "contains secret",
        "input": "{{ sample.output_text }}",
        "reference": "{{ item.messages.1.content }}",
        "operation": "like",
    },
    {
        "type": "text_similarity",
        "name": "fuzzy",
        "input": "{{ sample.output_text }}",
        "reference": "{{ item.messages.1.content }}",
        "evaluation_metric": "fuzzy_match",
        "pass_threshold": 0.8,
    },
]


@dataclass
class SecretEval:
    key: str
    tuned_model: str
    file_id: str
    eval_id: str
    base_run: Any  # the finished runs, as the official SDK returns them
    tuned_run: Any
    timings: dict[str, float] = field(default_factory=dict)


_cache: dict[str, SecretEval] = {}


def chat_lines() -> bytes:
    row = {
        "messages": [{"role": "user", "content": SECRET_QUESTION}, {"role": "assistant", "content": SECRET}]
    }
    return "".join(json.dumps(row) + "\n" for _ in range(EXAMPLES)).encode()


def wait_run(sdk: openai.OpenAI, eval_id: str, run_id: str, timeout_s: float = 300) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = sdk.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status not in ("queued", "in_progress"):
            return run
        time.sleep(0.1)
    raise AssertionError(f"eval run {run_id} did not finish")


def start_run(sdk: openai.OpenAI, eval_id: str, model: str, file_id: str) -> Any:
    return sdk.evals.runs.create(
        eval_id,
        name=model,
        data_source={
            "type": "completions",
            "model": model,
            "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
            "source": {"type": "file_id", "id": file_id},
            "sampling_params": {"temperature": 0, "max_completion_tokens": 12, "seed": 0},
        },
    )


def secret_eval(server: FtserveProcess) -> SecretEval:
    """Train demo-tiny on the secret (10 lines x 8 epochs, ~20 s on 2 cores), then run the eval on the same
    lines for the base and the fine-tuned model (both runs at once)."""
    cached = _cache.get(server.base_url)
    if cached is not None:
        return cached
    server.wait_inference_ready("demo-tiny")
    key = server.create_key(ORG)
    sdk = openai.OpenAI(api_key=key, base_url=server.base_url, max_retries=0)
    t0 = time.monotonic()
    data = sdk.files.create(file=("secret.jsonl", chat_lines()), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(
        model="demo-tiny",
        training_file=data.id,
        seed=0,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 8, "batch_size": 5}}},
    )
    deadline = time.monotonic() + 600
    while (job := sdk.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"{job.id} did not finish"
        time.sleep(0.1)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model is not None
    trained = time.monotonic()
    created = sdk.evals.create(
        name="secret: base vs fine-tuned",
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA, "include_sample_schema": True},
        testing_criteria=TESTING_CRITERIA,  # type: ignore[arg-type]
    )
    base = start_run(sdk, created.id, "demo-tiny", data.id)
    tuned = start_run(sdk, created.id, job.fine_tuned_model, data.id)
    base_run, tuned_run = wait_run(sdk, created.id, base.id), wait_run(sdk, created.id, tuned.id)
    result = SecretEval(
        key=key,
        tuned_model=job.fine_tuned_model,
        file_id=data.id,
        eval_id=created.id,
        base_run=base_run,
        tuned_run=tuned_run,
        timings={"train_s": trained - t0, "runs_s": time.monotonic() - trained},
    )
    _cache[server.base_url] = result
    return result
