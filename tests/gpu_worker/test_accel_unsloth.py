"""The decisions accel.py makes about unsloth before unsloth is imported: when it may be used, what LoRA targets it
gets, and the switch it must see at import. unsloth itself needs a CUDA device; tests/gpu_worker/test_cuda.py runs it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpu_worker import accel

transformers = pytest.importorskip("transformers")


def _config(model_type: str, positions: int = 1024) -> object:
    return transformers.AutoConfig.for_model(
        model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, vocab_size=64, max_position_embeddings=positions,
    )  # fmt: skip


def test_unsloth_is_never_chosen_without_cuda_or_when_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert accel._unsloth_unusable(False, _config("llama"), 512) == "no CUDA device"
    monkeypatch.setenv("FTSERVE_UNSLOTH", "0")
    why = accel._unsloth_unusable(True, _config("llama"), 512)
    assert why == "unsloth is not installed (or FTSERVE_UNSLOTH=0)"


def test_unsloth_takes_only_its_fast_path_types_within_positions(monkeypatch: pytest.MonkeyPatch) -> None:
    # Our own availability probe, not unsloth: unsloth is absent on CPU CI.
    monkeypatch.setattr(accel, "unsloth_installed", lambda: True)
    for model_type in ("llama", "mistral", "gemma", "gemma2", "qwen2", "qwen3"):
        assert accel._unsloth_unusable(True, _config(model_type), 1024) is None, model_type
    # unsloth 2026.10.9 hands these to its generic FastModel (or has the fast path switched off): not for us.
    for model_type in ("qwen3_moe", "gemma3_text", "cohere", "granite", "phi3"):
        why = accel._unsloth_unusable(True, _config(model_type), 1024)
        assert why == f"unsloth has no fast path for model type {model_type!r}"
    # Longer than the model's positions: unsloth would rescale RoPE, so the adapter would not fit the served base.
    why = accel._unsloth_unusable(True, _config("llama", positions=1024), 2048)
    assert why is not None and "over the model's 1024 positions" in why and "RoPE" in why


def test_all_linear_names_exactly_what_peft_targets_on_every_unsloth_type() -> None:
    """unsloth is given module names; they must be the layers the transformers path's "all-linear" adapts."""
    from peft import LoraConfig, get_peft_model

    names = accel.unsloth_target_modules("all-linear")
    for model_type in sorted(accel.UNSLOTH_MODEL_TYPES):
        model = transformers.AutoModelForCausalLM.from_config(_config(model_type))
        peft_model = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
        adapted = {n.rsplit(".", 1)[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
        assert adapted == set(names), model_type
    assert accel.unsloth_target_modules(["q_proj", "v_proj"]) == ["q_proj", "v_proj"]


def test_auto_padding_free_is_off_before_unsloth_can_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    # unsloth reads UNSLOTH_DISABLE_AUTO_PADDING_FREE once, at import: import_unsloth_first must set it first,
    # whether or not it then imports unsloth (here it does not: no CUDA, no unsloth).
    monkeypatch.setenv("UNSLOTH_DISABLE_AUTO_PADDING_FREE", "")  # teardown then restores it as it was
    monkeypatch.delenv("UNSLOTH_DISABLE_AUTO_PADDING_FREE")
    accel.import_unsloth_first()
    assert os.environ["UNSLOTH_DISABLE_AUTO_PADDING_FREE"] == "1"
    monkeypatch.setenv("UNSLOTH_DISABLE_AUTO_PADDING_FREE", "0")  # an operator's explicit choice wins
    accel.import_unsloth_first()
    assert os.environ["UNSLOTH_DISABLE_AUTO_PADDING_FREE"] == "0"


@pytest.fixture
def stand_in_unsloth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A stand-in `unsloth` package that only records that it was imported (the real one needs a GPU), and a
    process that believes it has CUDA: what import_unsloth_first decides, not what unsloth does."""
    package = tmp_path / "site" / "unsloth"
    package.mkdir(parents=True)
    marker = tmp_path / "imported"
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    monkeypatch.setattr(accel.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(accel, "_unsloth_import_decided", False)
    yield marker
    sys.modules.pop("unsloth", None)  # the stand-in must not outlive the test (find_spec would see it)


def _model_dir(tmp_path: Path, model_type: str, positions: int = 1024) -> Path:
    model_dir = tmp_path / model_type
    model_dir.mkdir()
    _config(model_type, positions).save_pretrained(model_dir)  # type: ignore[attr-defined]
    return model_dir


def test_the_runner_imports_unsloth_only_for_a_model_it_will_train(
    stand_in_unsloth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A model type unsloth has no fast path for: unsloth stays out, so its trainer patches can't reach the
    # transformers + peft fallback; train.py's own call at import then changes nothing.
    accel.import_unsloth_first(_model_dir(tmp_path, "phi3"), 512)
    accel.import_unsloth_first()
    assert not stand_in_unsloth.exists() and "unsloth" not in sys.modules
    # Over the model's positions (unsloth would rescale RoPE): also out.
    monkeypatch.setattr(accel, "_unsloth_import_decided", False)
    accel.import_unsloth_first(_model_dir(tmp_path, "llama", positions=1024), 2048)
    assert not stand_in_unsloth.exists()
    # A Llama within its positions: imported, before anything else of the training stack.
    monkeypatch.setattr(accel, "_unsloth_import_decided", False)
    accel.import_unsloth_first(_model_dir(tmp_path, "qwen2"), 1024)
    assert stand_in_unsloth.exists() and "unsloth" in sys.modules


def test_without_a_model_unsloth_is_imported_wherever_it_is_installed(stand_in_unsloth: Path) -> None:
    accel.import_unsloth_first()  # benchmarks and tests that call run_training directly
    assert stand_in_unsloth.exists()
