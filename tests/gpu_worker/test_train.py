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
from tests.gpu_worker.conftest import chat_rows, code_task, preference_rows, question

# A small, fast SFT run for the mechanics tests: 24 examples, batch 4 -> 6 steps/epoch, 3 epochs = 18 steps.
SMALL_HP: dict[str, Any] = {
    "batch_size": 4,
    "n_epochs": 3,
    "checkpoint_every_steps": 4,
    "eval_every_steps": 6,
}


def losses(result: TrainResult) -> dict[int, float]:
    return {row["step"]: row["train_loss"] for row in result.metrics_history}


def exact_match(model_dir: Path, adapter_dir: Path | None, pairs: list[tuple[str, str]]) -> float:
    """Greedy-decode every training prompt in-process; the fraction answered exactly."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir or model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": question(w)}], tokenize=False, add_generation_prompt=True
        )
        for w, _ in pairs
    ]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    answers = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return sum(a.strip() == code for a, (_, code) in zip(answers, pairs, strict=True)) / len(pairs)


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
    assert result.global_step == result.total_steps == hp.total_steps
    assert result.trained_tokens > 0
    # Metrics: every step reported in order, validation rows on eval steps, full validation at the end.
    steps = [r["step"] for r in result.metrics_history]
    assert steps == sorted(steps) and steps[-1] == hp.total_steps
    assert any("valid_loss" in r for r in result.metrics_history)
    assert result.metrics["full_valid_loss"] < result.metrics_history[0]["train_loss"]
    assert 0.9 <= result.metrics["full_valid_mean_token_accuracy"] <= 1.0
    assert reporter.metric_rows == result.metrics_history
    assert reporter.checkpoints and reporter.checkpoints[-1][0] == hp.total_steps

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
