"""Reinforcement fine-tuning (GRPO with a grader as the reward) on demo-tiny on the CPU: the mean reward rises
(the task: tests/support/rl_task.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from gpu_worker.reporting import RecordingReporter
from gpu_worker.train import run_training
from tests.support.code_task import write_jsonl
from tests.support.rl_task import GRADER, count_prompts


def test_reinforcement_raises_the_mean_reward(tmp_path: Path, demo_model_dir: Path, demo_params: int) -> None:
    from core.hyperparameters import ReinforcementHyperparameters, resolve_hyperparameters
    from gpu_worker.config import TrainJobConfig

    rows = count_prompts(16, seed=0)
    hp = ReinforcementHyperparameters(
        batch_size=4, n_epochs=4, num_generations=8, max_completion_tokens=4, learning_rate=5e-3
    )
    resolved = resolve_hyperparameters(
        "reinforcement", hp, n_examples=len(rows), base_model_params=demo_params, base_model_max_length=1024
    )
    config = TrainJobConfig(
        job_id="ftjob-rl", method="reinforcement", base_model_path=demo_model_dir,
        training_file=write_jsonl(tmp_path / "train.jsonl", rows), data_format="reinforcement",
        output_dir=tmp_path / "out", hyperparameters=resolved, seed=0, grader=GRADER,
    )  # fmt: skip
    reporter = RecordingReporter()
    result = run_training(config, reporter)
    assert result.stopped is None and result.adapter_dir is not None
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    rewards = [row["train_reward_mean"] for row in result.metrics_history]
    assert all("train_reward_std" in row for row in result.metrics_history)
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    print(f"\nmean reward: first 3 steps {first:.3f}, last 3 steps {last:.3f} ({len(rewards)} steps)")
    assert last > first + 0.25
    assert result.trained_tokens > 0  # the sampled answers' tokens


def test_the_grader_reward_scores_each_sample_and_logs_each_sub_grader() -> None:
    from core.graders import check_grader
    from gpu_worker.rl import GraderReward, reward_metrics

    grader = check_grader(
        {
            "type": "multi",
            "name": "both",
            "graders": {
                "exact": GRADER,
                "judge": {
                    "type": "score_model",
                    "model": "demo-tiny",
                    "input": [{"role": "user", "content": "Rate {{ sample.output_text }}"}],
                    "range": [0, 10],
                },
            },
            "calculate_output": "0.5 * exact + 0.05 * judge",
        }
    )
    calls: list[str] = []

    def judge(model: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> str:
        calls.append(messages[0]["content"])
        return '{"result": 8}'

    reward = GraderReward(grader, judge)
    logged: dict[str, float] = {}
    item = '{"target": "3", "messages": []}'
    rewards = reward(
        prompts=[[], []], completions=[[{"role": "assistant", "content": "3"}], [{"role": "assistant", "content": "4"}]],
        completion_ids=[[1, 2], [3]], item=[item, item], log_metric=logged.__setitem__,
    )  # fmt: skip
    assert rewards == pytest.approx([0.5 + 0.4, 0.4])
    assert calls == ["Rate 3", "Rate 4"]
    assert reward.completion_tokens == 3
    assert logged["subgrader/exact/mean"] == 0.5 and logged["subgrader/judge/mean"] == 8.0
    logs = {"reward": 0.65, "reward_std": 0.35, **logged}
    assert reward_metrics(logs, reward) == {
        "train_reward_mean": 0.65,
        "train_reward_std": 0.35,
        "train_reward_exact_mean": 0.5,
        "train_reward_exact_std": pytest.approx(0.7071, abs=1e-4),
        "train_reward_judge_mean": 8.0,
        "train_reward_judge_std": 0.0,
    }


def test_a_multi_grader_reports_each_sub_grader_and_the_validation_reward(
    tmp_path: Path, demo_model_dir: Path, demo_params: int
) -> None:
    from core.hyperparameters import ReinforcementHyperparameters, resolve_hyperparameters
    from gpu_worker.config import TrainJobConfig

    similar = {
        "type": "text_similarity",
        "input": "{{ sample.output_text }}",
        "reference": "{{ item.target }}",
        "evaluation_metric": "fuzzy_match",
    }
    multi = {
        "type": "multi",
        "graders": {"exact": GRADER, "sim": similar},
        "calculate_output": "0.5*exact + 0.5*sim",
    }
    hp = ReinforcementHyperparameters(
        batch_size=4, n_epochs=2, num_generations=4, max_completion_tokens=4, learning_rate=5e-3,
        eval_interval=2, eval_samples=2,
    )  # fmt: skip
    resolved = resolve_hyperparameters(
        "reinforcement", hp, n_examples=8, base_model_params=demo_params, base_model_max_length=1024,
        has_validation_file=True,
    )  # fmt: skip
    config = TrainJobConfig(
        job_id="ftjob-rl-multi", method="reinforcement", base_model_path=demo_model_dir,
        training_file=write_jsonl(tmp_path / "train.jsonl", count_prompts(8, seed=0)),
        validation_file=write_jsonl(tmp_path / "valid.jsonl", count_prompts(4, seed=5)),
        data_format="reinforcement", output_dir=tmp_path / "out", hyperparameters=resolved, seed=0, grader=multi,
    )  # fmt: skip
    result = run_training(config, RecordingReporter())
    assert result.stopped is None and len(result.metrics_history) == 4
    for row in result.metrics_history:
        assert {"train_reward_mean", "train_reward_exact_mean", "train_reward_sim_std"} <= set(row)
    assert [r["step"] for r in result.metrics_history if "valid_reward_mean" in r] == [2, 4]  # eval_interval
    assert {"full_valid_reward_mean", "full_valid_reward_exact_mean"} <= set(result.metrics)
    # trained tokens count the training samples only: at most 4 prompts x 4 samples x 4 tokens a step
    assert 0 < result.trained_tokens <= 4 * 4 * 4 * 4


def test_a_score_model_grader_no_replica_serves_fails_before_training() -> None:
    from core.graders import check_grader
    from gpu_worker.job_runner import is_infrastructure_error
    from gpu_worker.rl import GraderModelUnavailable, GraderReward, model_call

    judge = check_grader(
        {
            "type": "multi",
            "graders": {
                "exact": GRADER,
                "judge": {
                    "type": "score_model",
                    "model": "unserved",
                    "input": [{"role": "user", "content": "x"}],
                },
            },
            "calculate_output": "exact + judge",
        }
    )
    with pytest.raises(GraderModelUnavailable, match="serves 'unserved'") as caught:
        GraderReward(judge, model_call({"demo-tiny": ("http://127.0.0.1:9", None)}))
    assert caught.value.code == "grader_model_unavailable" and not is_infrastructure_error(caught.value)


def test_the_grader_call_retries_a_failing_replica_then_fails_the_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replica that answers 5xx, or none at all, fails the job with grader_model_unavailable after the
    retries: never a 0 reward, and never read as a database outage (the job runner would hand the job back)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from core.redis_embedded import free_port
    from gpu_worker import rl
    from gpu_worker.job_runner import is_infrastructure_error
    from tests.support.http_server import serve

    monkeypatch.setattr(rl, "GRADER_RETRY_DELAY_S", 0.0)
    seen: list[dict[str, Any]] = []
    failures = {"left": 2}  # the first two requests fail: a replica restarting

    async def chat(request: Request) -> JSONResponse:
        seen.append(await request.json())
        if failures["left"]:
            failures["left"] -= 1
            return JSONResponse({"error": "starting"}, status_code=503)
        return JSONResponse({"choices": [{"message": {"role": "assistant", "content": "7"}}]})

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    with serve(app) as url:
        call = rl.model_call({"demo-tiny": (url, None)})
        sampling = {"max_completions_tokens": 3, "seed": 1}
        assert call("demo-tiny", [{"role": "user", "content": "x"}], sampling) == "7"
        assert len(seen) == 3 and seen[-1]["temperature"] == 0.0 and seen[-1]["seed"] == 1
        failures["left"] = 10
        with pytest.raises(rl.GraderModelUnavailable, match="did not answer.*HTTP 503"):
            call("demo-tiny", [{"role": "user", "content": "x"}], {})
        assert len(seen) == 3 + 1 + rl.GRADER_RETRIES
    closed = rl.model_call({"demo-tiny": (f"http://127.0.0.1:{free_port()}", None)})
    with pytest.raises(rl.GraderModelUnavailable, match="ConnectError") as caught:
        closed("demo-tiny", [{"role": "user", "content": "x"}], {})
    assert not is_infrastructure_error(caught.value)
