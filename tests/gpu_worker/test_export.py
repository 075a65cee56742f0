"""The export checks have teeth (gpu_worker/export.py): a merge that drops the adapter, or a GGUF written without
llama.cpp's q/k row order, fails its check and offers nothing; a model the GGUF writer does not support fails with
the reason before any weight is loaded. The formats' successful round trips run end to end in
tests/clients/test_sdk_exports.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gpu_worker import export
from gpu_worker.export import ExportFailed, build_export

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def random_adapter(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with random (non-zero) B matrices: it changes demo-tiny's logits by ~10% of their scale."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("random-adapter")
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj"], init_lora_weights=False
        ),
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.05)
    peft_model.save_pretrained(out, safe_serialization=True)
    config = json.loads((out / "adapter_config.json").read_text())
    config.pop("auto_mapping", None)  # written for a model wrapped outside a Trainer; vLLM refuses it
    (out / "adapter_config.json").write_text(json.dumps(config))
    AutoTokenizer.from_pretrained(demo_model_dir).save_pretrained(out)
    return out


def test_gguf_refuses_an_unsupported_architecture_before_loading(
    demo_model_dir: Path, random_adapter: Path, tmp_path: Path
) -> None:
    base = tmp_path / "other-base"
    shutil.copytree(demo_model_dir, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "model_type": "qwen2"}))
    with pytest.raises(ExportFailed) as excinfo:
        build_export(
            "gguf", adapter_dir=random_adapter, base_dir=base, work_dir=tmp_path / "work", stem="ftjob-x"
        )
    assert excinfo.value.code == "unsupported_architecture"
    assert "'qwen2'" in excinfo.value.message and "merged" in excinfo.value.message
    assert not (tmp_path / "work" / "ftjob-x-merged").exists()  # refused before merging


def test_a_broken_merge_or_gguf_fails_its_check(
    demo_model_dir: Path, random_adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft.tuners.lora import LoraModel

    with monkeypatch.context() as patch:
        patch.setattr(LoraModel, "merge_and_unload", LoraModel.unload)  # "merged" without the adapter
        with pytest.raises(ExportFailed) as excinfo:
            build_export(
                "merged",
                adapter_dir=random_adapter,
                base_dir=demo_model_dir,
                work_dir=tmp_path / "m",
                stem="x",
            )
    assert excinfo.value.code == "merge_check_failed"
    record = excinfo.value.checks["merged_logits"]
    assert not record["passed"] and record["relative_diff"] > record["tolerance"]

    monkeypatch.setattr(export, "_permute", lambda weights, n_head: weights)  # q/k rows in HF's order
    with pytest.raises(ExportFailed) as excinfo:
        build_export(
            "gguf", adapter_dir=random_adapter, base_dir=demo_model_dir, work_dir=tmp_path / "g", stem="x"
        )
    assert excinfo.value.code == "gguf_check_failed"
    assert excinfo.value.checks["merged_logits"]["passed"]  # the merge was right; the GGUF was not
    assert (
        excinfo.value.checks["gguf_greedy"]["same_greedy_tokens"]
        < excinfo.value.checks["gguf_greedy"]["prompts"]
    )
