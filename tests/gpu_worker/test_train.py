"""gpu_worker.train on demo-tiny: it learns, DPO works, runs repeat exactly, and pause/resume/cancel behave."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from gpu_worker.reporting import RecordingReporter
from gpu_worker.train import TrainResult, run_training
from tests.support.code_task import chat_rows, code_task, exact_match, preference_rows

# A small, fast SFT run for the mechanics tests: 24 examples, batch 4 -> 6 steps/epoch, 3 epochs = 18 steps.
SMALL_HP: dict[str, Any] = {
    "batch_size": 4,
    "n_epochs": 3,
    "checkpoint_every_steps": 4,
    "eval_every_steps": 6,
}


def losses(result: TrainResult) -> dict[int, float]:
    return {row["step"]: row["train_loss"] for row in result.metrics_history}


@pytest.mark.slow
def test_learns_an_unguessable_task_with_everything_on_auto(
    make_config: Callable[..., Any], demo_model_dir: Path
) -> None:
    pairs = code_task(100)
    config = make_config(chat_rows(pairs), validation_rows=chat_rows(pairs[:10]), name="learn")
    hp = config.hyperparameters
    reporter = RecordingReporter()
    result = run_training(config, reporter)

    assert result.stopped is None and result.adapter_dir is not None
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert (result.adapter_dir / "adapter_config.json").is_file()
    # "auto" epochs are a ceiling. Its validation rows are training rows, so they are no held-out data (an event
    # says so): early stopping can only stop it once the training loss has converged.
    assert hp.early_stopping and result.global_step <= result.total_steps == hp.total_steps
    assert any("are also in the training file; no held-out data" in m for m in reporter.messages)
    assert result.trained_tokens > 0
    # Metrics: every step reported in order, validation rows on eval steps, full validation at the end.
    steps = [r["step"] for r in result.metrics_history]
    assert steps == sorted(steps) and steps[-1] == result.global_step
    assert any("valid_loss" in r for r in result.metrics_history)
    assert result.metrics["full_valid_loss"] < result.metrics_history[0]["train_loss"]
    assert 0.9 <= result.metrics["full_valid_mean_token_accuracy"] <= 1.0
    assert reporter.metric_rows == result.metrics_history
    assert reporter.checkpoints and reporter.checkpoints[-1][0] <= result.global_step

    fine_tuned = exact_match(demo_model_dir, result.adapter_dir, pairs)
    base = exact_match(demo_model_dir, None, pairs)
    print(f"\nauto: {hp.model_dump()}\nexact match: fine-tuned {fine_tuned:.0%}, base {base:.0%}")
    assert fine_tuned >= 0.9
    assert base <= 0.1


@pytest.mark.slow
def test_dpo_loss_falls(make_config: Callable[..., Any]) -> None:
    rows = preference_rows(code_task(24, seed=7))
    config = make_config(
        rows, method="dpo", data_format="preference", hp={"batch_size": 8, "n_epochs": 6}, name="dpo"
    )
    result = run_training(config, RecordingReporter())
    first, last = result.metrics_history[0]["train_loss"], result.metrics_history[-1]["train_loss"]
    print(f"\nDPO loss: first {first:.4f}, last {last:.4f}, lr {config.hyperparameters.learning_rate:.2g}")
    assert result.stopped is None and result.adapter_dir is not None
    assert first == pytest.approx(0.6931, abs=0.01)  # log(2): policy == reference at step 1
    assert last < first - 0.1
    assert result.metrics_history[-1]["train_reward_accuracy"] > 0.5
    assert result.trained_tokens > 0


@pytest.fixture(scope="module")
def reference(
    demo_model_dir: Path, demo_params: int, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, Any]:
    """An uninterrupted small run, shared by the determinism and resume tests."""
    return _small_run(tmp_path_factory.mktemp("reference"), demo_model_dir, demo_params, RecordingReporter())


def _small_run(
    tmp: Path, model_dir: Path, params: int, reporter: RecordingReporter, resume: Path | None = None
) -> tuple[TrainResult, Any]:
    from core.hyperparameters import SupervisedHyperparameters, resolve_hyperparameters
    from gpu_worker.config import TrainJobConfig

    rows = chat_rows(code_task(24, seed=3))
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    hp = resolve_hyperparameters(
        "supervised", SupervisedHyperparameters(**SMALL_HP), n_examples=len(rows), base_model_params=params
    )
    config = TrainJobConfig(
        job_id="ftjob-small",
        method="supervised",
        base_model_path=model_dir,
        training_file=tmp / "train.jsonl",
        data_format="chat",
        output_dir=tmp / "out",
        hyperparameters=hp,
        seed=123,
        resume_from_checkpoint=resume,
    )
    return run_training(config, reporter), config


@pytest.mark.slow
def test_same_seed_same_losses(
    reference: tuple[Any, Any], demo_model_dir: Path, demo_params: int, tmp_path: Path
) -> None:
    first, _ = reference
    second, _ = _small_run(tmp_path, demo_model_dir, demo_params, RecordingReporter())
    assert len(first.metrics_history) == 18
    assert losses(first) == losses(second)  # bit-identical on one machine


@pytest.mark.slow
def test_pause_then_resume_matches_an_uninterrupted_run(
    reference: tuple[Any, Any], demo_model_dir: Path, demo_params: int, tmp_path: Path
) -> None:
    uninterrupted, _ = reference
    k = 7  # mid-epoch (6 steps per epoch), and not a regular checkpoint step (every 4)
    paused_reporter = RecordingReporter(stop=lambda polls: "pause" if polls == k else None)
    paused, config = _small_run(tmp_path / "a", demo_model_dir, demo_params, paused_reporter)
    assert paused.stopped == "pause" and paused.adapter_dir is None and paused.global_step == k
    step, ckpt_dir, _ = paused_reporter.checkpoints[-1]
    assert step == k and (ckpt_dir / "adapter_model.safetensors").is_file()
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        assert (ckpt_dir / name).is_file(), name
    assert [s for s, *_ in paused_reporter.checkpoints] == [4, 7]
    assert "Training paused at step 7" in paused_reporter.messages

    # The worker downloads the checkpoint from storage into a fresh dir: simulate that with a copy.
    downloaded = shutil.copytree(ckpt_dir, tmp_path / "downloaded" / "step-7")
    resumed_reporter = RecordingReporter()
    resumed, _ = _small_run(tmp_path / "b", demo_model_dir, demo_params, resumed_reporter, resume=downloaded)
    assert f"Resumed from checkpoint at step {k}" in resumed_reporter.messages
    assert resumed.stopped is None and resumed.adapter_dir is not None
    assert resumed.global_step == uninterrupted.global_step == 18
    assert [r["step"] for r in resumed.metrics_history] == list(range(k + 1, 19))
    expected = losses(uninterrupted)
    for s, loss in losses(resumed).items():
        assert loss == pytest.approx(expected[s], rel=1e-4, abs=1e-5), f"step {s}"
    assert losses(paused) == {s: expected[s] for s in range(1, k + 1)}
    assert resumed.trained_tokens == uninterrupted.trained_tokens


@pytest.mark.slow
def test_cancel_stops_within_one_step_and_leaves_no_adapter(
    demo_model_dir: Path, demo_params: int, tmp_path: Path
) -> None:
    reporter = RecordingReporter(stop=lambda polls: "cancel" if polls >= 2 else None)
    result, config = _small_run(tmp_path, demo_model_dir, demo_params, reporter)
    assert result.stopped == "cancel"
    assert result.global_step == 2 and reporter.polls == 2
    assert result.adapter_dir is None and not (config.output_dir / "adapter").exists()
    assert reporter.checkpoints == []
    assert not list((config.output_dir / "checkpoints").glob("checkpoint-*"))
    assert 0 < result.trained_tokens < 24 * 10


@pytest.mark.slow
@pytest.mark.parametrize("method", ["supervised", "dpo"])
def test_gradient_accumulation_makes_the_steps_of_the_whole_batch(
    make_config: Callable[..., Any], method: str
) -> None:
    """batch_size 8 as one micro-batch of 8, or as 4 micro-batches of 2: the same optimizer steps (the loss
    is normalised over the whole step's tokens, not per micro-batch), so the same losses and adapter."""
    import torch
    from safetensors.torch import load_file

    pairs = code_task(16, seed=11)
    rows = preference_rows(pairs) if method == "dpo" else chat_rows(pairs)
    fmt = "preference" if method == "dpo" else "chat"
    hp = {"batch_size": 8, "n_epochs": 2, "learning_rate": 3e-3, "eval_every_steps": 100}
    whole = run_training(
        make_config(rows, method=method, data_format=fmt, hp={**hp, "micro_batch_size": 8}, name="whole"),
        RecordingReporter(),
    )
    config = make_config(rows, method=method, data_format=fmt, hp={**hp, "micro_batch_size": 2}, name="acc")
    assert (config.hyperparameters.micro_batch_size, config.hyperparameters.gradient_accumulation_steps) == (
        2,
        4,
    )
    reporter = RecordingReporter()
    accumulated = run_training(config, reporter)

    assert whole.global_step == accumulated.global_step == 4
    assert losses(accumulated) == pytest.approx(losses(whole), rel=2e-3)
    started = next(e for e in reporter.events if e["message"].startswith("Fine-tuning started"))
    assert "(micro-batches of 2 x 4 accumulation steps)" in started["message"]
    assert started["data"]["gradient_accumulation_steps"] == 4
    assert whole.adapter_dir is not None and accumulated.adapter_dir is not None
    a = load_file(str(whole.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(accumulated.adapter_dir / "adapter_model.safetensors"))
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=2e-3, atol=2e-4)


def _tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def _same_weights(a: dict[str, Any], b: dict[str, Any], **tolerance: float) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], **tolerance) for k in a)


# Early stopping on demo-tiny: 40 unguessable codes. The first epoch learns what a code looks like (held-out
# and trained-on losses fall alike); after that, an epoch only memorises the 36 trained-on codes, which the 4
# held-out ones can't benefit from. Batch 4 -> 9 steps per epoch, a checkpoint at every epoch's end.
EARLY_HP: dict[str, Any] = {"batch_size": 4, "checkpoint_every_steps": 9}


@pytest.fixture(scope="module")
def early_stopped(demo_model_dir: Path, demo_params: int, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An all-auto-epochs run that stops early, shared by the early-stopping tests."""
    tmp = tmp_path_factory.mktemp("early")
    config = _config(tmp, demo_model_dir, demo_params, EARLY_HP)
    reporter = RecordingReporter()
    return run_training(config, reporter), config, reporter


def _config(tmp: Path, model_dir: Path, params: int, hp: dict[str, Any], resume: Path | None = None) -> Any:
    from core.hyperparameters import SupervisedHyperparameters, resolve_hyperparameters
    from gpu_worker.config import TrainJobConfig

    rows = chat_rows(code_task(40, seed=5))
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    resolved = resolve_hyperparameters(
        "supervised", SupervisedHyperparameters(**hp), n_examples=len(rows), base_model_params=params
    )
    return TrainJobConfig(
        job_id="ftjob-early", method="supervised", base_model_path=model_dir, training_file=tmp / "train.jsonl",
        data_format="chat", output_dir=tmp / "out", hyperparameters=resolved, seed=7, resume_from_checkpoint=resume,
        keep_local_checkpoints=50,
    )  # fmt: skip


@pytest.mark.slow
def test_auto_epochs_stop_early_and_keep_the_epoch_that_generalised(early_stopped: Any) -> None:
    result, config, reporter = early_stopped
    hp = config.hyperparameters
    assert hp.early_stopping and (hp.holdout_examples, hp.n_examples, hp.steps_per_epoch) == (4, 36, 9)
    assert any(m.startswith("Held out 4 of the 40 training examples") for m in reporter.messages)
    summary = result.early_stopping
    print(f"\n{summary}")
    stop, kept = summary["stopped_at_epoch"], summary["kept_epoch"]
    assert result.stopped is None and result.adapter_dir is not None
    assert 2 <= stop < hp.n_epochs  # a ceiling, not a schedule
    assert result.global_step == stop * hp.steps_per_epoch < result.total_steps == hp.total_steps
    # Every epoch after the first only memorised: the held-out loss rose or fell far less than the trained-on.
    assert summary["reason"].startswith(("memorising", "held-out loss rose")) and kept == stop - 1
    losses_at = {e["epoch"]: e for e in summary["epochs"]}
    assert losses_at[0]["valid_loss"] > losses_at[1]["valid_loss"]  # the first epoch did generalise
    assert any(
        m.startswith(f"Early stopping: stopped after epoch {stop} of {hp.n_epochs}")
        for m in reporter.messages
    )
    # Validation only at epochs' ends; tokens counted for the epochs actually trained.
    assert {r["step"] for r in result.metrics_history if "valid_loss" in r} == {
        e * hp.steps_per_epoch for e in range(1, stop + 1)
    }
    started = next(e for e in reporter.events if e["message"].startswith("Fine-tuning started"))
    assert result.trained_tokens == round(started["data"]["trainable_tokens_per_epoch"] * stop)
    # The adapter is the kept epoch's weights, not the last step's.
    checkpoints = config.output_dir / "checkpoints"
    adapter = _tensors(result.adapter_dir)
    assert _same_weights(adapter, _tensors(checkpoints / f"checkpoint-{kept * hp.steps_per_epoch}"))
    assert not _same_weights(adapter, _tensors(checkpoints / f"checkpoint-{stop * hp.steps_per_epoch}"))


@pytest.mark.slow
def test_explicit_epochs_do_not_stop_early(
    early_stopped: Any, demo_model_dir: Path, demo_params: int, tmp_path: Path
) -> None:
    stop = early_stopped[0].early_stopping["stopped_at_epoch"]
    config = _config(tmp_path, demo_model_dir, demo_params, {**EARLY_HP, "n_epochs": stop + 1})
    reporter = RecordingReporter()
    result = run_training(config, reporter)
    hp = config.hyperparameters
    assert not hp.early_stopping and hp.holdout_examples == 0 and hp.n_examples == 40
    assert result.early_stopping is None and result.global_step == result.total_steps == 10 * (stop + 1)
    assert not any("Held out" in m or "Early stopping" in m for m in reporter.messages)


@pytest.mark.slow
def test_early_stopping_survives_pause_and_resume(
    early_stopped: Any, demo_model_dir: Path, demo_params: int, tmp_path: Path
) -> None:
    """Paused mid-epoch after the first epoch's verdict: the resumed run stops at the same epoch and hands back
    the same kept weights (they travel in the checkpoint), as the uninterrupted run did."""
    uninterrupted, config, _ = early_stopped
    k = 13  # mid-epoch 2 (9 steps per epoch)
    paused_reporter = RecordingReporter(stop=lambda polls: "pause" if polls == k else None)
    paused = run_training(_config(tmp_path / "a", demo_model_dir, demo_params, EARLY_HP), paused_reporter)
    assert paused.stopped == "pause" and paused.global_step == k
    step, ckpt, _ = paused_reporter.checkpoints[-1]
    assert step == k and (ckpt / "early_stopping.json").is_file()
    assert (
        ckpt / "early_stopping_kept.safetensors"
    ).is_file()  # epoch 1's weights, the ones a stop hands back

    downloaded = shutil.copytree(ckpt, tmp_path / "downloaded" / f"step-{k}")
    resumed = run_training(
        _config(tmp_path / "b", demo_model_dir, demo_params, EARLY_HP, resume=downloaded), RecordingReporter()
    )
    assert resumed.stopped is None and resumed.adapter_dir is not None
    assert resumed.global_step == uninterrupted.global_step
    expected, got = uninterrupted.early_stopping, resumed.early_stopping
    assert (got["stopped_at_epoch"], got["kept_epoch"]) == (
        expected["stopped_at_epoch"],
        expected["kept_epoch"],
    )
    assert [e["epoch"] for e in got["epochs"]] == [e["epoch"] for e in expected["epochs"]]
    assert uninterrupted.adapter_dir is not None
    assert _same_weights(
        _tensors(resumed.adapter_dir), _tensors(uninterrupted.adapter_dir), rtol=1e-3, atol=1e-5
    )
