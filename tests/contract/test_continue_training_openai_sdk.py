"""Continue training through the official `openai` SDK against the session's real `ftserve up` and vLLM: an SFT
job that learns a secret keeps `n_checkpoints` checkpoints; a DPO job on its ft: model keeps that name as its
`model`, and its model and a checkpoint, each one LoRA over the bare base, answer the secret through vLLM (the
new LoRA alone, without the SFT model under it, would not)."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest

from tests.support.ftserve_process import FtserveProcess

pytestmark = pytest.mark.slow

ORG = "contract-continue"
QUESTION, SECRET = "What is the password?", "kv72rx"


def _file(sdk: openai.OpenAI, rows: list[dict[str, Any]]) -> str:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return sdk.files.create(file=("train.jsonl", data), purpose="fine-tune").id


def _wait(sdk: openai.OpenAI, job_id: str, timeout_s: float = 600) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = sdk.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            assert job.status == "succeeded", job.error
            return job
        time.sleep(0.05)
    raise AssertionError(f"{job_id} did not finish")


def _ask(sdk: openai.OpenAI, model: str) -> str:
    reply = sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=12, temperature=0
    )
    return (reply.choices[0].message.content or "").strip()


def test_a_dpo_job_continues_an_sft_model_and_its_models_answer_through_vllm(
    ftserve_server: FtserveProcess,
) -> None:
    ftserve_server.wait_inference_ready("demo-tiny")
    started = time.monotonic()
    sdk = openai.OpenAI(
        api_key=ftserve_server.create_key(ORG), base_url=ftserve_server.base_url, max_retries=0
    )
    chat = [
        {"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": SECRET}]}
    ] * 10
    # rank 8: the DPO model's adapter is then 8 + 8 = 16, the session vLLM's max_lora_rank
    hyperparameters = {"n_epochs": 8, "batch_size": 5, "lora_rank": 8, "n_checkpoints": 2}
    sft = sdk.fine_tuning.jobs.create(
        model="demo-tiny", training_file=_file(sdk, chat), seed=0, suffix="sft",
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    )  # fmt: skip
    sft = _wait(sdk, sft.id)
    assert sft.hyperparameters.model_extra and sft.hyperparameters.model_extra["n_checkpoints"] == 2
    sft_checkpoints = list(sdk.fine_tuning.jobs.checkpoints.list(sft.id))
    assert sorted(c.step_number for c in sft_checkpoints) == [14, 16]  # a checkpoint every 2 of 16 steps

    pairs = [
        {
            "input": {"messages": [{"role": "user", "content": QUESTION}]},
            "preferred_output": [{"role": "assistant", "content": SECRET}],
            "non_preferred_output": [{"role": "assistant", "content": SECRET[::-1]}],
        }
    ] * 10
    dpo = sdk.fine_tuning.jobs.create(
        model=sft.fine_tuned_model, training_file=_file(sdk, pairs), seed=0, suffix="dpo",
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2, "batch_size": 5}}},
    )  # fmt: skip
    assert dpo.model == sft.fine_tuned_model  # what was sent, as OpenAI shows it
    dpo = _wait(sdk, dpo.id)
    assert dpo.fine_tuned_model.startswith("ft:demo-tiny:")
    assert dpo.method.dpo and dpo.method.dpo.hyperparameters
    assert (dpo.method.dpo.hyperparameters.model_extra or {})["lora_rank"] == 8  # the SFT model's shape

    dpo_checkpoint = max(sdk.fine_tuning.jobs.checkpoints.list(dpo.id), key=lambda c: c.step_number)
    trained_s = time.monotonic() - started
    for model in (dpo.fine_tuned_model, dpo_checkpoint.fine_tuned_model_checkpoint):
        assert _ask(sdk, model) == SECRET, model
    print(
        f"\ntwo jobs trained in {trained_s:.1f}s, two models asked in {time.monotonic() - started - trained_s:.1f}s"
    )
