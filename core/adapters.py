"""LoRA adapters for serving: check one against what vLLM accepts, and lay it out at an immutable, versioned
local path that a vLLM replica can read.

The checks mirror vLLM 0.32's own (`vllm/lora/peft_helper.py::validate_legal`, `lora_model.py`'s module
check) so an adapter that passes here is not refused by `POST /v1/load_lora_adapter`; on top of them, the
tensor shapes are checked against the base model's weights (a "matching base"). No torch: the safetensors
headers are read as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import FtserveError
from core.storage import ObjectNotFound, Storage

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# What vLLM reads; a checkpoint directory also holds optimizer state, which is never copied.
SERVED_FILES = (CONFIG_FILE, WEIGHTS_FILE)
MAX_HEADER_BYTES = 100 * 1024 * 1024

# LoRA target modules vLLM supports, by the base model's `model_type` (its linear layers, their packed
# names, and the embedding modules). Other model types skip this check and rely on vLLM's answer.
_DECODER_MODULES = frozenset(
    {
        "q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj",
        "gate_proj", "up_proj", "down_proj", "gate_up_proj",
        "embed_tokens", "lm_head",
    }
)  # fmt: skip
SUPPORTED_MODULES: dict[str, frozenset[str]] = dict.fromkeys(
    ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "granite"), _DECODER_MODULES
)
# A module path as PEFT writes it (q_proj, model.layers.0.mlp.up_proj): no regex, no spaces, no slashes.
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*|all-linear")
# PEFT initialisations that rewrite the base weights (vLLM refuses them); the others only seed the adapter.
_HARMLESS_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")


class AdapterRejected(FtserveError):
    """The adapter cannot be served by vLLM; the message says every reason."""

    code = "adapter_not_servable"


@dataclass(frozen=True)
class AdapterInfo:
    rank: int
    target_modules: list[str]
    sha256: str  # of adapter_model.safetensors

    @property
    def version(self) -> str:
        return self.sha256[:16]


def read_safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path.name} is not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER_BYTES:
            raise ValueError(f"{path.name} is not a safetensors file (header of {length} bytes)")
        header = json.loads(fh.read(length))
    if not isinstance(header, dict):
        raise ValueError(f"{path.name} is not a safetensors file")
    header.pop("__metadata__", None)
    return header


def _base_shapes(base_dir: Path) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for path in sorted(base_dir.glob("*.safetensors")):
        for name, tensor in read_safetensors_header(path).items():
            shapes[name] = list(tensor["shape"])
    return shapes


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _feature_problems(config: dict[str, Any], max_lora_rank: int) -> list[str]:
    problems = []
    peft_type = config.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        problems.append(f"peft_type is {peft_type!r}; only LoRA adapters can be served")
    missing = [key for key in ("r", "lora_alpha", "target_modules") if key not in config]
    if missing:
        problems.append(f"adapter_config.json lacks {', '.join(missing)}")
    modules_to_save = [m for m in (config.get("modules_to_save") or []) if m not in ("classifier", "score")]
    if modules_to_save:
        problems.append(
            f"modules_to_save {modules_to_save} are full weights vLLM does not load (only classifier/score)"
        )
    if config.get("use_dora"):
        problems.append("DoRA (use_dora) is not supported by vLLM")
    if config.get("lora_bias"):
        problems.append("LoRA bias (lora_bias) is not supported by vLLM")
    if config.get("bias", "none") != "none":
        problems.append(f"bias={config.get('bias')!r} is not supported by vLLM (only 'none')")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in _HARMLESS_INITS:
        problems.append(f"init_lora_weights={init!r} changes the base weights; vLLM cannot serve it")
    for key, what in (
        ("alora_invocation_tokens", "Activated LoRA (aLoRA)"),
        ("layer_replication", "layer_replication"),
        ("use_bdlora", "block-diagonal LoRA"),
        ("use_qalora", "QALoRA"),
    ):
        if config.get(key):
            problems.append(f"{what} is not supported by vLLM")
    problems += _import_problems(config)
    ranks = [config.get("r")] + list((config.get("rank_pattern") or {}).values())
    try:
        rank = max(int(r) for r in ranks if r is not None)
    except (TypeError, ValueError):
        problems.append(f"LoRA rank r={config.get('r')!r} is not a positive integer")
    else:
        if rank < 1:
            problems.append(f"LoRA rank r={rank} is not a positive integer")
        elif rank > max_lora_rank:
            problems.append(f"LoRA rank {rank} is greater than the servers' max_lora_rank {max_lora_rank}")
    return problems


def _import_problems(config: dict[str, Any]) -> list[str]:
    """Config keys that make PEFT or transformers import or build something named in the file (peft#3085):
    a tenant's adapter must name only LoRA modules by their plain attribute names."""
    problems = []
    if config.get("auto_mapping"):
        problems.append("auto_mapping names classes to import; adapters may not carry one")
    if config.get("megatron_config") or config.get("megatron_core") not in (None, "megatron.core"):
        problems.append("megatron_config / megatron_core name modules to import; adapters may not set them")
    targets = config.get("target_modules")
    names = [targets] if isinstance(targets, str) else targets
    if targets is not None and (
        not isinstance(names, list)
        or not all(isinstance(name, str) and _MODULE_NAME.fullmatch(name) for name in names)
    ):
        problems.append(
            f"target_modules {targets!r} must be a list of module names (letters, digits, '_' and '.'), "
            "not patterns or other values"
        )
    return problems


def _module_of(key: str) -> tuple[str, str] | None:
    """(module path as in the base model, kind) for a LoRA tensor name, or None if it is not a LoRA tensor.
    kind: A or B (linear), EA or EB (embedding)."""
    name = key.removeprefix("base_model.model.")
    parts = name.split(".")
    if len(parts) >= 3 and parts[-1] == "weight" and parts[-2] in ("lora_A", "lora_B"):
        return ".".join(parts[:-2]), parts[-2][-1]
    if parts[-1] in ("lora_embedding_A", "lora_embedding_B"):
        return ".".join(parts[:-1]), "E" + parts[-1][-1]
    return None


def _tensor_problems(
    header: dict[str, Any], *, model_type: str | None, base_shapes: dict[str, list[int]] | None
) -> list[str]:
    problems: list[str] = []
    supported = SUPPORTED_MODULES.get(model_type or "")
    unsupported: set[str] = set()
    not_lora: list[str] = []
    mismatched: list[str] = []
    for key, tensor in header.items():
        parsed = _module_of(key)
        if parsed is None:
            if key.endswith((".embed_tokens.base_layer.weight", ".lm_head.base_layer.weight")):
                problems.append(
                    f"{key}: the adapter resized the vocabulary; vLLM would silently drop the new embeddings"
                )
            else:
                not_lora.append(key)
            continue
        module, kind = parsed
        short = module.rsplit(".", 1)[-1]
        if supported is not None and short not in supported:
            unsupported.add(short)
        if base_shapes is None:
            continue
        shape = list(tensor.get("shape", []))
        base = base_shapes.get(f"{module}.weight")
        if base is None and short == "lm_head":  # tied embeddings
            base = base_shapes.get(module.replace("lm_head", "model.embed_tokens") + ".weight")
        if base is None:
            mismatched.append(f"{module} is not a module of the base model")
        elif len(shape) != 2 or len(base) != 2:
            mismatched.append(f"{key} has shape {shape}")
        elif kind == "A" and shape[1] != base[1]:
            mismatched.append(f"{key} takes {shape[1]} inputs, the base layer {base[1]}")
        elif kind == "B" and shape[0] != base[0]:
            mismatched.append(f"{key} gives {shape[0]} outputs, the base layer {base[0]}")
        elif kind == "EA" and shape[1] != base[0]:
            mismatched.append(f"{key} covers {shape[1]} tokens, the base vocabulary {base[0]}")
        elif kind == "EB" and shape[0] != base[1]:
            mismatched.append(f"{key} gives width {shape[0]}, the base embeddings {base[1]}")
    if not header:
        problems.append(f"{WEIGHTS_FILE} holds no tensors")
    if not_lora:
        problems.append(f"full (non-LoRA) weights vLLM cannot load: {', '.join(sorted(not_lora)[:5])}")
    if unsupported:
        problems.append(
            f"target modules {sorted(unsupported)} are not supported by vLLM for {model_type} "
            f"(supported: {', '.join(sorted(supported or ()))})"
        )
    if mismatched:
        problems.append("the adapter does not match the base model: " + "; ".join(mismatched[:5]))
    return problems


def _same_base(claimed: str, base_model_dir: Path, base_model_id: str | None) -> bool:
    """The trainer records the base's local directory on the worker's host, which may differ from this
    host's: its name must be this base's directory name or its ftserve model id (docs/deploy.md: keep base
    models in directories named by their ids), and it must be a plain path (not a URL)."""
    names = {base_model_dir.name} | (
        {base_model_id, base_model_id.rsplit("/", 1)[-1]} if base_model_id else set()
    )
    return "://" not in claimed and Path(claimed).name in names


def validate_adapter(
    adapter_dir: Path,
    *,
    max_lora_rank: int,
    base_model_dir: Path | None = None,
    base_model_id: str | None = None,
) -> AdapterInfo:
    """Check `adapter_dir` (adapter_config.json + adapter_model.safetensors) against what vLLM serves. With
    `base_model_dir` (a local HF directory), also check it was trained on that base. Raises AdapterRejected
    naming every problem."""
    config_path, weights_path = adapter_dir / CONFIG_FILE, adapter_dir / WEIGHTS_FILE
    if not config_path.is_file():
        raise AdapterRejected(f"The adapter has no {CONFIG_FILE}.")
    if not weights_path.is_file():
        other = [p.name for p in adapter_dir.glob("adapter_model.*")]
        hint = f" (found {', '.join(other)}; pickled weights are never loaded)" if other else ""
        raise AdapterRejected(
            f"The adapter has no {WEIGHTS_FILE}{hint}; only safetensors adapters are served."
        )
    try:
        config = json.loads(config_path.read_text())
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise AdapterRejected(f"{CONFIG_FILE} is not valid JSON: {exc}") from None
    try:
        header = read_safetensors_header(weights_path)
    except (OSError, ValueError, struct.error) as exc:
        raise AdapterRejected(f"{WEIGHTS_FILE} is unreadable: {exc}") from None

    model_type, base_shapes = None, None
    if base_model_dir is not None and (base_model_dir / "config.json").is_file():
        try:
            base_config = json.loads((base_model_dir / "config.json").read_text())
            model_type = base_config.get("model_type")
            base_shapes = _base_shapes(base_model_dir) or None
        except (OSError, ValueError, KeyError, struct.error):
            model_type, base_shapes = None, None

    problems = _feature_problems(config, max_lora_rank)
    problems += _tensor_problems(header, model_type=model_type, base_shapes=base_shapes)
    claimed_base = config.get("base_model_name_or_path")
    if (
        base_model_dir is not None
        and claimed_base
        and not _same_base(str(claimed_base), base_model_dir, base_model_id)
    ):
        problems.append(
            f"base_model_name_or_path {str(claimed_base)[:200]!r} names another model than this base "
            f"({base_model_dir.name})"
        )
    if problems:
        raise AdapterRejected("The adapter cannot be served by vLLM: " + "; ".join(problems) + ".")
    targets = config.get("target_modules")
    return AdapterInfo(
        rank=int(config["r"]),
        target_modules=sorted(targets) if isinstance(targets, list) else [str(targets)],
        sha256=_sha256(weights_path),
    )


# -- immutable local copies ------------------------------------------------------------------------------------


def adapter_rel_dir(job_id: str, checkpoint_step: int | None) -> str:
    """`<job_id>/final` or `<job_id>/ckpt-step-<n>`; the version directory goes below it."""
    return f"{job_id}/{'final' if checkpoint_step is None else f'ckpt-step-{checkpoint_step}'}"


def materialize(
    storage: Storage,
    storage_prefix: str,
    root: Path,
    rel_dir: str,
    *,
    max_lora_rank: int,
    base_model_dir: Path | None = None,
    base_model_id: str | None = None,
    expected_version: str | None = None,
) -> tuple[Path, str]:
    """Copy the adapter at `storage_prefix` to `root/rel_dir/<version>/` (the version is the weights'
    sha256 prefix), validated, read-only, published by an atomic rename: a path once visible never changes.
    Returns (absolute path, version). An existing copy of the expected version (validated when it was made)
    is reused without downloading anything."""
    root = root.resolve()
    # rel_dir is built from server ids (adapter_rel_dir); still, nothing is ever placed outside the root.
    model_dir = (root / rel_dir).resolve()
    if not model_dir.is_relative_to(root) or model_dir == root:
        raise AdapterRejected(f"Adapter path {rel_dir!r} is not a directory under the adapter root.")
    if expected_version:
        existing = model_dir / expected_version
        if (existing / WEIGHTS_FILE).is_file() and (existing / CONFIG_FILE).is_file():
            return existing, expected_version
    staging = root / ".staging" / uuid.uuid4().hex
    staging.mkdir(parents=True)
    try:
        prefix = storage_prefix.rstrip("/")
        for name in SERVED_FILES:
            try:
                with open(staging / name, "wb") as fh:
                    for chunk in storage.iter_chunks(f"{prefix}/{name}"):
                        fh.write(chunk)
            except ObjectNotFound:
                (staging / name).unlink(missing_ok=True)
        info = validate_adapter(
            staging, max_lora_rank=max_lora_rank, base_model_dir=base_model_dir, base_model_id=base_model_id
        )
        if expected_version and info.version != expected_version:
            raise AdapterRejected(
                f"The stored adapter changed: version {info.version}, expected {expected_version}."
            )
        final = model_dir / info.version
        final.parent.mkdir(parents=True, exist_ok=True)
        for path in staging.iterdir():
            path.chmod(0o444)
        try:
            os.rename(staging, final)
        except OSError:
            if not (final / WEIGHTS_FILE).is_file():  # a concurrent copy of the same version won the rename
                raise
        return final, info.version
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_local_copy(root: Path, rel_dir: str) -> None:
    """Delete every local version of one model's adapter, once it is deleted and unloaded everywhere."""
    root = root.resolve()
    target = (root / rel_dir).resolve()
    if target.is_relative_to(root) and target != root:
        shutil.rmtree(target, ignore_errors=True)
