"""Adapter checks before loading (what vLLM 0.32 refuses, and a matching base), and the immutable,
versioned local copies vLLM reads."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from core.adapters import AdapterRejected, adapter_rel_dir, materialize, remove_local_copy, validate_adapter
from core.storage import LocalStorage
from tests.support.adapters import make_adapter, make_base


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return make_base(tmp_path / "base")


def _reject(adapter: Path, base: Path | None, *, max_rank: int = 16) -> str:
    with pytest.raises(AdapterRejected) as caught:
        validate_adapter(adapter, max_lora_rank=max_rank, base_model_dir=base)
    assert caught.value.code == "adapter_not_servable"
    return caught.value.message


def test_a_plain_lora_adapter_passes(tmp_path: Path, base: Path) -> None:
    adapter = make_adapter(tmp_path / "a", base, rank=8, modules=("q_proj", "v_proj", "down_proj"))
    info = validate_adapter(adapter, max_lora_rank=16, base_model_dir=base)
    assert info.rank == 8 and len(info.sha256) == 64 and info.version == info.sha256[:16]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"lora_bias": True}, "lora_bias"),
        ({"bias": "all"}, "bias='all'"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save ['lm_head']"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights='pissa'"),
        ({"layer_replication": [[0, 1]]}, "layer_replication"),
        ({"peft_type": "IA3"}, "only LoRA adapters"),
        ({"rank_pattern": {"q_proj": 32}}, "LoRA rank 32 is greater than the servers' max_lora_rank 16"),
    ],
)
def test_features_vllm_refuses_are_rejected(
    tmp_path: Path, base: Path, config: dict[str, Any], expected: str
) -> None:
    assert expected in _reject(make_adapter(tmp_path / "a", base, config=config), base)


def test_rank_above_max_lora_rank(tmp_path: Path, base: Path) -> None:
    message = _reject(make_adapter(tmp_path / "a", base, rank=32), base, max_rank=16)
    assert "LoRA rank 32 is greater than the servers' max_lora_rank 16" in message


def test_every_problem_is_named_at_once(tmp_path: Path, base: Path) -> None:
    message = _reject(
        make_adapter(tmp_path / "a", base, rank=32, config={"use_dora": True, "bias": "all"}), base
    )
    assert "DoRA" in message and "bias='all'" in message and "rank 32" in message


def test_only_safetensors(tmp_path: Path, base: Path) -> None:
    adapter = make_adapter(tmp_path / "a", base)
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    assert "only safetensors adapters are served" in _reject(adapter, base)
    assert "adapter_model.bin" in _reject(adapter, base)


def test_missing_or_broken_files(tmp_path: Path, base: Path) -> None:
    adapter = make_adapter(tmp_path / "a", base)
    (adapter / "adapter_config.json").write_text("{not json")
    assert "adapter_config.json is not valid JSON" in _reject(adapter, base)
    (adapter / "adapter_config.json").unlink()
    assert "no adapter_config.json" in _reject(adapter, base)
    adapter = make_adapter(tmp_path / "b", base)
    (adapter / "adapter_model.safetensors").write_bytes(b"\x01")
    assert "unreadable" in _reject(adapter, base)
    adapter = make_adapter(tmp_path / "c", base)
    config = json.loads((adapter / "adapter_config.json").read_text())
    del config["r"]
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert "lacks r" in _reject(adapter, base)


def test_full_weights_and_resized_vocabularies_are_refused(tmp_path: Path, base: Path) -> None:
    adapter = make_adapter(tmp_path / "a", base, extra_tensors={"base_model.model.lm_head.weight": [32, 8]})
    assert "full (non-LoRA) weights" in _reject(adapter, base)
    adapter = make_adapter(
        tmp_path / "b", base, extra_tensors={"base_model.model.model.embed_tokens.base_layer.weight": [40, 8]}
    )
    assert "resized the vocabulary" in _reject(adapter, base)


def test_unsupported_target_modules(tmp_path: Path, base: Path) -> None:
    adapter = make_adapter(
        tmp_path / "a",
        base,
        extra_tensors={
            "base_model.model.model.layers.0.mlp.fc9.lora_A.weight": [8, 8],
            "base_model.model.model.layers.0.mlp.fc9.lora_B.weight": [8, 8],
        },
    )
    message = _reject(adapter, base)
    assert "target modules ['fc9'] are not supported by vLLM for llama" in message
    # Without a readable base (a hub id on another host) the module check is left to vLLM.
    assert validate_adapter(adapter, max_lora_rank=16, base_model_dir=None).rank == 8


def test_an_adapter_of_another_base_is_refused(tmp_path: Path, base: Path) -> None:
    other = make_base(tmp_path / "other", hidden=16, intermediate=32)
    adapter = make_adapter(tmp_path / "a", other)
    message = _reject(adapter, base)
    assert "does not match the base model" in message and "takes 16 inputs, the base layer 8" in message
    deeper = make_base(tmp_path / "deeper", layers=2)
    assert "model.layers.1.self_attn.q_proj is not a module of the base model" in _reject(
        make_adapter(tmp_path / "b", deeper), base
    )


def test_the_base_is_recognised_by_directory_name_or_model_id_across_hosts(
    tmp_path: Path, base: Path
) -> None:
    """The worker records its own path of the base; a vLLM host may keep the same model elsewhere."""
    worker_copy = make_base(tmp_path / "worker-host" / "models" / "demo-tiny")
    adapter = make_adapter(tmp_path / "a", worker_copy)
    vllm_copy = make_base(tmp_path / "vllm-host" / "weights" / "DemoTiny-v1")
    assert "names another model" in _reject(adapter, vllm_copy)
    assert (
        validate_adapter(adapter, max_lora_rank=16, base_model_dir=vllm_copy, base_model_id="demo-tiny").rank
        == 8
    )
    assert "names another model" in _reject_with_id(adapter, vllm_copy, "other-model")


def _reject_with_id(adapter: Path, base: Path, model_id: str) -> str:
    with pytest.raises(AdapterRejected) as caught:
        validate_adapter(adapter, max_lora_rank=16, base_model_dir=base, base_model_id=model_id)
    return caught.value.message


def test_embedding_lora_is_checked_against_the_vocabulary(tmp_path: Path, base: Path) -> None:
    good = make_adapter(
        tmp_path / "a",
        base,
        extra_tensors={
            "base_model.model.model.embed_tokens.lora_embedding_A": [8, 32],
            "base_model.model.model.embed_tokens.lora_embedding_B": [8, 8],
        },
    )
    assert validate_adapter(good, max_lora_rank=16, base_model_dir=base).rank == 8
    bad = make_adapter(
        tmp_path / "b", base, extra_tensors={"base_model.model.model.embed_tokens.lora_embedding_A": [8, 40]}
    )
    assert "covers 40 tokens, the base vocabulary 32" in _reject(bad, base)


# -- local copies ----------------------------------------------------------------------------------------------


def _stored(tmp_path: Path, base: Path, **kwargs: Any) -> tuple[LocalStorage, str]:
    storage = LocalStorage(tmp_path / "storage")
    adapter = make_adapter(tmp_path / "trained", base, **kwargs)
    (adapter / "optimizer.pt").write_bytes(b"x" * 100)  # checkpoint state: never copied
    storage.upload_dir(adapter, "jobs/ftjob-1/adapter")
    return storage, "jobs/ftjob-1/adapter/"


def test_materialize_makes_an_immutable_versioned_copy(tmp_path: Path, base: Path) -> None:
    storage, prefix = _stored(tmp_path, base)
    root = tmp_path / "adapters"
    path, version = materialize(storage, prefix, root, adapter_rel_dir("ftjob-1", None), max_lora_rank=16)
    assert path == root.resolve() / "ftjob-1" / "final" / version and path.is_absolute()
    assert sorted(p.name for p in path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert all(not os.access(p, os.W_OK) or os.geteuid() == 0 for p in path.iterdir())
    assert oct((path / "adapter_model.safetensors").stat().st_mode)[-3:] == "444"
    # The same version again: reused as is, without touching storage.
    storage.delete_prefix(prefix)
    again, same = materialize(
        storage, prefix, root, adapter_rel_dir("ftjob-1", None), max_lora_rank=16, expected_version=version
    )
    assert (again, same) == (path, version)
    assert not list((root / ".staging").iterdir())


def test_new_weights_get_a_new_path_and_old_ones_stay(tmp_path: Path, base: Path) -> None:
    storage, prefix = _stored(tmp_path, base, rank=8)
    root = tmp_path / "adapters"
    first, v1 = materialize(storage, prefix, root, "ftjob-1/final", max_lora_rank=16)
    storage.upload_dir(make_adapter(tmp_path / "retrained", base, rank=4), "jobs/ftjob-1/adapter")
    second, v2 = materialize(storage, prefix, root, "ftjob-1/final", max_lora_rank=16)
    assert v1 != v2 and first != second and first.is_dir() and second.is_dir()
    with pytest.raises(AdapterRejected, match="stored adapter changed"):
        materialize(
            storage, prefix, tmp_path / "elsewhere", "ftjob-1/final", max_lora_rank=16, expected_version=v1
        )


def test_a_rejected_adapter_leaves_nothing_behind(tmp_path: Path, base: Path) -> None:
    storage, prefix = _stored(tmp_path, base, rank=32)
    root = tmp_path / "adapters"
    with pytest.raises(AdapterRejected):
        materialize(storage, prefix, root, "ftjob-1/final", max_lora_rank=16, base_model_dir=base)
    assert not (root / "ftjob-1").exists() and not list((root / ".staging").iterdir())


def test_concurrent_copies_of_one_version_agree(tmp_path: Path, base: Path) -> None:
    storage, prefix = _stored(tmp_path, base)
    root = tmp_path / "adapters"
    results: list[tuple[Path, str]] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(materialize(storage, prefix, root, "j/final", max_lora_rank=16))
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and len(set(results)) == 1
    assert len(list((root / "j" / "final").iterdir())) == 1


def test_remove_local_copy_stays_inside_the_root(tmp_path: Path, base: Path) -> None:
    storage, prefix = _stored(tmp_path, base)
    root = tmp_path / "adapters"
    path, _ = materialize(storage, prefix, root, "ftjob-1/final", max_lora_rank=16)
    remove_local_copy(root, "../trained")
    assert (tmp_path / "trained").is_dir()
    remove_local_copy(root, "ftjob-1")
    assert not path.exists() and root.is_dir()
