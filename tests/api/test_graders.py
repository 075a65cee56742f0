"""Reinforcement graders through the API: /v1/fine_tuning/alpha/graders/run and /validate against hand-computed
scores, the 400s for graders and files that cannot be used, and reinforcement job requests."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.model_registry import register_model
from core.settings import Settings


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _check(op: str, reference: str = "{{ item.answer }}") -> dict[str, Any]:
    return {
        "type": "string_check",
        "name": "exact",
        "input": "{{ sample.output_text }}",
        "reference": reference,
        "operation": op,
    }


def _similarity(metric: str) -> dict[str, Any]:
    return {
        "type": "text_similarity",
        "name": "sim",
        "input": "{{ sample.output_text }}",
        "reference": "{{ item.answer }}",
        "evaluation_metric": metric,
    }


# (grader, item, sample, reward), each reward worked out by hand
CASES: list[tuple[str, dict[str, Any], dict[str, Any], str, float]] = [
    ("eq-hit", _check("eq"), {"answer": "Paris"}, "Paris", 1.0),
    ("eq-case", _check("eq"), {"answer": "Paris"}, "paris", 0.0),
    ("ne-hit", _check("ne"), {"answer": "Paris"}, "Lyon", 1.0),
    ("ne-miss", _check("ne"), {"answer": "Paris"}, "Paris", 0.0),
    ("like-contains", _check("like"), {"answer": "Paris"}, "It is Paris.", 1.0),
    ("like-case", _check("like"), {"answer": "Paris"}, "it is paris.", 0.0),
    ("ilike-case", _check("ilike"), {"answer": "Paris"}, "IT IS PARIS.", 1.0),
    ("ilike-miss", _check("ilike"), {"answer": "Paris"}, "Lyon", 0.0),
    ("literal-reference", _check("eq", "yes"), {}, "yes", 1.0),
    ("nested-item", _check("eq", "{{ item.meta.city }}"), {"meta": {"city": "Oslo"}}, "Oslo", 1.0),
    # rapidfuzz WRatio after lower-casing and stripping punctuation: identical -> 100
    ("fuzzy-same", _similarity("fuzzy_match"), {"answer": "Hello World!"}, "hello world", 1.0),
    # "abcd" vs "abce": ratio = 2*3/8 = 75 (WRatio of equal-length strings is the plain ratio)
    ("fuzzy-one-off", _similarity("fuzzy_match"), {"answer": "abcd"}, "abce", 0.75),
    ("bleu-same", _similarity("bleu"), {"answer": "the cat sat on the mat"}, "the cat sat on the mat", 1.0),
    # no unigram in common: every precision 0 -> BLEU 0
    ("bleu-disjoint", _similarity("bleu"), {"answer": "the cat sat"}, "dogs run fast", 0.0),
    # precisions 2/4, 1/3, then 0/2 and 0/1, which sacrebleu's default "exp" smoothing makes 1/(2*2) and
    # 1/(4*1); equal lengths, no brevity penalty: (1/2 * 1/3 * 1/4 * 1/4) ** (1/4)
    ("bleu-partial", _similarity("bleu"), {"answer": "a b c d"}, "a b x y", (1 / 96) ** 0.25),
]

# ROUGE F-measure = 2PR / (P + R), P = matches / n-grams of the sample, R = matches / n-grams of the reference,
# over lower-cased words and digits (punctuation splits words), no stemming
ROUGE: list[tuple[str, str, str, str, float]] = [
    # "the cat sat on the mat" / "the cat lay on a mat": unigram matches the cat on mat = 4 (the sample's
    # second "the" is clipped to the reference's one); P = R = 4/6
    ("rouge_1", "the cat sat on the mat", "the cat lay on a mat", "unigrams", 2 / 3),
    # bigrams: the sample's (the cat, cat sat, sat on, on the, the mat) share only "the cat" with the
    # reference's 5: P = R = 1/5
    ("rouge_2", "the cat sat on the mat", "the cat lay on a mat", "bigrams", 1 / 5),
    # longest common subsequence: the cat on mat = 4 of 6 words each side
    ("rouge_l", "the cat sat on the mat", "the cat lay on a mat", "lcs", 2 / 3),
    # "b a c" / "a b c": every unigram matches (1.0), but the longest in-order run is 2 (a c, or b c): 2/3
    ("rouge_1", "b a c", "a b c", "unigram-order-free", 1.0),
    ("rouge_l", "b a c", "a b c", "lcs-order", 2 / 3),
    # P = 2/2, R = 2/6: F = 2 * 1 * 1/3 / (1 + 1/3) = 1/2
    ("rouge_1", "the cat", "the cat sat on the mat", "short-sample", 0.5),
    # case and punctuation are normalised away: the same 2 words
    ("rouge_1", "Hello, World!", "hello world", "normalised", 1.0),
    ("rouge_3", "a b c", "a b c", "trigram-same", 1.0),
    # 3 words hold no 4-gram
    ("rouge_4", "a b c", "a b c", "too-short", 0.0),
    # 5-grams: (a b c d e, b c d e f) and (a b c d e, b c d e g) share 1 of 2: P = R = 1/2
    ("rouge_5", "a b c d e f", "a b c d e g", "five-grams", 0.5),
    ("rouge_l", "dogs run fast", "the cat sat", "disjoint", 0.0),
    ("rouge_1", "", "the cat", "empty-sample", 0.0),
]

MULTI = {
    "type": "multi",
    "name": "combo",
    "graders": {
        "exact": _check("eq"),
        "close": _similarity("fuzzy_match"),
    },
    "calculate_output": "0.7 * exact + 0.3 * close",
}


def test_run_matches_hand_computed_scores(client: TestClient, org_a_key: str) -> None:
    # one app for the whole table: each case is a request, not a test (setting the app up is the cost)
    for case, grader, item, sample, reward in CASES:
        resp = client.post(
            "/v1/fine_tuning/alpha/graders/run",
            headers=_auth(org_a_key),
            json={"grader": grader, "item": item, "model_sample": sample},
        )
        assert resp.status_code == 200, (case, resp.text)
        body = resp.json()
        assert body["reward"] == pytest.approx(reward, abs=1e-4), case
        assert body["metadata"]["type"] == grader["type"], case
        assert body["metadata"]["errors"]["formula_parse_error"] is False, case


def test_rouge_metrics_match_hand_computed_f_measures(client: TestClient, org_a_key: str) -> None:
    for metric, sample, answer, case, reward in ROUGE:
        resp = client.post(
            "/v1/fine_tuning/alpha/graders/run",
            headers=_auth(org_a_key),
            json={"grader": _similarity(metric), "item": {"answer": answer}, "model_sample": sample},
        )
        assert resp.status_code == 200, (case, resp.text)
        assert resp.json()["reward"] == pytest.approx(reward, abs=1e-4), (metric, case)


def test_rouge_without_torchmetrics_is_a_400_everywhere(
    client: TestClient, org_a_key: str, base_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API-only install (no torch, so no torchmetrics): validate, run and job create refuse ROUGE graders
    with a 400 that says what to install; the other metrics still work."""
    file_id = _upload(client, org_a_key, _prompts(12))["id"]
    for module in ("torchmetrics", "torchmetrics.functional.text.rouge"):
        monkeypatch.setitem(sys.modules, module, None)  # `import` raises ImportError, find_spec ValueError
    grader = _similarity("rouge_l")
    for path, body in (
        ("/v1/fine_tuning/alpha/graders/validate", {"grader": grader}),
        (
            "/v1/fine_tuning/alpha/graders/run",
            {"grader": grader, "item": {"answer": "a"}, "model_sample": "a"},
        ),
    ):
        resp = client.post(path, headers=_auth(org_a_key), json=body)
        assert resp.status_code == 400, (path, resp.text)
        error = resp.json()["error"]
        assert error["param"] == "grader.evaluation_metric" and error["code"] == "unsupported_grader"
        assert "torchmetrics" in error["message"] and "training extras" in error["message"]
    resp = _rl_job(client, org_a_key, base_model, file_id, grader=grader)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == "method.reinforcement.grader.evaluation_metric"
    assert "training extras" in error["message"]
    # scoring itself, should the library go missing after the check
    from core.graders import GraderError, rouge

    with pytest.raises(GraderError, match="training extras"):
        rouge("a", "a", "rouge_1")
    resp = client.post(
        "/v1/fine_tuning/alpha/graders/run",
        headers=_auth(org_a_key),
        json={"grader": _similarity("bleu"), "item": {"answer": "a b"}, "model_sample": "a b"},
    )
    assert resp.status_code == 200 and resp.json()["reward"] == pytest.approx(1.0)


def test_multi_combines_its_graders_by_the_formula(client: TestClient, org_a_key: str) -> None:
    resp = client.post(
        "/v1/fine_tuning/alpha/graders/run",
        headers=_auth(org_a_key),
        json={"grader": MULTI, "item": {"answer": "abcd"}, "model_sample": "abce"},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["sub_rewards"] == pytest.approx({"exact": 0.0, "close": 0.75})
    assert body["reward"] == pytest.approx(0.7 * 0 + 0.3 * 0.75)
    # powers (OpenAI's ^), functions and division by zero (a 0 score, not an error)
    for formula, expected in (("max(exact, close) ^ 2", 0.5625), ("close / exact", 0.0), ("-exact + 1", 1.0)):
        resp = client.post(
            "/v1/fine_tuning/alpha/graders/run",
            headers=_auth(org_a_key),
            json={
                "grader": {**MULTI, "calculate_output": formula},
                "item": {"answer": "abcd"},
                "model_sample": "abce",
            },
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["reward"] == pytest.approx(expected), formula


BAD: list[tuple[str, dict[str, Any], dict[str, Any], str, str]] = [
    ("python", {"type": "python", "source": "def grade(s, i): return 1"}, {}, "grader.type", "never runs user code"),
    ("unknown-op", _check("contains"), {"answer": "x"}, "grader.operation", "eq, ne, like, ilike"),
    ("bad-template", _check("eq", "{{ item.answer "), {"answer": "x"}, "grader.reference", "Unbalanced"),
    ("bad-namespace", _check("eq", "{{ answer }}"), {"answer": "x"}, "grader.reference", "Unknown template"),
    ("missing-item-field", _check("eq", "{{ item.gold }}"), {"answer": "x"}, "item.gold", "no field 'gold'"),
    ("cosine", _similarity("cosine"), {"answer": "x"}, "grader.evaluation_metric", "not supported here"),
    ("formula-call", {**MULTI, "calculate_output": "__import__('os')"}, {"answer": "x"},
     "grader.calculate_output", "may be called"),
    ("formula-name", {**MULTI, "calculate_output": "exact + nope"}, {"answer": "x"},
     "grader.calculate_output", "'nope'"),
    ("formula-attr", {**MULTI, "calculate_output": "exact.real"}, {"answer": "x"},
     "grader.calculate_output", "not allowed"),
]  # fmt: skip


def test_bad_graders_are_400s_naming_the_field(client: TestClient, org_a_key: str) -> None:
    for case, grader, item, param, says in BAD:
        resp = client.post(
            "/v1/fine_tuning/alpha/graders/run",
            headers=_auth(org_a_key),
            json={"grader": grader, "item": item, "model_sample": "x"},
        )
        assert resp.status_code == 400, (case, resp.text)
        error = resp.json()["error"]
        assert error["param"] == param, (case, error)
        assert says in error["message"], (case, error)
        if param.startswith("grader"):  # validate refuses it the same way
            resp = client.post(
                "/v1/fine_tuning/alpha/graders/validate", headers=_auth(org_a_key), json={"grader": grader}
            )
            assert resp.status_code == 400 and resp.json()["error"]["param"] == param, case
    resp = client.post(
        "/v1/fine_tuning/alpha/graders/validate", headers=_auth(org_a_key), json={"grader": MULTI}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"grader": MULTI}


# -- reinforcement jobs -----------------------------------------------------------------------------------------


def _prompts(n: int, *, with_answer: bool = True) -> bytes:
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"messages": [{"role": "user", "content": f"Say {i}"}]}
        if with_answer or i < n - 1:  # without: the last line lacks the field
            row["answer"] = str(i)
        rows.append(row)
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _upload(client: TestClient, key: str, data: bytes) -> dict[str, Any]:
    resp = client.post(
        "/v1/files", headers=_auth(key), data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", data)}
    )
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


@pytest.fixture
def base_model(settings: Settings, tmp_path: Path) -> str:
    register_model(settings, "demo-tiny", tmp_path / "demo-tiny")
    return "demo-tiny"


def _rl_job(client: TestClient, key: str, model: str, file_id: str, **section: Any) -> Any:
    body = {
        "model": model,
        "training_file": file_id,
        "method": {"type": "reinforcement", "reinforcement": {"grader": _check("eq"), **section}},
    }
    return client.post("/v1/fine_tuning/jobs", headers=_auth(key), json=body)


def test_reinforcement_job_is_created_with_its_grader(
    client: TestClient, org_a_key: str, base_model: str
) -> None:
    file = _upload(client, org_a_key, _prompts(12))
    assert file["data_format"] == "reinforcement"
    hp = {"n_epochs": 2, "num_generations": 4, "reasoning_effort": "low", "compute_multiplier": 2}
    resp = _rl_job(client, org_a_key, base_model, file["id"], hyperparameters=hp)
    assert resp.status_code == 200, resp.text
    method = resp.json()["method"]
    assert method["type"] == "reinforcement"
    assert method["reinforcement"]["grader"] == _check("eq")
    assert method["reinforcement"]["hyperparameters"]["reasoning_effort"] == "low"
    assert "grader" not in method["reinforcement"]["hyperparameters"]


def test_reinforcement_job_400s(client: TestClient, org_a_key: str, base_model: str) -> None:
    good = _upload(client, org_a_key, _prompts(12))["id"]
    lacking = _upload(client, org_a_key, _prompts(12, with_answer=False))["id"]
    resp = _rl_job(client, org_a_key, base_model, lacking)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert (
        error["param"] == "training_file" and "line 12" in error["message"] and "'answer'" in error["message"]
    )

    body = {
        "model": base_model,
        "training_file": good,
        "method": {"type": "reinforcement", "reinforcement": {}},
    }
    resp = client.post("/v1/fine_tuning/jobs", headers=_auth(org_a_key), json=body)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "method.reinforcement.grader"

    resp = _rl_job(client, org_a_key, base_model, good, grader={"type": "python", "source": "x"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "method.reinforcement.grader.type"

    resp = _rl_job(client, org_a_key, base_model, good, hyperparameters={"num_generations": 1})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "method.reinforcement.hyperparameters.num_generations"

    resp = _rl_job(client, org_a_key, base_model, good, hyperparameters={"reasoning_effort": "extreme"})
    assert resp.status_code == 400

    # a score_model grader calls a base model this server serves; any other is refused before queueing
    judge = {
        "type": "score_model", "name": "judge", "model": "gpt-4o", "range": [0, 1],
        "input": [{"role": "user", "content": "Rate: {{ sample.output_text }}"}],
    }  # fmt: skip
    resp = _rl_job(client, org_a_key, base_model, good, grader=judge)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["param"], error["code"]) == ("method.reinforcement.grader.model", "model_not_found")
    assert "'gpt-4o'" in error["message"] and "demo-tiny" in error["message"]
    multi = {
        "type": "multi", "name": "both", "calculate_output": "0.5 * exact + 0.5 * judge",
        "graders": {"exact": _check("eq"), "judge": judge},
    }  # fmt: skip
    resp = _rl_job(client, org_a_key, base_model, good, grader=multi)
    assert (
        resp.status_code == 400
        and resp.json()["error"]["param"] == "method.reinforcement.grader.graders.judge.model"
    )
    resp = _rl_job(client, org_a_key, base_model, good, grader={**judge, "model": base_model})
    assert resp.status_code == 200, resp.text

    chat = _upload(client, org_a_key, _chat_file(12))["id"]
    resp = _rl_job(client, org_a_key, base_model, chat)
    assert resp.status_code == 400 and "reinforcement job needs prompts" in resp.json()["error"]["message"]
    resp = client.post(
        "/v1/fine_tuning/jobs",
        headers=_auth(org_a_key),
        json={"model": base_model, "training_file": good},
    )
    assert resp.status_code == 400 and "prompts without answers" in resp.json()["error"]["message"]


def _chat_file(n: int) -> bytes:
    rows = [
        {"messages": [{"role": "user", "content": f"Say {i}"}, {"role": "assistant", "content": str(i)}]}
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_the_openai_sdk_runs_and_validates_graders(client: TestClient, org_a_key: str) -> None:
    import openai

    sdk = openai.OpenAI(api_key=org_a_key, base_url="http://testserver/v1", http_client=client, max_retries=0)
    result = sdk.fine_tuning.alpha.graders.run(grader=MULTI, model_sample="abce", item={"answer": "abcd"})  # type: ignore[arg-type]
    assert result.reward == pytest.approx(0.225)
    assert result.sub_rewards == pytest.approx({"exact": 0.0, "close": 0.75})
    assert result.metadata.type == "multi" and result.metadata.errors.formula_parse_error is False
    assert sdk.fine_tuning.alpha.graders.validate(grader=MULTI).grader is not None  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.fine_tuning.alpha.graders.validate(grader={"type": "python", "source": "x"})  # type: ignore[arg-type]
    assert caught.value.param == "grader.type"  # type: ignore[attr-defined]
