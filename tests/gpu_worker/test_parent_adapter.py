"""Continued training's weight algebra on demo-tiny: merging a parent adapter into the base gives the parent
model's logits, and the concatenated adapter over the bare base gives the logits of the parent model with a new
LoRA on top, as PEFT loads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from gpu_worker.parent_adapter import (  # noqa: E402
    TRAINED_DIR,
    concatenate,
    make_servable,
    merge_into,
    restore_trained,
)


def _base(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _random_lora(model: Any, *, rank: int, alpha: int, seed: int, targets: Any = "all-linear") -> Any:
    """A LoRA whose B is not zero (a trained one), so that it changes the logits."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, task_type="CAUSAL_LM")
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return peft_model.eval()


def _logits(model: Any, ids: Any) -> Any:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merge_then_concatenate_reproduce_the_models_they_stand_for(
    demo_model_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    torch.set_num_threads(1)
    ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))

    parent = _random_lora(_base(demo_model_dir), rank=4, alpha=8, seed=1)
    parent.save_pretrained(tmp_path / "parent")
    parent_logits = _logits(parent, ids)

    merged = _base(demo_model_dir)
    assert merge_into(merged, tmp_path / "parent") > 0
    assert torch.allclose(_logits(merged, ids), parent_logits, atol=1e-5)

    # a new LoRA of another scaling, on only some modules, trained on the merged parent model
    child = _random_lora(merged, rank=2, alpha=7, seed=2, targets=["q_proj", "v_proj", "down_proj"])
    child.save_pretrained(tmp_path / "trained")
    child_logits = _logits(child, ids)
    assert not torch.allclose(child_logits, parent_logits, atol=1e-3)

    config = concatenate(tmp_path / "parent", tmp_path / "trained", tmp_path / "combined")
    assert (config["r"], config["lora_alpha"]) == (6, 6)
    served = PeftModel.from_pretrained(_base(demo_model_dir), tmp_path / "combined").eval()
    difference = (_logits(served, ids) - child_logits).abs().max().item()
    print(f"\nconcatenated adapter vs trained model: max |logit difference| {difference:.2e}")
    assert difference < 1e-4

    # a checkpoint directory: made servable, then restored for the trainer to resume its own LoRA
    checkpoint = tmp_path / "checkpoint"
    child.save_pretrained(checkpoint)
    trained_bytes = (checkpoint / "adapter_model.safetensors").read_bytes()
    make_servable(checkpoint, tmp_path / "parent")
    assert (checkpoint / TRAINED_DIR / "adapter_model.safetensors").read_bytes() == trained_bytes
    assert (checkpoint / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "combined" / "adapter_model.safetensors"
    ).read_bytes()
    restore_trained(checkpoint)
    assert (checkpoint / "adapter_model.safetensors").read_bytes() == trained_bytes
    assert not (checkpoint / TRAINED_DIR).exists()
