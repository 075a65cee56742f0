"""The VRAM estimator: parameter counts that match PEFT's on a real model, the published worked examples of
the formula in core/vram.py, the direction of every knob, constants read from the data file, and the vram_estimator bench's targets."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from core.hyperparameters import SupervisedHyperparameters, resolve_hyperparameters
from core.vram import ModelArch, TrainSpec, calibration, estimate, estimate_job
from tests.support.model_configs import LLAMA_3_1_8B

REPO_ROOT = Path(__file__).resolve().parents[2]
GB = 1e9


def test_llama_8b_counts_match_the_published_ones() -> None:
    arch = ModelArch.from_config(LLAMA_3_1_8B)
    assert arch.params_linear == pytest.approx(6.98e9, rel=0.005)
    assert arch.params_embedding == pytest.approx(1.05e9, rel=0.005)
    assert arch.lora_params(32, "all-linear") == pytest.approx(83.9e6, rel=0.005)
    assert arch.lora_params(
        8, ("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    ) == pytest.approx(19.7e6, rel=0.01)


def test_the_worked_qlora_example_of_part_b3() -> None:
    # Llama-3.1-8B QLoRA r32 all-linear, HF defaults (fp32 upcast, fp32 AdamW), 1 x 4096, unfused CE: 20.4 GB.
    arch = ModelArch.from_config(LLAMA_3_1_8B)
    spec = TrainSpec(micro_batch=1, seq_len=4096, method="qlora", lora_rank=32)
    est = estimate(arch, spec, profile="hf-peft")
    assert est.weights_mb * 2**20 == pytest.approx(7.80 * GB, rel=0.01)
    assert est.peak_mb * 2**20 == pytest.approx(20.4 * GB, rel=0.05)
    assert est.reservation_mb == pytest.approx(est.peak_mb * 1.10, abs=2)


def test_every_knob_moves_the_estimate_the_right_way() -> None:
    arch = ModelArch.from_config(LLAMA_3_1_8B)
    base = TrainSpec(micro_batch=2, seq_len=2048)

    def peak(**changes: object) -> int:
        return estimate(arch, replace(base, **changes)).peak_mb  # type: ignore[arg-type]

    assert peak(seq_len=4096) > peak() and peak(micro_batch=4) > peak()
    assert peak(dpo=True) > peak()
    assert peak(method="qlora") < peak() < peak(method="full")
    assert peak(lora_rank=256) > peak()
    assert peak(gradient_checkpointing=False) > peak()
    assert peak(loss="fused") < peak(loss="chunked") < peak()
    assert peak(fused_attention=False) > peak()
    assert peak(lora_dropout=0.1) > peak()
    full = replace(base, method="full")
    assert estimate(arch, replace(full, optimizer="adamw8bit")).peak_mb < estimate(arch, full).peak_mb
    paged = replace(full, optimizer="paged_adamw8bit")
    assert estimate(arch, paged, elastic=True).peak_mb < estimate(arch, paged).peak_mb
    cpu = estimate(arch, base, profile="ftserve-cpu")
    assert cpu.weights_mb == pytest.approx(2 * estimate(arch, base).weights_mb, rel=0.01)  # fp32 on CPU


def test_constants_come_from_the_data_file() -> None:
    arch = ModelArch.from_config(LLAMA_3_1_8B)
    spec = TrainSpec(micro_batch=1, seq_len=1024)
    cal = copy.deepcopy(calibration())
    cal["profiles"]["ftserve-cuda"]["fixed_mib"] += 1000
    assert estimate(arch, spec, cal=cal).overhead_mb == estimate(arch, spec).overhead_mb + 1000
    assert json.loads((REPO_ROOT / "core" / "vram_calibration.json").read_text())["profiles"]["ftserve-cuda"]


def test_a_job_is_estimated_from_its_resolved_hyperparameters() -> None:
    arch = ModelArch.from_config(LLAMA_3_1_8B)
    hp = resolve_hyperparameters(
        "supervised",
        SupervisedHyperparameters(max_seq_length=1024),
        n_examples=100,
        base_model_params=arch.params,
    )
    est = estimate_job(arch, "supervised", hp)
    assert est.tokens_per_micro_batch == hp.batch_size * 1024 == 8 * 1024
    assert est.trainable_parameters == arch.lora_params(16, "all-linear")
    four_bit = estimate_job(arch, "supervised", hp.model_copy(update={"quantization": "4bit"}))
    assert four_bit.weights_mb < est.weights_mb / 2


@pytest.mark.slow
def test_parameter_counts_match_peft_on_demo_tiny(demo_model_dir: Path) -> None:
    """The estimator's counts against the real model, loaded and wrapped by PEFT the way the worker does."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    arch = ModelArch.from_config_file(demo_model_dir / "config.json")
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir)
    weights = sum(p.numel() for name, p in model.named_parameters() if "norm" not in name)
    assert arch.params == weights
    peft_model = get_peft_model(model, LoraConfig(r=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert arch.lora_params(16, "all-linear") == trainable


def test_the_estimator_bench_meets_its_targets() -> None:
    out = subprocess.run(
        [sys.executable, "bench/vram_estimator.py"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["error_rows"] >= 10
    assert result["median_abs_error_pct"] <= 15 and result["worst_underestimate_pct"] <= 5
