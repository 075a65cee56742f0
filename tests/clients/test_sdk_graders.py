"""The SDK's `fine_tuning.alpha.graders` (OpenAI's) and its typed graders against the session's real `ftserve up`:
validate and run only, no training. And a reinforcement job's method parses into the typed classes."""

from __future__ import annotations

import json

import pytest

from ftserve_client import AsyncClient, BadRequestError, Client
from ftserve_client.types import (
    GraderRunResponse,
    MultiGrader,
    ReinforcementHyperparameters,
    ReinforcementMethod,
    ScoreModelGrader,
    ScoreModelGraderInput,
    StringCheckGrader,
    TextSimilarityGrader,
)
from tests.support.ftserve_process import FtserveProcess

pytestmark = pytest.mark.slow

EXACT = StringCheckGrader(
    name="exact", input="{{ sample.output_text }}", reference="{{ item.answer }}", operation="eq"
)
CONTAINS = StringCheckGrader(
    name="contains", input="{{ sample.output_text }}", reference="{{ item.answer }}", operation="ilike"
)
COMBINED = MultiGrader(
    name="combined", graders={"exact": EXACT, "contains": CONTAINS}, calculate_output="0.5 * exact + contains"
)
# validated only: scoring ROUGE would import torch into the shared server's API process (tests/api scores it)
OVERLAP = TextSimilarityGrader(
    name="overlap",
    input="{{ sample.output_text }}",
    reference="{{ item.answer }}",
    evaluation_metric="rouge_l",
)


@pytest.fixture(scope="module")
def key(ftserve_server: FtserveProcess) -> str:
    return ftserve_server.create_key("sdk-graders")


@pytest.fixture(scope="module")
def client(ftserve_server: FtserveProcess, key: str) -> Client:
    return Client(api_key=key, base_url=ftserve_server.base_url)


def test_run_and_validate_typed_graders(client: Client) -> None:
    # "The cat sat" is not "cat" (exact 0) but holds it, ignoring case (contains 1): 0.5 * 0 + 1
    result = client.fine_tuning.alpha.graders.run(
        grader=COMBINED, model_sample="The cat sat", item={"answer": "cat"}
    )
    assert isinstance(result, GraderRunResponse)
    assert result.reward == 1.0 and result.sub_rewards == {"exact": 0.0, "contains": 1.0}
    assert result.metadata.type == "multi" and result.metadata.name == "combined"
    assert result.metadata.errors.formula_parse_error is False and result.metadata.execution_time >= 0

    nested = MultiGrader(graders={"both": COMBINED, "overlap": OVERLAP}, calculate_output="both * overlap")
    validated = client.fine_tuning.alpha.graders.validate(grader=nested)
    assert isinstance(validated.grader, MultiGrader) and validated.grader == nested
    assert isinstance(validated.grader.graders["overlap"], TextSimilarityGrader)
    judge = ScoreModelGrader(
        name="judge", model="demo-tiny", range=[0, 10],
        input=[ScoreModelGraderInput(role="user", content="Rate: {{ sample.output_text }}")],
    )  # fmt: skip
    assert isinstance(client.fine_tuning.alpha.graders.validate(grader=judge).grader, ScoreModelGrader)
    # plain dicts work too, as with openai-python
    plain = client.fine_tuning.alpha.graders.run(
        grader=EXACT.model_dump(exclude_none=True), model_sample="Paris", item={"answer": "Paris"}
    )
    assert plain.reward == 1.0


def test_bad_graders_raise_bad_request_naming_the_field(client: Client) -> None:
    with pytest.raises(BadRequestError) as caught:
        client.fine_tuning.alpha.graders.validate(grader={"type": "python", "name": "p", "source": "x"})
    assert caught.value.param == "grader.type" and caught.value.code == "unsupported_grader"
    with pytest.raises(BadRequestError) as caught:
        client.fine_tuning.alpha.graders.run(grader=EXACT, model_sample="x", item={"wrong": "field"})
    assert caught.value.param == "item.answer"


async def test_async_graders(ftserve_server: FtserveProcess, key: str) -> None:
    async with AsyncClient(api_key=key, base_url=ftserve_server.base_url) as aclient:
        result = await aclient.fine_tuning.alpha.graders.run(
            grader=CONTAINS, model_sample="A CAT", item={"answer": "cat"}
        )
        assert result.reward == 1.0
        assert (await aclient.fine_tuning.alpha.graders.validate(grader=EXACT)).grader == EXACT


def test_a_reinforcement_job_takes_and_shows_the_typed_method(client: Client) -> None:
    rows = [{"messages": [{"role": "user", "content": f"Say {i}"}], "answer": str(i)} for i in range(12)]
    training_file = client.files.create(
        file=("prompts.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    )
    method = ReinforcementMethod(
        grader=COMBINED,
        hyperparameters=ReinforcementHyperparameters(num_generations=4, reasoning_effort="low"),
    )
    job = client.fine_tuning.jobs.create(
        model="demo-tiny",
        training_file=training_file.id,
        method={"type": "reinforcement", "reinforcement": method},
    )
    try:
        assert job.method is not None and job.method.reinforcement is not None
        assert job.method.reinforcement.grader == COMBINED
        hp = job.method.reinforcement.hyperparameters
        assert hp is not None and hp.num_generations == 4 and hp.reasoning_effort == "low"
    finally:
        client.fine_tuning.jobs.cancel(job.id)
