"""core.evals without a model: prompts from templates and chat items, pass/fail per criterion, the counts, the
report's lines, and the lease that lets a run whose API process died be taken up again."""

from __future__ import annotations

import json

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from core import evals, graders
from core.models import EvalOutputItem, EvalRun

CRITERIA = evals.check_testing_criteria(
    [
        {"type": "string_check", "name": "exact", "input": "{{ sample.output_text }}",
         "reference": "{{ item.answer }}", "operation": "eq"},
        {"type": "text_similarity", "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}",
         "evaluation_metric": "fuzzy_match", "pass_threshold": 0.5},
    ]
)  # fmt: skip


def test_criteria_get_names_and_thresholds() -> None:
    assert [c["name"] for c in CRITERIA] == ["exact", "text_similarity-1"]
    assert [evals.pass_threshold(c) for c in CRITERIA] == [1.0, 0.5]
    scored = {"type": "score_model", "name": "judge", "model": "m", "input": [{"role": "user", "content": "x"}],
              "range": [0, 10]}  # fmt: skip
    assert evals.pass_threshold(scored) == 5.0


def test_prompts_from_a_template_and_from_a_chat_line() -> None:
    template = {"type": "template", "template": [{"role": "system", "content": {"type": "input_text", "text": "Be brief."}},
                                                 {"role": "user", "content": "Q: {{ item.q }}"}]}  # fmt: skip
    source = {"input_messages": template}
    assert evals.build_messages(source, {"q": "why?"}) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q: why?"},
    ]
    with pytest.raises(graders.GraderError) as missing:
        evals.build_messages(source, {})
    assert missing.value.param == "item.q"
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "answer"}]}
    reference = {"input_messages": {"type": "item_reference", "item_reference": "item.messages"}}
    assert evals.build_messages(reference, chat) == [
        {"role": "user", "content": "hi"}
    ]  # the answer is not sent


def test_grading_counts_and_the_report() -> None:
    run = EvalRun(id="evalrun_1", eval_id="eval_1", organization_id="org", name="r", model="m",
                  result_counts={"total": 3})  # fmt: skip
    rows = []
    for i, (answer, output) in enumerate([("Paris", "Paris"), ("Paris", "Lyon"), ("Oslo", "")]):
        results = evals.grade(CRITERIA, {"answer": answer}, output, model_call=None)
        rows.append(EvalOutputItem(id=f"o{i}", run_id=run.id, eval_id="eval_1", datasource_item_id=i,
                                   datasource_item={"answer": answer}, status=evals.item_status(results),
                                   results=results, sample={"output": [{"role": "assistant", "content": output}]}))  # fmt: skip
    broken = evals.grade(CRITERIA, {}, "x", model_call=None)  # the item lacks `answer`
    assert evals.item_status(broken) == evals.ERROR and "answer" in broken[0]["error"]
    assert [r.status for r in rows] == ["pass", "fail", "fail"]
    counts, per = evals.summarize(CRITERIA, rows, 3)
    assert counts == {"total": 3, "errored": 0, "failed": 2, "passed": 1}
    assert per[0] == {"testing_criteria": "exact", "passed": 1, "failed": 2, "mean_score": round(1 / 3, 6)}
    lines = [json.loads(line) for line in evals.report_jsonl(eval_name="e", eval_id="eval_1", run=run,
                                                             criteria=CRITERIA, items=rows).splitlines()]  # fmt: skip
    assert lines[0]["type"] == "summary" and lines[0]["pass_rate"] == round(1 / 3, 6)
    assert [line["output"] for line in lines[1:]] == ["Paris", "Lyon", ""]
    assert lines[1]["scores"]["exact"] == 1.0 and lines[2]["passed"] is False


def test_a_dead_runners_run_is_taken_up_again(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(
            EvalRun(id="evalrun_1", eval_id="e", organization_id="o", model="m", status=evals.IN_PROGRESS)
        )
        session.commit()
        assert evals.claimable(session) == ["evalrun_1"]
        assert evals.claim(session, "evalrun_1", runner_id="a", lease_ttl_s=60, now=1000.0)
        assert not evals.claim(session, "evalrun_1", runner_id="b", lease_ttl_s=60, now=1030.0)  # held
        assert evals.claimable(session, now=1030.0) == []
        assert evals.claim(
            session, "evalrun_1", runner_id="b", lease_ttl_s=60, now=1061.0
        )  # a's lease expired
        assert not evals.transition(session, "evalrun_1", holder="a", status=evals.COMPLETED)  # a lost it
        assert evals.transition(session, "evalrun_1", holder="b", status=evals.CANCELED)
        session.commit()
        assert evals.claimable(session, now=10_000.0) == []  # finished runs are never taken up
