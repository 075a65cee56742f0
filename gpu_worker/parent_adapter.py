"""Continue training from a fine-tuned model: start from its weights, and store the result as one LoRA over the
original base model, so vLLM serves it like any other adapter.

The parent adapter (delta s1·B1·A1, s = lora_alpha / r) is merged into the base weights in memory before the
new LoRA is attached (`merge_into`). The model the new LoRA trains on is then exactly the parent model, so

- training starts from the parent model (a fresh LoRA's B is zero), and
- DPO's and KTO's reference, which TRL takes as the model under the fresh LoRA (the adapter switched off, or
  for DPO a frozen copy of the fresh adapter, whose B is zero), is the parent model (e.g. the SFT model a DPO run
  refines), not the bare base.

The trained model is W + s1·B1·A1 + s2·B2·A2. In general that delta has rank r1 + r2, and it is exactly one LoRA
of that rank: B·A with A = [A1; A2] (stacked rows) and B = [s1·B1, s2·B2] (side by side), with lora_alpha = r
(scaling 1). `concatenate` writes it; a module only one of the two adapts gets zeros in the other's half. Each
round of continued training therefore adds its rank to the stored adapter's, which the API checks against
vLLM's max_lora_rank when the job is created.

A checkpoint and the final adapter of a continued job hold that concatenated adapter where vLLM and the exports
read it (adapter_config.json, adapter_model.safetensors), and the new LoRA alone in `TRAINED_DIR`, from which a
resumed attempt continues (`make_servable`, `restore_trained`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from core.adapters import CONFIG_FILE, SERVED_FILES, WEIGHTS_FILE
from core.storage import ObjectNotFound, Storage

TRAINED_DIR = "trained_adapter"  # the new LoRA alone, relative to the merged parent model
_PREFIX = "base_model.model."


class ParentAdapterError(RuntimeError):
    """The parent adapter cannot be read, merged or combined."""


def download(storage: Storage, prefix: str, dest: Path) -> Path:
    """The adapter's config and weights under the storage `prefix` (a final adapter or a checkpoint), into
    `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in SERVED_FILES:
        try:
            with open(dest / name, "wb") as fh:
                for chunk in storage.iter_chunks(f"{prefix.rstrip('/')}/{name}"):
                    fh.write(chunk)
        except ObjectNotFound:
            raise ParentAdapterError(f"the parent adapter's {name} is missing from storage") from None
    return dest


def _load(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / CONFIG_FILE).read_text())
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ParentAdapterError(
            "adapters with per-module ranks (rank_pattern, alpha_pattern) are not supported"
        )
    return config, load_file(adapter_dir / WEIGHTS_FILE)


def _scaling(config: dict[str, Any]) -> float:
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _pairs(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor, bool]]:
    """{module path in the base model: (A, B, is_embedding)}. Linear: A (r, in), B (out, r); embedding, as PEFT
    stores it: A (r, vocab), B (dim, r)."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    embedding: dict[str, bool] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(_PREFIX)
        for suffix, part, is_embedding in (
            (".lora_A.weight", "A", False),
            (".lora_B.weight", "B", False),
            (".lora_embedding_A", "A", True),
            (".lora_embedding_B", "B", True),
        ):
            if name.endswith(suffix):
                module = name.removesuffix(suffix)
                parts.setdefault(module, {})[part] = tensor
                embedding[module] = is_embedding
                break
        else:
            raise ParentAdapterError(f"{key} is not a LoRA tensor")
    pairs = {}
    for module, found in parts.items():
        if set(found) != {"A", "B"}:
            raise ParentAdapterError(f"{module} lacks its lora_A or lora_B")
        pairs[module] = (found["A"], found["B"], embedding[module])
    return pairs


def _key(module: str, part: str, is_embedding: bool) -> str:
    return f"{_PREFIX}{module}." + (f"lora_embedding_{part}" if is_embedding else f"lora_{part}.weight")


def merge_into(model: Any, adapter_dir: Path) -> int:
    """Add the adapter's delta to `model`'s weights in place (linear: W += s·B·A; embedding: W += s·(B·A)ᵀ), before
    any LoRA is attached. Returns the number of modules changed. A weight tied to another (an lm_head sharing the
    embeddings) is copied first, so the other keeps its values."""
    config, tensors = _load(adapter_dir)
    scaling = _scaling(config)
    pairs = _pairs(tensors)
    modules = dict(model.named_modules())
    users: dict[int, int] = {}
    for _, parameter in model.named_parameters(remove_duplicate=False):
        users[parameter.data_ptr()] = users.get(parameter.data_ptr(), 0) + 1
    with torch.no_grad():
        for module_name, (a, b, is_embedding) in sorted(pairs.items()):
            module: Any = modules.get(module_name)
            weight = getattr(module, "weight", None)
            if module is None or weight is None:
                raise ParentAdapterError(f"the base model has no module {module_name} with a weight")
            delta = (b.float() @ a.float()) * scaling
            if is_embedding:
                delta = delta.T
            if tuple(delta.shape) != tuple(weight.shape):
                raise ParentAdapterError(
                    f"{module_name}: the adapter's delta is {tuple(delta.shape)}, the weight {tuple(weight.shape)}"
                )
            if users.get(weight.data_ptr(), 1) > 1:  # tied: untie before changing it
                module.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=False)
                weight = module.weight
            weight.add_(delta.to(device=weight.device, dtype=weight.dtype))
    return len(pairs)


def concatenate(parent_dir: Path, trained_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Write to `out_dir` the one LoRA over the base that equals the parent adapter plus the one trained on the
    merged parent model: rank r1 + r2, A = [A1; A2], B = [s1·B1, s2·B2], lora_alpha = rank. Returns its config."""
    from safetensors.torch import save_file

    parent_config, parent_tensors = _load(parent_dir)
    trained_config, trained_tensors = _load(trained_dir)
    sides = [
        (_pairs(parent_tensors), int(parent_config["r"]), _scaling(parent_config)),
        (_pairs(trained_tensors), int(trained_config["r"]), _scaling(trained_config)),
    ]
    dtype = next(iter(trained_tensors.values())).dtype
    out: dict[str, torch.Tensor] = {}
    for module in sorted(set(sides[0][0]) | set(sides[1][0])):
        present = next(pairs[module] for pairs, _, _ in sides if module in pairs)
        is_embedding = present[2]
        in_features, out_features = present[0].shape[1], present[1].shape[0]
        a_parts, b_parts = [], []
        for pairs, rank, scaling in sides:
            if module in pairs:
                a, b, _ = pairs[module]
                a_parts.append(a.float())
                b_parts.append(b.float() * scaling)
            else:  # only the other adapter adapts this module
                a_parts.append(torch.zeros(rank, in_features))
                b_parts.append(torch.zeros(out_features, rank))
        out[_key(module, "A", is_embedding)] = torch.cat(a_parts, dim=0).to(dtype).contiguous()
        out[_key(module, "B", is_embedding)] = torch.cat(b_parts, dim=1).to(dtype).contiguous()
    rank = sides[0][1] + sides[1][1]
    targets = sorted({module.rsplit(".", 1)[-1] for pairs, _, _ in sides for module in pairs})
    config = {
        **trained_config,
        "r": rank,
        "lora_alpha": rank,  # scaling 1: each side's scaling is folded into its half of B
        "use_rslora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "target_modules": targets,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(out, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return config


def make_servable(adapter_dir: Path, parent_dir: Path) -> None:
    """Turn a checkpoint or final adapter directory of a continued job into a servable one: the trainer's LoRA
    moves to `TRAINED_DIR`, the concatenated adapter takes its place."""
    trained = adapter_dir / TRAINED_DIR
    trained.mkdir(exist_ok=True)
    for name in SERVED_FILES:
        os.replace(adapter_dir / name, trained / name)
    concatenate(parent_dir, trained, adapter_dir)


def restore_trained(checkpoint_dir: Path) -> None:
    """Undo `make_servable` in a downloaded checkpoint, so that the trainer resumes its own LoRA."""
    trained = checkpoint_dir / TRAINED_DIR
    if not trained.is_dir():
        return
    for name in SERVED_FILES:
        os.replace(trained / name, checkpoint_dir / name)
    trained.rmdir()
