"""Export a fine-tuned adapter in a form a user takes away, and check it before it is offered.

    result = build_export("gguf", adapter_dir=..., base_dir=..., work_dir=..., stem="ftjob-abc")
    result.path, result.checks   # the file to publish, and what was checked (ExportFailed if a check fails)

Formats:
- "adapter": a zip of the PEFT adapter (adapter_config.json, adapter_model.safetensors, the tokenizer files).
  Checked: it passes the vLLM servability rules (core.adapters), loads with PEFT onto the base with every saved
  tensor in place, and gives finite logits.
- "merged": the base model with the LoRA merged in (peft `merge_and_unload`), saved as a 16-bit HF directory
  (safetensors + tokenizer), zipped. The dtype is the base's when that is bf16/fp16; an fp32 base (demo-tiny, a
  dequantised GGUF import) is saved as fp16, the more precise 16-bit type (LoRA deltas keep weights far inside its
  range). Checked: the saved model, loaded back, gives logits within a tolerance of base+adapter.
- "gguf": the merged 16-bit weights written with the `gguf` package's GGUFWriter (no llama.cpp converter installs
  here) for the llama architecture, with a byte-level BPE tokenizer and the chat template. Checked: the merged
  model's check, then transformers loads the file back (`from_pretrained(..., gguf_file=...)`) and it gives the
  same greedy tokens as the merged model on every check prompt.

Checks run in float32 on the CPU (the runner hides GPUs from the export process), so a 16-bit weight is the only
rounding that separates the export from base+adapter. torch, transformers, peft and gguf are imported lazily.
"""

from __future__ import annotations

import json
import math
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("adapter", "merged", "gguf")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# What a tokenizer may be saved as; the adapter zip and the merged model carry whichever exist.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
# Short conversations every chat model can take; their logits and greedy continuations are compared.
CHECK_PROMPTS = (
    "Hello! Who are you?",
    "What is the code for bakelu?",
    "Write one sentence about the sea.",
)
GREEDY_TOKENS = 12
# Merged (16-bit, upcast) against base+adapter (fp32): the largest logit difference over the largest logit
# magnitude. 16-bit rounding of the weights alone moves logits by (measured with random r8 adapters) fp16: 4e-4 on
# demo-tiny, 1.1e-3 on SmolLM2-135M; bf16: 4.8e-3 and 1.2e-2. A wrong merge (scaling, a missed module) moves them
# by the adapter's whole effect (`adapter_effect` in the record), far more for an adapter that learned something.
MERGE_RTOL = {"float16": 5e-3, "bfloat16": 2.5e-2}
GGUF_ARCHITECTURES = {"llama": "llama"}  # HF model_type -> GGUF architecture this writer supports


class ExportFailed(Exception):
    """The export cannot be made, or failed a check: nothing is offered. `checks` holds what ran."""

    def __init__(self, code: str, message: str, checks: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.checks = checks or {}


@dataclass
class ExportResult:
    path: Path  # the file to publish (a .zip or a .gguf)
    filename: str  # what the user's download is called
    checks: dict[str, Any] = field(default_factory=dict)


# -- files -------------------------------------------------------------------------------------------------------


def adapter_source_files(adapter_dir: Path) -> list[Path]:
    """The files of an adapter (or a training checkpoint) that make up the export: the adapter and its
    tokenizer. A checkpoint's optimizer, scheduler and RNG state are left out."""
    return [
        adapter_dir / name for name in (*ADAPTER_FILES, *TOKENIZER_FILES) if (adapter_dir / name).is_file()
    ]


def prepare_adapter_dir(source: Path, base_dir: Path, out: Path) -> Path:
    """Copy the adapter files of `source` into `out`; a tokenizer missing there comes from the base model."""
    out.mkdir(parents=True, exist_ok=True)
    for path in adapter_source_files(source):
        shutil.copy2(path, out / path.name)
    if not (out / "tokenizer_config.json").is_file():
        for name in TOKENIZER_FILES:
            if (base_dir / name).is_file():
                shutil.copy2(base_dir / name, out / name)
    missing = [name for name in ADAPTER_FILES if not (out / name).is_file()]
    if missing:
        raise ExportFailed("adapter_incomplete", f"The adapter lacks {', '.join(missing)}.")
    return out


def zip_dir(src: Path, dest: Path, *, root: str) -> Path:
    """Zip every file under `src` into `dest`, under the folder `root` (so unzipping makes one directory).
    Safetensors are stored, not deflated: they barely compress and deflating gigabytes is slow."""
    with zipfile.ZipFile(dest, "w", allowZip64=True) as archive:
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            compress = zipfile.ZIP_STORED if path.suffix == ".safetensors" else zipfile.ZIP_DEFLATED
            archive.write(path, f"{root}/{path.relative_to(src).as_posix()}", compress_type=compress)
    return dest


def unzip_dir(archive_path: Path, dest: Path) -> Path:
    """Extract a zip made by `zip_dir` and return its one top-level directory. Refuses paths that leave `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive_path) as archive:
        roots = set()
        for name in archive.namelist():
            target = (dest / name).resolve()
            if not target.is_relative_to(dest.resolve()):
                raise ExportFailed("bad_archive", f"The archive holds a path outside it: {name!r}")
            roots.add(name.split("/", 1)[0])
        archive.extractall(dest)
    if len(roots) != 1:
        raise ExportFailed("bad_archive", f"The archive should hold one folder, not {sorted(roots)}")
    return dest / roots.pop()


# -- models ------------------------------------------------------------------------------------------------------


def _torch() -> Any:
    import torch

    return torch


def load_base(base_dir: Path) -> Any:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=_torch().float32)
    return model.eval()


def load_tokenizer(path: Path, **kwargs: Any) -> Any:
    import transformers

    return transformers.AutoTokenizer.from_pretrained(path, **kwargs)


def prompt_ids(tokenizer: Any) -> list[list[int]]:
    """The check prompts as token ids: rendered with the chat template when the tokenizer has one."""
    out = []
    for prompt in CHECK_PROMPTS:
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
        else:
            text = prompt
        out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return out


def logits(model: Any, prompts: list[list[int]]) -> list[Any]:
    torch = _torch()
    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].float() for ids in prompts]


def greedy(
    model: Any, prompts: list[list[int]], *, eos_token_id: int | None, pad_token_id: int | None
) -> list[list[int]]:
    torch = _torch()
    out = []
    with torch.no_grad():
        for ids in prompts:
            generated = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=GREEDY_TOKENS,
                do_sample=False,
                eos_token_id=eos_token_id,
                pad_token_id=pad_token_id if pad_token_id is not None else eos_token_id,
            )
            out.append([int(t) for t in generated[0, len(ids) :]])
    return out


def _max_abs(tensors: list[Any]) -> float:
    return max(float(t.abs().max()) for t in tensors)


def _max_diff(a: list[Any], b: list[Any]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def export_dtype(base_dir: Path) -> str:
    """The merged model's 16-bit dtype: the base's own if it is 16-bit, else float16 (see the module doc)."""
    config = json.loads((base_dir / "config.json").read_text())
    stored = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return stored if stored in ("bfloat16", "float16") else "float16"


def _with_adapter(base: Any, adapter_dir: Path) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(base, adapter_dir, is_trainable=False).eval()


def check_adapter_loads(adapter_dir: Path, base_dir: Path, *, max_lora_rank: int) -> dict[str, Any]:
    """The adapter in `adapter_dir` is servable, loads with PEFT with every saved tensor in place, and gives
    finite logits. Returns the check record; raises ExportFailed naming what is wrong."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from core.adapters import AdapterRejected, validate_adapter

    torch = _torch()
    try:
        info = validate_adapter(adapter_dir, max_lora_rank=max_lora_rank, base_model_dir=base_dir)
    except AdapterRejected as exc:
        raise ExportFailed("adapter_check_failed", f"The adapter is not servable: {exc.message}") from None
    model = _with_adapter(load_base(base_dir), adapter_dir)
    saved = load_file(adapter_dir / "adapter_model.safetensors")
    loaded = get_peft_model_state_dict(model)
    missing = sorted(set(saved) - set(loaded))
    differing = sorted(
        k for k in saved if k in loaded and not torch.equal(saved[k], loaded[k].to(saved[k].dtype))
    )
    if missing or differing:
        raise ExportFailed(
            "adapter_check_failed",
            f"PEFT did not load the adapter as saved: {len(missing)} tensors missing, {len(differing)} differ "
            f"(first: {(missing or differing)[0]}).",
        )
    tokenizer = load_tokenizer(adapter_dir)
    out = logits(model, prompt_ids(tokenizer))
    if not all(bool(torch.isfinite(t).all()) for t in out):
        raise ExportFailed("adapter_check_failed", "The adapter gives non-finite logits.")
    return {"passed": True, "tensors": len(saved), "rank": info.rank, "prompts": len(out)}


def merge_to_dir(adapter_dir: Path, base_dir: Path, out_dir: Path) -> tuple[dict[str, Any], list[list[int]]]:
    """Merge the adapter into the base, save it as a 16-bit HF directory in `out_dir`, load that back and check
    its logits against base+adapter. Returns (the check record, the prompt ids it used)."""
    torch = _torch()
    dtype = export_dtype(base_dir)
    tokenizer = load_tokenizer(adapter_dir)
    prompts = prompt_ids(tokenizer)
    base = load_base(base_dir)
    base_logits = logits(base, prompts)
    model = _with_adapter(base, adapter_dir)
    reference = logits(model, prompts)
    merged = model.merge_and_unload()
    merged.to(getattr(torch, dtype))
    merged.config.dtype = getattr(torch, dtype)
    merged.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    del merged, model, base
    reloaded = load_base(out_dir)
    got = logits(reloaded, prompts)
    scale = max(1.0, _max_abs(reference))
    diff = _max_diff(got, reference) / scale
    record = {
        "passed": diff <= MERGE_RTOL[dtype],
        "dtype": dtype,
        "max_abs_diff": round(diff * scale, 6),
        "relative_diff": round(diff, 6),
        "tolerance": MERGE_RTOL[dtype],
        # How much the adapter changes the base: a merge check is only as strong as this is large.
        "adapter_effect": round(_max_diff(reference, base_logits) / scale, 6),
        "prompts": len(prompts),
    }
    if not record["passed"] or math.isnan(diff):
        raise ExportFailed(
            "merge_check_failed",
            f"The merged model's logits differ from base+adapter by {diff:.2e} of their scale, over the "
            f"tolerance {MERGE_RTOL[dtype]:.0e} for {dtype}.",
            {"merged_logits": {**record, "passed": False}},
        )
    return record, prompts


# -- GGUF --------------------------------------------------------------------------------------------------------


def gguf_problem(model_dir: Path) -> str | None:
    """Why this writer cannot make a GGUF of the model in `model_dir`, or None."""
    config = json.loads((model_dir / "config.json").read_text())
    model_type = config.get("model_type")
    if model_type not in GGUF_ARCHITECTURES:
        return (
            f"GGUF export supports the {', '.join(sorted(GGUF_ARCHITECTURES))} architecture, not {model_type!r}; "
            "export 'merged' and convert it with llama.cpp's convert_hf_to_gguf.py."
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        return f"GGUF export does not write rope scaling ({rope.get('rope_type') or rope.get('type')!r})."
    if config.get("attention_bias") or config.get("mlp_bias"):
        return "GGUF export does not write attention or MLP biases."
    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        return "GGUF export needs a fast tokenizer (tokenizer.json)."
    tok = json.loads(tokenizer_file.read_text())
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(tok.get("pre_tokenizer")):
        return "GGUF export supports byte-level BPE tokenizers (GPT-2 style) only."
    return None


def _rope_theta(config: dict[str, Any]) -> float:
    rope = config.get("rope_parameters") or {}
    return float(rope.get("rope_theta") or config.get("rope_theta") or 10000.0)


def _permute(weights: Any, n_head: int) -> Any:
    """llama.cpp's order for the q and k rows (its convert_hf_to_gguf.py); transformers' GGUF loader undoes it."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _tokenizer_metadata(model_dir: Path, vocab_size: int) -> dict[str, Any]:
    """tokens (by id), token types, merges and special ids from tokenizer.json and tokenizer_config.json. The
    list is padded to the embedding's `vocab_size` (llama.cpp needs one token per row)."""
    from gguf import TokenType

    tok = json.loads((model_dir / "tokenizer.json").read_text())
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    vocab: dict[str, int] = dict(tok["model"]["vocab"])
    types: dict[int, int] = {}
    for added in tok.get("added_tokens") or []:
        vocab[added["content"]] = added["id"]
        types[added["id"]] = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
    size = max(max(vocab.values()) + 1, vocab_size)
    tokens = [f"[PAD{i}]" for i in range(size)]
    for text, index in vocab.items():
        tokens[index] = text
    token_types = [
        types.get(i, TokenType.NORMAL if tokens[i] != f"[PAD{i}]" else TokenType.UNUSED) for i in range(size)
    ]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"].get("merges") or []]

    def special_id(name: str) -> int | None:
        value = config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        return vocab.get(value) if isinstance(value, str) else None

    template = config.get("chat_template")
    if not template and (model_dir / "chat_template.jinja").is_file():
        template = (model_dir / "chat_template.jinja").read_text()
    eos = special_id("eos_token")
    return {
        "tokens": tokens,
        "token_types": token_types,
        "merges": merges,
        # transformers' GGUF tokenizer conversion fails without a bos id; with add_bos_token off (written below)
        # nothing prepends it, so a model without one gets its eos id there.
        "bos": special_id("bos_token") if special_id("bos_token") is not None else eos,
        "eos": eos,
        "pad": special_id("pad_token"),
        "unk": special_id("unk_token"),
        "add_bos": bool(config.get("add_bos_token", False)),
        "chat_template": template,
    }


def _safetensors(model_dir: Path) -> Iterator[tuple[str, Any]]:
    """(name, float32 numpy array) of every tensor of the HF directory, one at a time."""
    from safetensors import safe_open

    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():
                yield name, fh.get_tensor(name).float().numpy()


def write_gguf(model_dir: Path, out_file: Path, *, name: str) -> dict[str, Any]:
    """Write the (merged, 16-bit) HF llama directory `model_dir` as one GGUF file: 2-D weights in the
    directory's 16-bit type, norms in F32 (as llama.cpp lays them out). Returns what was written."""
    import gguf
    import numpy as np

    problem = gguf_problem(model_dir)
    if problem:
        raise ExportFailed("unsupported_architecture", problem)
    config = json.loads((model_dir / "config.json").read_text())
    arch = GGUF_ARCHITECTURES[config["model_type"]]
    n_layers, n_head = int(config["num_hidden_layers"]), int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    head_dim = int(config.get("head_dim") or config["hidden_size"] // n_head)
    dtype = export_dtype(model_dir)
    qtype = gguf.GGMLQuantizationType.BF16 if dtype == "bfloat16" else gguf.GGMLQuantizationType.F16
    file_type = gguf.LlamaFileType.MOSTLY_BF16 if dtype == "bfloat16" else gguf.LlamaFileType.MOSTLY_F16
    tok = _tokenizer_metadata(model_dir, int(config["vocab_size"]))

    writer = gguf.GGUFWriter(str(out_file), arch)
    writer.add_name(name)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_file_type(file_type)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["token_types"])
    writer.add_token_merges(tok["merges"])
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("pad", writer.add_pad_token_id), ("unk", writer.add_unk_token_id)):  # fmt: skip
        if tok[key] is not None:
            add(tok[key])
    writer.add_add_bos_token(tok["add_bos"])
    if tok["chat_template"]:
        writer.add_chat_template(tok["chat_template"])

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    written = 0
    for hf_name, data in _safetensors(model_dir):
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise ExportFailed("unsupported_architecture", f"No GGUF name for the tensor {hf_name}.")
        if hf_name.endswith("self_attn.q_proj.weight"):
            data = _permute(data, n_head)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            data = _permute(data, n_kv)
        if data.ndim == 1:
            writer.add_tensor(f"{gguf_name}.{suffix}", data.astype(np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(f"{gguf_name}.{suffix}", data.astype(np.float16))
        else:
            writer.add_tensor(f"{gguf_name}.{suffix}", gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        written += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"passed": True, "architecture": arch, "tensors": written, "tensor_type": qtype.name}


def check_gguf(gguf_file: Path, merged_dir: Path, prompts: list[list[int]]) -> dict[str, Any]:
    """Load the GGUF back with transformers and compare its greedy tokens with the merged model's."""
    import transformers

    torch = _torch()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
        ).eval()
        gguf_tokenizer = load_tokenizer(gguf_file.parent, gguf_file=gguf_file.name)
    except Exception as exc:  # noqa: BLE001 (whatever the loader raises, the file is not offered)
        raise ExportFailed("gguf_check_failed", f"transformers cannot load the GGUF file: {exc}") from None
    merged = load_base(merged_dir)
    tokenizer = load_tokenizer(merged_dir)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    want = greedy(merged, prompts, eos_token_id=eos, pad_token_id=pad)
    got = greedy(model, prompts, eos_token_id=eos, pad_token_id=pad)
    same = sum(a == b for a, b in zip(want, got, strict=True))
    # transformers' own GGUF tokenizer conversion, for information: llama.cpp tokenizes by its own rules.
    texts = [tokenizer.decode(ids) for ids in prompts]
    tokenizer_same = all(
        list(gguf_tokenizer(text, add_special_tokens=False)["input_ids"]) == ids
        for text, ids in zip(texts, prompts, strict=True)
    )
    record = {
        "passed": same == len(prompts),
        "prompts": len(prompts),
        "same_greedy_tokens": same,
        "max_new_tokens": GREEDY_TOKENS,
        "tokenizer_matches": tokenizer_same,
    }
    if not record["passed"]:
        raise ExportFailed(
            "gguf_check_failed",
            f"The GGUF file, loaded back with transformers, gave different greedy tokens from the merged model "
            f"on {len(prompts) - same} of {len(prompts)} prompts.",
            {"gguf_greedy": record},
        )
    return record


# -- the whole export ---------------------------------------------------------------------------------------------


def build_export(
    fmt: str, *, adapter_dir: Path, base_dir: Path, work_dir: Path, stem: str, max_lora_rank: int = 512
) -> ExportResult:
    """Make the export of `fmt` from the adapter files in `adapter_dir` (a final adapter or a checkpoint) on the
    base model `base_dir`, in `work_dir`, and check it. `stem` names the download (e.g. the job id)."""
    from gpu_worker import accel

    torch = _torch()
    if fmt not in FORMATS:
        raise ExportFailed("unsupported_format", f"Unknown export format {fmt!r}.")
    from gpu_worker.job_runner import model_size

    # Threads by model size (one for tiny models), counted from the safetensors headers without loading.
    torch.set_num_threads(accel.cpu_threads(model_size(base_dir)[0] or 0))
    adapter = prepare_adapter_dir(adapter_dir, base_dir, work_dir / f"{stem}-adapter")
    checks: dict[str, Any] = {}
    if fmt == "adapter":
        out = zip_dir(adapter, work_dir / f"{stem}-adapter.zip", root=f"{stem}-adapter")
        extracted = unzip_dir(out, work_dir / "check-adapter")
        checks["adapter_loads"] = check_adapter_loads(extracted, base_dir, max_lora_rank=max_lora_rank)
        return ExportResult(out, out.name, checks)

    if fmt == "gguf":
        problem = gguf_problem(base_dir)
        if problem:
            raise ExportFailed("unsupported_architecture", problem)
    merged_dir = work_dir / f"{stem}-merged"
    try:
        checks["merged_logits"], prompts = merge_to_dir(adapter, base_dir, merged_dir)
    except ExportFailed as exc:
        exc.checks = {**checks, **exc.checks}
        raise
    if fmt == "merged":
        out = zip_dir(merged_dir, work_dir / f"{stem}-merged.zip", root=f"{stem}-merged")
        return ExportResult(out, out.name, checks)

    gguf_dir = work_dir / "gguf"
    gguf_dir.mkdir()
    out = gguf_dir / f"{stem}.gguf"
    checks["gguf_written"] = write_gguf(merged_dir, out, name=stem)
    try:
        checks["gguf_greedy"] = check_gguf(out, merged_dir, prompts)
    except ExportFailed as exc:
        exc.checks = {**checks, **exc.checks}
        raise
    return ExportResult(out, out.name, checks)
