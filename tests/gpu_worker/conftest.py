"""Fixtures for the training tests. demo-tiny itself (`demo_model_dir`) is built once per run in tests/conftest.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.code_task import write_jsonl


@pytest.fixture(scope="session")
def demo_params(demo_model_dir: Path) -> int:
    return int(json.loads((demo_model_dir / "demo_model_info.json").read_text())["parameters"])


@pytest.fixture
def make_config(demo_model_dir: Path, demo_params: int, tmp_path: Path) -> Callable[..., Any]:
    """Build a TrainJobConfig for demo-tiny from rows; hyperparameters resolved like the API does."""
    from core.hyperparameters import DpoHyperparameters, SupervisedHyperparameters, resolve_hyperparameters
    from gpu_worker.config import TrainJobConfig

    def make(
        rows: list[dict[str, Any]],
        *,
        method: str = "supervised",
        data_format: str = "chat",
        hp: dict[str, Any] | None = None,
        validation_rows: list[dict[str, Any]] | None = None,
        name: str = "run",
        seed: int = 0,
        resume_from_checkpoint: Path | None = None,
    ) -> TrainJobConfig:
        run_dir = tmp_path / name
        run_dir.mkdir(parents=True, exist_ok=True)
        train_file = write_jsonl(run_dir / "train.jsonl", rows)
        valid_file = write_jsonl(run_dir / "valid.jsonl", validation_rows) if validation_rows else None
        hp_model = (
            DpoHyperparameters(**(hp or {})) if method == "dpo" else SupervisedHyperparameters(**(hp or {}))
        )
        resolved = resolve_hyperparameters(
            method, hp_model, n_examples=len(rows), base_model_params=demo_params, base_model_max_length=1024,
            has_validation_file=valid_file is not None,  # as the job runner resolves them
        )  # fmt: skip
        return TrainJobConfig(
            job_id=f"ftjob-{name}",
            method=method,  # type: ignore[arg-type]
            base_model_path=demo_model_dir,
            training_file=train_file,
            validation_file=valid_file,
            data_format=data_format,  # type: ignore[arg-type]
            output_dir=run_dir / "out",
            hyperparameters=resolved,
            seed=seed,
            resume_from_checkpoint=resume_from_checkpoint,
        )

    return make
