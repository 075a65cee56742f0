"""KTO, ORPO and SimPO train on demo-tiny on the CPU and their losses fall; DPO's loss variants train too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from gpu_worker.reporting import RecordingReporter
from gpu_worker.train import TrainResult, run_training
from tests.support.code_task import code_task, kto_rows, preference_rows, write_jsonl


def train(
    tmp_path: Path, model_dir: Path, params: int, rows: list[dict[str, Any]], method: str, fmt: str,
    hp: dict[str, Any], validation_rows: list[dict[str, Any]] | None = None,
) -> TrainResult:  # fmt: skip
    from core.hyperparameters import hyperparameters_model, resolve_hyperparameters
    from gpu_worker.config import TrainJobConfig

    resolved = resolve_hyperparameters(
        method, hyperparameters_model(method)(**hp), n_examples=len(rows), base_model_params=params,
        base_model_max_length=1024, has_validation_file=validation_rows is not None,
    )  # fmt: skip
    config = TrainJobConfig(
        job_id=f"ftjob-{method}",
        method=method,  # type: ignore[arg-type]
        base_model_path=model_dir,
        training_file=write_jsonl(tmp_path / "train.jsonl", rows),
        validation_file=write_jsonl(tmp_path / "valid.jsonl", validation_rows) if validation_rows else None,
        data_format=fmt,  # type: ignore[arg-type]
        output_dir=tmp_path / "out",
        hyperparameters=resolved,
        seed=0,
    )
    result = run_training(config, RecordingReporter())
    assert result.stopped is None and result.adapter_dir is not None
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert result.trained_tokens > 0
    return result


def first_last(result: TrainResult) -> tuple[float, float]:
    return result.metrics_history[0]["train_loss"], result.metrics_history[-1]["train_loss"]


@pytest.mark.slow
def test_kto_loss_falls(tmp_path: Path, demo_model_dir: Path, demo_params: int) -> None:
    result = train(
        tmp_path, demo_model_dir, demo_params, kto_rows(code_task(12, seed=7)), "kto", "kto",
        {"batch_size": 8, "n_epochs": 6},
    )  # fmt: skip
    first, last = first_last(result)
    print(f"\nKTO loss: first {first:.4f}, last {last:.4f}")
    assert first == pytest.approx(0.5, abs=0.02)  # 1 - sigmoid(0): policy == reference at step 1
    assert last < first - 0.1
    assert "train_kl" in result.metrics_history[-1]


@pytest.mark.slow
def test_orpo_loss_falls(tmp_path: Path, demo_model_dir: Path, demo_params: int) -> None:
    pairs = code_task(28, seed=7)
    result = train(
        tmp_path, demo_model_dir, demo_params, preference_rows(pairs[:24]), "orpo", "preference",
        {"batch_size": 8, "n_epochs": 6, "eval_every_steps": 9}, validation_rows=preference_rows(pairs[24:]),
    )  # fmt: skip
    first, last = first_last(result)
    print(f"\nORPO loss: first {first:.4f}, last {last:.4f}")
    assert last < first * 0.7  # the SFT loss on the chosen answers, plus beta x the odds-ratio loss
    assert result.metrics_history[-1]["train_reward_accuracy"] > 0.5
    # the validation file (the trainer tokenises ORPO rows itself) is evaluated during and after training
    assert any("valid_loss" in row for row in result.metrics_history)
    assert result.metrics["full_valid_loss"] < first


@pytest.mark.slow
def test_simpo_loss_falls(tmp_path: Path, demo_model_dir: Path, demo_params: int) -> None:
    result = train(
        tmp_path, demo_model_dir, demo_params, preference_rows(code_task(24, seed=7)), "simpo", "preference",
        {"batch_size": 8, "n_epochs": 6},
    )  # fmt: skip
    first, last = first_last(result)
    print(f"\nSimPO loss: first {first:.4f}, last {last:.4f}")
    assert last < first - 0.1
    assert result.metrics_history[-1]["train_reward_accuracy"] > 0.5


@pytest.mark.slow
@pytest.mark.parametrize(("loss_type", "start"), [("ipo", 25.0), ("robust", 0.6931)])
def test_dpo_loss_variants_train(
    tmp_path: Path, demo_model_dir: Path, demo_params: int, loss_type: str, start: float
) -> None:
    result = train(
        tmp_path, demo_model_dir, demo_params, preference_rows(code_task(16, seed=7)), "dpo", "preference",
        {"batch_size": 8, "n_epochs": 4, "loss_type": loss_type},
    )  # fmt: skip
    first, last = first_last(result)
    print(f"\nDPO {loss_type} loss: first {first:.4f}, last {last:.4f}")
    # at step 1 the policy is the reference: ipo (0 - 1/(2 beta))^2, robust log(2)
    assert first == pytest.approx(start, rel=0.02)
    assert last < first
    assert result.resolved_hyperparameters.label_smoothing == (0.1 if loss_type == "robust" else 0.0)
