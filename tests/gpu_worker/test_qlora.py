"""QLoRA (`quantization: "4bit"`) on the CPU, through bitsandbytes' CPU backend: the same accel.py path as on
CUDA (NF4 + double quantization, prepare_model_for_kbit_training, LoRA on top), with fp32 compute instead of bf16.
The CUDA-only parts (bf16 compute, the paged optimiser, peak VRAM) are in test_cuda.py, marked `gpu`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from gpu_worker import accel
from gpu_worker.reporting import RecordingReporter
from gpu_worker.train import run_training
from tests.support.code_task import chat_rows, code_task, exact_match, preference_rows

bnb = pytest.importorskip("bitsandbytes")


def _resolved(demo_params: int, **hp: Any) -> Any:
    from core.hyperparameters import SupervisedHyperparameters, resolve_hyperparameters

    return resolve_hyperparameters(
        "supervised", SupervisedHyperparameters(**hp), n_examples=8, base_model_params=demo_params
    )


def test_the_frozen_base_is_nf4_with_double_quantization_and_only_lora_trains(
    demo_model_dir: Path, demo_params: int
) -> None:
    loaded = accel.load_model_with_lora(
        demo_model_dir, _resolved(demo_params, quantization="4bit"), cuda=False, dtype=torch.float32,
        n_params=demo_params, attn_implementation="sdpa", seed=0, use_unsloth=None,
    )  # fmt: skip
    assert loaded.quantization == "4bit" and loaded.backend == "transformers"
    linear4 = [m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    # demo-tiny: 2 layers x 7 linear projections (q k v o gate up down), every one quantised
    assert len(linear4) == 14
    for module in linear4:
        state = module.weight.quant_state
        assert state.quant_type == "nf4" and state.nested  # nested: the absmax scales are quantised too
        assert module.weight.dtype == torch.uint8 and not module.weight.requires_grad
    trainable = {name for name, p in loaded.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in name or "lora_B" in name for name in trainable)
    # An eval-mode forward (the packing check, a validation pass) must not repack the weights into
    # bitsandbytes' CPU inference layout, whose kernel has no backward (on AVX512-BF16 CPUs).
    loaded.model.eval()
    with torch.no_grad():
        loaded.model(input_ids=torch.tensor([[1, 2, 3]]))
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in linear4)


def test_qlora_learns_the_task_and_its_adapter_serves_on_the_unquantised_base(
    make_config: Callable[..., Any], demo_model_dir: Path
) -> None:
    """What QLoRA promises: an adapter trained against the NF4 base works on the full-precision base, which is
    what vLLM serves it with."""
    from core.adapters import validate_adapter

    pairs = code_task(48, seed=7)
    config = make_config(chat_rows(pairs), hp={"quantization": "4bit", "n_epochs": 12}, name="qlora")
    reporter = RecordingReporter()
    result = run_training(config, reporter)

    started = next(e["data"] for e in reporter.events if e["message"].startswith("Fine-tuning started"))
    assert started["quantization"] == "4bit"
    assert result.adapter_dir is not None
    info = validate_adapter(result.adapter_dir, max_lora_rank=64, base_model_dir=demo_model_dir)
    assert info.rank == config.hyperparameters.lora_rank
    saved = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    # A plain LoRA adapter: nothing 4-bit leaks into what vLLM loads.
    assert "quantization_config" not in saved
    assert result.metrics_history[-1]["train_loss"] < result.metrics_history[0]["train_loss"] / 2
    fine_tuned = exact_match(demo_model_dir, result.adapter_dir, pairs)
    print(f"\nQLoRA exact match on the unquantised base: {fine_tuned:.0%}")
    assert fine_tuned >= 0.8


def test_dpo_on_a_4bit_base_starts_at_log_2_and_learns(make_config: Callable[..., Any]) -> None:
    """DPO's reference model is the same NF4 base with the adapter switched off: at step 1 policy == reference."""
    rows = preference_rows(code_task(24, seed=7))
    config = make_config(
        rows, method="dpo", data_format="preference", name="dpo-q4",
        hp={"batch_size": 8, "n_epochs": 6, "quantization": "4bit"},
    )  # fmt: skip
    result = run_training(config, RecordingReporter())
    first, last = result.metrics_history[0]["train_loss"], result.metrics_history[-1]["train_loss"]
    assert result.adapter_dir is not None
    assert first == pytest.approx(0.6931, abs=0.01)  # log(2)
    assert last < first - 0.1
    assert result.metrics_history[-1]["train_reward_accuracy"] > 0.5


def test_without_bitsandbytes_4bit_fails_saying_what_is_missing(
    make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accel, "bnb_4bit_available", lambda: False)
    config = make_config(chat_rows(code_task(8)), hp={"quantization": "4bit"}, name="no-bnb")
    with pytest.raises(accel.AccelerationUnavailable, match=r"needs bitsandbytes >= 0\.50"):
        run_training(config, RecordingReporter())
