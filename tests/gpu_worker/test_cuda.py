"""The CUDA path of gpu_worker.train: bf16, padding-free packing on the FlashAttention varlen kernel, QLoRA (NF4 +
double quantization), the gradient-checkpointing rule, and unsloth or the announced fallback.

Marked `gpu`: skipped where there is no CUDA device. Self-contained (no session fixtures from tests/conftest.py), so
`bench/gpu_check.sh` can run this file on a GPU machine that lacks the service's other dependencies.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from gpu_worker import accel, packing  # noqa: E402

accel.import_unsloth_first()  # as in the worker's training process: unsloth (if any) before transformers/trl/peft
pytest.importorskip("peft")
pytest.importorskip("trl")

pytestmark = pytest.mark.gpu

from tests.support.code_task import chat_rows, code_task, question, write_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """demo-tiny: from FTSERVE_DEMO_MODEL_CACHE when current there, else built now."""
    from gpu_worker.demo_model import build_demo_model, demo_model_is_current

    cached = os.environ.get("FTSERVE_DEMO_MODEL_CACHE")
    if cached and demo_model_is_current(Path(cached)):
        return Path(cached)
    return build_demo_model(tmp_path_factory.mktemp("demo-tiny"))


def _config(
    model_dir: Path, tmp: Path, rows: list[dict[str, Any]], method: str = "supervised",
    validation_rows: list[dict[str, Any]] | None = None, **hp: Any,
) -> Any:  # fmt: skip
    from core.hyperparameters import DpoHyperparameters, SupervisedHyperparameters, resolve_hyperparameters
    from gpu_worker.config import TrainJobConfig

    params = json.loads((model_dir / "demo_model_info.json").read_text())["parameters"]
    positions = json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]
    hyperparameters = DpoHyperparameters(**hp) if method == "dpo" else SupervisedHyperparameters(**hp)
    resolved = resolve_hyperparameters(  # with the model's context length, as the job runner resolves them
        method, hyperparameters, n_examples=len(rows), base_model_params=params, base_model_max_length=positions,
    )  # fmt: skip
    return TrainJobConfig(
        job_id="ftjob-cuda", method=method, base_model_path=model_dir,  # type: ignore[arg-type]
        data_format="preference" if method == "dpo" else "chat",
        training_file=write_jsonl(tmp / "train.jsonl", rows), output_dir=tmp / "out", hyperparameters=resolved,
        validation_file=write_jsonl(tmp / "valid.jsonl", validation_rows) if validation_rows else None,
        use_unsloth=False,
    )  # fmt: skip


def _train(config: Any) -> tuple[Any, dict[str, Any], list[str]]:
    from gpu_worker.reporting import RecordingReporter
    from gpu_worker.train import run_training

    reporter = RecordingReporter()
    result = run_training(config, reporter)
    started = next(e["data"] for e in reporter.events if e["message"].startswith("Fine-tuning started"))
    return result, started, reporter.messages


def test_bf16_padding_free_on_the_flash_varlen_kernel(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = packing._flash_varlen()
    assert kernel, "torch has no varlen FlashAttention kernel"
    calls = []

    def counted(*args: Any) -> Any:
        calls.append(args[0].shape)
        return kernel(*args)

    monkeypatch.setattr(packing, "_FLASH_VARLEN", counted)
    rows = chat_rows(code_task(48, seed=2))
    result, started, _ = _train(_config(model_dir, tmp_path, rows, batch_size=8, n_epochs=4))
    assert started["dtype"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "float32")
    assert started["batching"] == "padding_free" and started["backend"] == "transformers"
    assert started["gradient_checkpointing"] is False  # 0.5M parameters: far below the 1B rule
    assert (
        calls and packing._FLASH_VARLEN is counted
    )  # the kernel ran, and never failed over to the SDPA loop
    assert result.metrics["padding_pct"] == 0.0
    assert result.metrics_history[-1]["train_loss"] < result.metrics_history[0]["train_loss"]


def test_packed_equals_padded_on_cuda_within_bf16_noise(model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    packing.register_varlen_attention()
    base = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16, attn_implementation=packing.ATTN_IMPLEMENTATION
    ).cuda()
    model = get_peft_model(base, LoraConfig(r=8, target_modules="all-linear"))
    worst = packing.packing_is_exact(model, "padding_free", 0)
    assert worst < 2e-2
    seqs = [list(range(5, 5 + n)) for n in (40, 9, 23)]
    batch = packing.PackedCollator(0, "one")([{"input_ids": s, "labels": s} for s in seqs])
    batch = {k: v.cuda() if hasattr(v, "cuda") else v for k, v in batch.items()}
    packed = model(**batch, use_cache=False).loss.float()
    width = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs]).cuda()
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs]).cuda()
    padded = model(
        input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100), use_cache=False
    )
    assert float(packed) == pytest.approx(float(padded.loss), rel=2e-2)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_qlora_4bit_trains_with_nf4_double_quantization(model_dir: Path, tmp_path: Path) -> None:
    import bitsandbytes as bnb

    from core.hyperparameters import SupervisedHyperparameters, resolve_hyperparameters

    hp = resolve_hyperparameters(
        "supervised", SupervisedHyperparameters(quantization="4bit"), n_examples=8, base_model_params=10**6
    )
    loaded = accel.load_model_with_lora(
        model_dir, hp, cuda=True, dtype=torch.bfloat16, n_params=10**6, attn_implementation="sdpa", seed=0,
        use_unsloth=False,
    )  # fmt: skip
    linear4 = [m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linear4, "no 4-bit linear layers: the base was not quantised"
    qs = linear4[0].weight.quant_state
    assert qs.quant_type == "nf4" and qs.nested  # nested = double quantization of the scales
    rows = chat_rows(code_task(48, seed=4))
    result, started, _ = _train(
        _config(model_dir, tmp_path, rows, batch_size=8, n_epochs=6, quantization="4bit", learning_rate=3e-3)
    )
    assert started["quantization"] == "4bit"
    assert result.adapter_dir is not None and (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert result.metrics_history[-1]["train_loss"] < result.metrics_history[0]["train_loss"]


def test_gradient_checkpointing_is_on_above_1b_parameters(model_dir: Path) -> None:
    from core.hyperparameters import resolve_hyperparameters

    hp = resolve_hyperparameters("supervised", None, n_examples=8)
    for n_params, expected in ((10**6, False), (2 * 10**9, True)):
        loaded = accel.load_model_with_lora(
            model_dir, hp, cuda=True, dtype=torch.bfloat16, n_params=n_params, attn_implementation="sdpa",
            seed=0, use_unsloth=False,
        )  # fmt: skip
        assert loaded.gradient_checkpointing is expected


def _preference_rows(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {
            "input": {"messages": [{"role": "user", "content": question(w)}]},
            "preferred_output": [{"role": "assistant", "content": c}],
            "non_preferred_output": [{"role": "assistant", "content": c[::-1]}],
        }
        for w, c in pairs
    ]


@pytest.mark.parametrize("method", ["supervised", "dpo"])
def test_unsloth_is_used_when_installed_else_the_fallback_is_announced(
    model_dir: Path, tmp_path: Path, method: str
) -> None:
    import math

    from core.adapters import validate_adapter

    rows_of = _preference_rows if method == "dpo" else chat_rows
    config = _config(
        model_dir, tmp_path, rows_of(code_task(16, seed=6)), method=method,
        validation_rows=rows_of(code_task(8, seed=8)), batch_size=8, n_epochs=1,
    )  # fmt: skip
    config.use_unsloth = None  # auto
    result, started, messages = _train(config)
    assert result.adapter_dir is not None
    # What the service checks before vLLM gets it: a plain PEFT LoRA adapter (safetensors, no DoRA, bias or
    # modules_to_save, supported modules) with the base's tensor shapes.
    info = validate_adapter(result.adapter_dir, max_lora_rank=64, base_model_dir=model_dir)
    assert {m.rsplit(".", 1)[-1] for m in info.target_modules} == set(accel.UNSLOTH_ALL_LINEAR)
    losses = [row["train_loss"] for row in result.metrics_history if "train_loss" in row]
    assert losses and all(math.isfinite(x) for x in losses), result.metrics_history
    assert math.isfinite(result.metrics["full_valid_loss"]), result.metrics
    if not accel.unsloth_installed():
        assert started["backend"] == "transformers"
        assert any("unsloth not used: unsloth is not installed" in m for m in messages), messages
        return
    assert started["backend"] == "unsloth", messages
    if method == "supervised":
        # unsloth's Llama forward finds the packed row's boundaries from the restarting position_ids
        # (unsloth/models/llama.py:1338-1350), so the packing check should pass on it.
        assert started["batching"] == "padding_free", started["batching_reason"]
