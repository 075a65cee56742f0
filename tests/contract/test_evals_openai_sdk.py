"""Evals through the official `openai` SDK against the session's real `ftserve up` (vLLM CPU serving demo-tiny): an
eval of base demo-tiny against demo-tiny fine-tuned on a secret, both runs over the same fine-tune file, scored by
a string_check and a text_similarity grader. The fine-tuned run must score higher, in the run objects and in the
report file; and the SDK's shapes (evals, runs, output items) must round-trip."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest

from core.graders import parse_model_score
from tests.support.evals import SECRET, SecretEval, secret_eval, start_run, wait_run
from tests.support.ftserve_process import FtserveProcess, vllm_chat_requests

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def compared(ftserve_server: FtserveProcess) -> SecretEval:
    result = secret_eval(ftserve_server)
    print(f"\nsecret eval: trained in {result.timings.get('train_s', 0):.1f}s, both runs in "
          f"{result.timings.get('runs_s', 0):.1f}s")  # fmt: skip
    return result


@pytest.fixture(scope="module")
def sdk(ftserve_server: FtserveProcess, compared: SecretEval) -> openai.OpenAI:
    return openai.OpenAI(api_key=compared.key, base_url=ftserve_server.base_url, max_retries=0)


def _criteria(run: Any) -> dict[str, Any]:
    return {r.testing_criteria: r for r in run.per_testing_criteria_results}


def test_fine_tuned_scores_higher_than_base(compared: SecretEval) -> None:
    base, tuned = compared.base_run, compared.tuned_run
    assert base.status == tuned.status == "completed", (base.error, tuned.error)
    assert base.model == "demo-tiny" and tuned.model == compared.tuned_model
    for run in (base, tuned):
        counts = run.result_counts
        assert counts.total == 10 and counts.passed + counts.failed + counts.errored == 10
        assert counts.errored == 0
    print(f"\npassed: base {base.result_counts.passed}/10, fine-tuned {tuned.result_counts.passed}/10")
    assert tuned.result_counts.passed == 10 and base.result_counts.passed == 0
    base_criteria, tuned_criteria = _criteria(base), _criteria(tuned)
    assert set(base_criteria) == {"contains secret", "fuzzy"}
    for name in base_criteria:
        # mean_score is our extension: the SDK keeps it in model_extra.
        base_mean = base_criteria[name].model_extra["mean_score"]
        tuned_mean = tuned_criteria[name].model_extra["mean_score"]
        print(f"{name}: mean score base {base_mean:.3f}, fine-tuned {tuned_mean:.3f}")
        assert tuned_mean > base_mean
        assert tuned_criteria[name].passed == 10


def test_report_file_holds_the_summary_and_every_item(sdk: openai.OpenAI, compared: SecretEval) -> None:
    rates = {}
    for run in (compared.base_run, compared.tuned_run):
        file_id = run.model_extra["report_file_id"]
        assert sdk.files.retrieve(file_id).purpose == "evals"
        lines = [json.loads(line) for line in sdk.files.content(file_id).text.splitlines()]
        summary, items = lines[0], lines[1:]
        assert summary["type"] == "summary" and summary["run_id"] == run.id and summary["model"] == run.model
        assert summary["result_counts"] == run.result_counts.model_dump()
        assert len(items) == 10 and all(i["type"] == "item" for i in items)
        assert {"item", "output", "scores", "passed"} <= set(items[0])
        assert set(items[0]["scores"]) == {"contains secret", "fuzzy"}
        rates[run.model] = summary["pass_rate"]
    assert rates[compared.tuned_model] == 1.0 and rates["demo-tiny"] == 0.0


def test_output_items_and_runs_list(sdk: openai.OpenAI, compared: SecretEval) -> None:
    run = compared.tuned_run
    items = list(sdk.evals.runs.output_items.list(run.id, eval_id=compared.eval_id, limit=100))
    assert sorted(i.datasource_item_id for i in items) == list(range(10))  # in the order they were graded
    item = items[0]
    assert item.status == "pass" and item.sample.output[0].content.strip() == SECRET
    assert [m.role for m in item.sample.input] == ["user"]  # the answer itself is never in the prompt
    assert {r.name: r.passed for r in item.results} == {"contains secret": True, "fuzzy": True}
    one = sdk.evals.runs.output_items.retrieve(item.id, eval_id=compared.eval_id, run_id=run.id)
    assert one.id == item.id
    runs = list(sdk.evals.runs.list(compared.eval_id))
    assert {r.id for r in runs} >= {compared.base_run.id, run.id}
    assert [r.id for r in sdk.evals.runs.list(compared.eval_id, status="completed")][:2] == [
        compared.base_run.id,
        run.id,
    ]
    assert run.report_url.endswith(f"/ui/evals/{compared.eval_id}?run={run.id}")
    assert sdk.evals.retrieve(compared.eval_id).testing_criteria[0].name == "contains secret"
    assert compared.eval_id in {e.id for e in sdk.evals.list()}


def test_template_run_on_inline_items_and_cancel(sdk: openai.OpenAI, compared: SecretEval) -> None:
    """A second eval on inline items with a prompt template; a canceled run stops and publishes no report."""
    created = sdk.evals.create(
        name="inline",
        data_source_config={
            "type": "custom",
            "item_schema": {
                "type": "object",
                "properties": {"q": {"type": "string"}, "a": {"type": "string"}},
            },
        },
        testing_criteria=[
            {
                "type": "string_check",
                "name": "eq",
                "input": "{{ sample.output_text }}",
                "reference": "{{ item.a }}",
                "operation": "ilike",
            },
        ],  # fmt: skip
    )
    run = sdk.evals.runs.create(
        created.id,
        data_source={
            "type": "completions",
            "model": compared.tuned_model,
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{ item.q }}"}]},
            "source": {
                "type": "file_content",
                "content": [{"item": {"q": "What is the eval secret?", "a": SECRET}}],
            },
            "sampling_params": {"temperature": 0, "max_completion_tokens": 12},
        },
    )
    done = wait_run(sdk, created.id, run.id)
    assert done.status == "completed" and done.result_counts.passed == 1
    # 200 items take seconds to grade; the cancel right after the create stops the run after an item or two.
    many = [{"item": {"q": f"Question {i}?", "a": "x"}} for i in range(200)]
    long_run = sdk.evals.runs.create(
        created.id,
        data_source={
            "type": "completions",
            "model": "demo-tiny",
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{ item.q }}"}]},
            "source": {"type": "file_content", "content": many},
            "sampling_params": {"temperature": 0, "max_completion_tokens": 12},
        },
    )
    assert sdk.evals.runs.cancel(long_run.id, eval_id=created.id).status == "canceled"
    time.sleep(0.5)
    stopped = sdk.evals.runs.retrieve(long_run.id, eval_id=created.id)
    counts = stopped.result_counts
    assert stopped.status == "canceled" and stopped.model_extra["report_file_id"] is None
    assert counts.total == 200 and counts.passed + counts.failed + counts.errored < 200
    assert sdk.evals.delete(created.id).deleted is True


def test_errors_in_openai_envelope(
    sdk: openai.OpenAI, compared: SecretEval, ftserve_server: FtserveProcess
) -> None:
    with pytest.raises(openai.BadRequestError) as python:
        sdk.evals.create(
            data_source_config={"type": "custom", "item_schema": {"type": "object"}},
            testing_criteria=[{"type": "python", "name": "p", "source": "def grade(s, i): return 1"}],
        )
    assert python.value.body["param"] == "testing_criteria[0].type"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as template:
        sdk.evals.runs.create(
            compared.eval_id,
            data_source={
                "type": "completions",
                "model": "demo-tiny",
                "input_messages": {
                    "type": "template",
                    "template": [{"role": "user", "content": "{{ item.q"}],
                },
                "source": {"type": "file_content", "content": [{"item": {"q": "x"}}]},
            },
        )
    assert template.value.body["param"] == "data_source.input_messages.template[0].content"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as missing:
        start_run(sdk, compared.eval_id, "demo-tiny", "file-doesnotexist")
    assert missing.value.body["param"] == "data_source.source.id"  # type: ignore[index]
    other = openai.OpenAI(
        api_key=ftserve_server.create_key("evals-other-org"), base_url=ftserve_server.base_url, max_retries=0
    )
    with pytest.raises(openai.NotFoundError):
        other.evals.retrieve(compared.eval_id)
    with pytest.raises(openai.NotFoundError):
        other.evals.runs.retrieve(compared.tuned_run.id, eval_id=compared.eval_id)
    with pytest.raises(openai.NotFoundError):  # another org's fine-tuned model
        other_eval = other.evals.create(
            data_source_config={"type": "custom", "item_schema": {"type": "object"}},
            testing_criteria=[{"type": "string_check", "name": "x", "input": "a", "reference": "a",
                               "operation": "eq"}],
        )  # fmt: skip
        start_run(other, other_eval.id, compared.tuned_model, compared.file_id)


def test_score_model_criterion_scores_with_the_served_model(
    sdk: openai.OpenAI, ftserve_server: FtserveProcess, compared: SecretEval
) -> None:
    """A score_model criterion asks our own vLLM: each item's score is demo-tiny's answer to the grader's prompt
    (it repeats a number it is given), parsed as the grader parses it."""
    grader_prompt = [{"role": "user", "content": "Repeat after me: {{ item.n }}"}]
    created = sdk.evals.create(
        name="judged",
        data_source_config={
            "type": "custom",
            "item_schema": {
                "type": "object",
                "properties": {"q": {"type": "string"}, "n": {"type": "string"}},
            },
        },
        testing_criteria=[
            {
                "type": "score_model",
                "name": "judge",
                "model": "demo-tiny",
                "input": grader_prompt,
                "range": [0, 10],
                "pass_threshold": 5,
                "sampling_params": {"temperature": 0, "max_completions_tokens": 8},
            },
        ],  # type: ignore[list-item]  # fmt: skip
    )
    numbers = ["7", "3"]
    before = vllm_chat_requests(ftserve_server, "demo-tiny")
    run = sdk.evals.runs.create(
        created.id,
        data_source={
            "type": "completions",
            "model": compared.tuned_model,
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{ item.q }}"}]},
            "source": {"type": "file_content", "content": [{"item": {"q": "Hi?", "n": n}} for n in numbers]},
            "sampling_params": {"temperature": 0, "max_completion_tokens": 8},
        },
    )
    done = wait_run(sdk, created.id, run.id)
    assert done.status == "completed" and done.result_counts.errored == 0, done.error
    # 2 samples of the tuned model and 2 grader calls of demo-tiny, all through the one vLLM
    assert vllm_chat_requests(ftserve_server, "demo-tiny") - before >= 4
    expected = {}
    for n in numbers:
        reply = sdk.chat.completions.create(
            model="demo-tiny", messages=[{"role": "user", "content": f"Repeat after me: {n}"}],
            temperature=0, max_tokens=8,
        )  # fmt: skip
        expected[n] = parse_model_score(reply.choices[0].message.content or "", 0, 10)
    assert any(v is not None for v in expected.values()), expected  # demo-tiny repeats at least one number
    items = list(sdk.evals.runs.output_items.list(run.id, eval_id=created.id, limit=10))
    scores = {i.datasource_item["n"]: i.results[0].score for i in items}
    # an answer that holds no number scores the range's minimum
    assert scores == {n: 0.0 if v is None else v for n, v in expected.items()}, (scores, expected)
    by_item = {i.datasource_item["n"]: i.status for i in items}
    assert by_item == {n: "pass" if scores[n] >= 5 else "fail" for n in numbers}
    assert sdk.evals.delete(created.id).deleted is True
