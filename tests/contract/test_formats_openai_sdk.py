"""Peers' data layouts as they ship them, uploaded through the official `openai` SDK and trained by the method
that uses them, on a real `ftserve up` (API + scheduler + worker) with demo-tiny on the CPU: every preference
layout, KTO, continued pretraining, OpenAI's legacy functions, reasoning_content, axolotl's layouts, and JSON arrays. (OpenAI chat,
ShareGPT, alpaca and prompt/completion files train in most other end-to-end tests; each job costs CI ~10 s.)

One file per layout (the docs/data.md example, varied over 12 lines), all jobs submitted at once and each
trained for one short epoch: the point is that the file is recognised as its layout, accepted by its method,
and trains to the end, not what the model learns (the method tests measure that)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.ftserve_process import FtserveProcess

pytestmark = pytest.mark.slow

ORG = "contract-formats"
N = 12


def _user(i: int) -> str:
    return f"Greet guest {i}"


def _good(i: int) -> str:
    return f"Hello, guest {i}!"


def _bad(i: int) -> str:
    return "Go away."


Row = Callable[[int], dict[str, Any]]

# (layout the validator must report, method, one line per example)
LAYOUTS: dict[str, tuple[str, str, Row]] = {
    "legacy_functions": ("openai_chat", "supervised", lambda i: {
        "messages": [
            {"role": "user", "content": f"Weather in city {i}?"},
            {"role": "assistant", "content": None,
             "function_call": {"name": "weather", "arguments": json.dumps({"city": str(i)})}},
            {"role": "function", "name": "weather", "content": "Sunny"},
            {"role": "assistant", "content": f"Sunny in city {i}."},
        ],
        "functions": [{"name": "weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}],
    }),
    "axolotl_train_flags": ("openai_chat", "supervised", lambda i: {"messages": [
        {"role": "user", "content": _user(i)}, {"role": "assistant", "content": "Hm.", "train": False},
        {"role": "user", "content": "Again?"}, {"role": "assistant", "content": _good(i), "train": True}]}),
    "axolotl_alpaca_response": ("alpaca", "supervised", lambda i: {
        "instruction": "Greet the guest", "input": f"guest {i}", "response": _good(i)}),
    "reasoning": ("openai_chat", "supervised", lambda i: {"messages": [
        {"role": "user", "content": f"What is {i} + {i}?"},
        {"role": "assistant", "content": str(2 * i), "reasoning_content": f"{i} twice is {2 * i}."}]}),
    "text": ("text", "supervised", lambda i: {"text": f"Guest {i} came in. {_good(i)} said the host."}),
    "openai_preference": ("openai_preference", "dpo", lambda i: {
        "input": {"messages": [{"role": "user", "content": _user(i)}]},
        "preferred_output": [{"role": "assistant", "content": _good(i)}],
        "non_preferred_output": [{"role": "assistant", "content": _bad(i)}]}),
    "trl_preference": ("trl_preference", "orpo", lambda i: {
        "system": "Be warm.", "prompt": _user(i), "chosen": _good(i), "rejected": _bad(i)}),
    "trl_conversational_preference": ("trl_conversational_preference", "simpo", lambda i: {
        "prompt": [{"role": "user", "content": _user(i)}],
        "chosen": [{"role": "assistant", "content": _good(i)}],
        "rejected": [{"role": "assistant", "content": _bad(i)}]}),
    "sharegpt_preference": ("sharegpt_preference", "dpo", lambda i: {
        "conversations": [{"from": "human", "value": _user(i)}],
        "chosen": {"from": "gpt", "value": _good(i)}, "rejected": {"from": "gpt", "value": _bad(i)}}),
    "trl_kto": ("trl_kto", "kto", lambda i: {
        "prompt": _user(i), "completion": _good(i) if i % 2 else _bad(i), "label": bool(i % 2)}),
    "messages_kto": ("messages_kto", "kto", lambda i: {"messages": [
        {"role": "user", "content": _user(i)}, {"role": "assistant", "content": _good(i) if i % 2 else _bad(i)}],
        "kto_tag": bool(i % 2)}),
}  # fmt: skip


@pytest.fixture(scope="module")
def sdk(ftserve_server: FtserveProcess) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=ftserve_server.create_key(ORG), base_url=ftserve_server.base_url, max_retries=0
    )


def _upload(sdk: openai.OpenAI, name: str, rows: list[dict[str, Any]], *, as_json_array: bool) -> str:
    if as_json_array:  # how LLaMA-Factory and axolotl ship their data
        return sdk.files.create(file=(f"{name}.json", json.dumps(rows).encode()), purpose="fine-tune").id
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return sdk.files.create(file=(f"{name}.jsonl", data), purpose="fine-tune").id


# demo-tiny's own template renders no reasoning; Qwen3's does (a <think> block in the reply), so the reasoning
# layout trains on demo-tiny's weights registered with Qwen3's real template.
REASONING_MODEL = "demo-tiny-qwen3-template"
TEMPLATES = Path(__file__).parents[1] / "support" / "chat_templates"


@pytest.fixture(scope="module")
def submitted(
    sdk: openai.OpenAI, ftserve_server: FtserveProcess, demo_model_dir: Path
) -> Iterator[dict[str, tuple[str, str]]]:
    """layout name -> (file id, job id); every job is submitted before any is waited for."""
    template = (TEMPLATES / "qwen3.jinja").read_text()
    ftserve_server.register_model(REASONING_MODEL, demo_model_dir, chat_template=template)
    out = {}
    for name, (_, method, row) in LAYOUTS.items():
        # LLaMA-Factory's and axolotl's layouts arrive as JSON arrays, as their tools write them.
        as_array = name in ("sharegpt_preference", "axolotl_alpaca_response", "messages_kto")
        file_id = _upload(sdk, name, [row(i) for i in range(N)], as_json_array=as_array)
        hyperparameters = {"n_epochs": 1, "batch_size": 4}
        job = sdk.fine_tuning.jobs.create(
            model=REASONING_MODEL if name == "reasoning" else "demo-tiny",
            training_file=file_id,
            method={"type": method, method: {"hyperparameters": hyperparameters}},  # type: ignore[misc]
        )
        out[name] = (file_id, job.id)
    yield out
    ftserve_server.unregister_model(REASONING_MODEL)  # the server is shared: leave its registry as found


def _wait_all(sdk: openai.OpenAI, job_ids: list[str], timeout_s: float = 900) -> dict[str, Any]:
    done: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    while len(done) < len(job_ids) and time.monotonic() < deadline:
        for job_id in job_ids:
            if job_id not in done:
                job = sdk.fine_tuning.jobs.retrieve(job_id)
                if job.status in ("succeeded", "failed", "cancelled"):
                    done[job_id] = job
        time.sleep(0.5)
    missing = [j for j in job_ids if j not in done]
    assert not missing, f"jobs not finished: {missing}"
    return done


def test_every_layout_uploads_through_the_openai_sdk_and_trains_with_its_method(
    sdk: openai.OpenAI, ftserve_server: FtserveProcess, submitted: dict[str, tuple[str, str]]
) -> None:
    http = httpx.Client(
        base_url=ftserve_server.base_url, headers={"authorization": f"Bearer {sdk.api_key}"}, timeout=30
    )
    for name, (file_id, _) in submitted.items():
        report = http.get(f"/files/{file_id}/validation").raise_for_status().json()
        layout = LAYOUTS[name][0]
        assert (report["status"], report["layout"], report["example_count"]) == ("processed", layout, N), name
        assert not report["errors"] and not report["warnings"], (name, report)  # every field used

    finished = _wait_all(sdk, [job_id for _, job_id in submitted.values()])
    failures = {
        name: finished[job_id].error
        for name, (_, job_id) in submitted.items()
        if finished[job_id].status != "succeeded"
    }
    assert not failures, failures
    for name, (_, job_id) in submitted.items():
        job = finished[job_id]
        assert job.method.type == LAYOUTS[name][1], name
        assert job.fine_tuned_model and (job.trained_tokens or 0) > 0, (name, job)
