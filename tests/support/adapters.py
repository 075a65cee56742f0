"""Synthetic PEFT LoRA adapters for tests: adapter_config.json and an adapter_model.safetensors written
byte by byte (no torch), shaped after a base model's own safetensors header. Zero weights: vLLM loads them,
and the model answers as its base does."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from core.adapters import read_safetensors_header

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    header: dict[str, Any] = {}
    offset = 0
    for name, shape in shapes.items():
        size = 4
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def base_linear_shapes(base_dir: Path) -> dict[str, list[int]]:
    """{module path: [out, in]} of the base's linear layers, e.g. model.layers.0.self_attn.q_proj."""
    shapes: dict[str, list[int]] = {}
    for path in base_dir.glob("*.safetensors"):
        for name, tensor in read_safetensors_header(path).items():
            module = name.removesuffix(".weight")
            if name.endswith(".weight") and module.rsplit(".", 1)[-1] in LINEAR:
                shapes[module] = list(tensor["shape"])
    return shapes


def make_adapter(
    target: Path,
    base_dir: Path,
    *,
    rank: int = 8,
    modules: tuple[str, ...] = ("q_proj", "v_proj"),
    config: dict[str, Any] | None = None,
    extra_tensors: dict[str, list[int]] | None = None,
    shapes: dict[str, list[int]] | None = None,
) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, list[int]] = {}
    for module, (out_dim, in_dim) in (shapes or base_linear_shapes(base_dir)).items():
        if module.rsplit(".", 1)[-1] in modules:
            tensors[f"base_model.model.{module}.lora_A.weight"] = [rank, in_dim]
            tensors[f"base_model.model.{module}.lora_B.weight"] = [out_dim, rank]
    tensors.update(extra_tensors or {})
    write_safetensors(target / "adapter_model.safetensors", tensors)
    cfg: dict[str, Any] = {
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(modules),
        "bias": "none", "use_dora": False, "lora_bias": False, "modules_to_save": None,
        "init_lora_weights": True, "base_model_name_or_path": str(base_dir), "task_type": "CAUSAL_LM",
    }  # fmt: skip
    cfg.update(config or {})
    (target / "adapter_config.json").write_text(json.dumps(cfg))
    return target


def make_base(
    target: Path, *, hidden: int = 8, intermediate: int = 16, vocab: int = 32, layers: int = 1
) -> Path:
    """A fake Llama-shaped base: config.json and a safetensors header with zero weights."""
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    shapes: dict[str, list[int]] = {
        "model.embed_tokens.weight": [vocab, hidden],
        "lm_head.weight": [vocab, hidden],
    }
    for i in range(layers):
        p = f"model.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{p}.self_attn.{name}.weight"] = [hidden, hidden]
        shapes[f"{p}.mlp.gate_proj.weight"] = [intermediate, hidden]
        shapes[f"{p}.mlp.up_proj.weight"] = [intermediate, hidden]
        shapes[f"{p}.mlp.down_proj.weight"] = [hidden, intermediate]
    write_safetensors(target / "model.safetensors", shapes)
    return target
